"""Poll the Feast online store for the latest reading of each machine (runs in the train venv).

``python bench/stream_poller.py DATASET MACHINES OUT.jsonl STOP_FILE [INTERVAL_S]``: until
``STOP_FILE`` exists, reads the stream view of machines 1..MACHINES with Feast's
``get_online_features`` (``shared.feast_stream.online_rows``: the stream half of what the
feature server serves) every INTERVAL_S (default 0.02) and appends ``{"reading_id", "seen_at"}`` for each
reading id it has not seen before (``seen_at``: wall-clock seconds at the end of the read
that returned it). Stack settings come from the environment (the function env of the stack).

On the SQLite online store (localdev's default) it reads the view's table itself, in Feast's
own format (one row per entity and feature, values as Feast ``ValueProto``): one query,
about 1 ms, where ``get_online_features`` for 200 entities took 130-350 ms on this loaded
2-core box and would blur the measurement by as much.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def main(argv: list[str]) -> int:
    from shared import feast_repo, feast_stream
    from shared.contracts import get_contract

    dataset, machines, out, stop = argv[0], int(argv[1]), Path(argv[2]), Path(argv[3])
    interval = float(argv[4]) if len(argv) > 4 else 0.02
    logging.getLogger("feast").setLevel(logging.ERROR)
    contract = get_contract(dataset)
    entities = list(range(1, machines + 1))
    read = _sqlite_reader(contract) if feast_repo.online_store_kind() == "sqlite" else None
    last: dict[Any, str] = {}
    reads, read_s = 0, 0.0
    with out.open("w") as sink:
        while not stop.exists():
            started = time.time()
            try:
                if read is not None:
                    current = read()
                else:
                    rows = feast_stream.online_rows(contract, entities)
                    if rows is None:
                        raise LookupError("the stream view is not applied yet")
                    current = {e: (r or {}).get("reading_id") for e, r in zip(entities, rows, strict=True)}
            except Exception as exc:  # noqa: BLE001 - nothing pushed yet: keep polling
                print(f"poll: {type(exc).__name__}: {exc}", file=sys.stderr)
                time.sleep(0.5)
                continue
            seen_at = time.time()
            reads, read_s = reads + 1, read_s + seen_at - started
            for entity, reading_id in current.items():
                if reading_id and last.get(entity) != reading_id:
                    last[entity] = reading_id
                    sink.write(json.dumps({"reading_id": reading_id, "seen_at": seen_at}) + "\n")
            sink.flush()
            time.sleep(max(0.0, interval - (time.time() - started)))
    print(json.dumps({"reads": reads, "mean_read_ms": round(1000 * read_s / max(reads, 1), 2)}))
    return 0


def _sqlite_reader(contract: Any) -> Callable[[], dict[Any, str]]:
    """entity key bytes -> reading id, from the stream view's table in the SQLite online store."""
    from feast.protos.feast.types.Value_pb2 import Value

    from shared import feast_repo, feast_stream

    path = feast_repo.feast_dir() / "online.db"
    table = f"{feast_repo.PROJECT}_{contract.stream_feature_view}"
    conn: list[sqlite3.Connection] = []

    def read() -> dict[Any, str]:
        if not conn:
            conn.append(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5))
        rows = (
            conn[0]
            .execute(
                f"SELECT entity_key, value FROM {table} WHERE feature_name = ?", (feast_stream.READING_ID,)
            )
            .fetchall()
        )
        return {key: Value.FromString(value).string_val for key, value in rows}

    return read


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    raise SystemExit(main(sys.argv[1:]))
