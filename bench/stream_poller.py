"""Poll the Feast online store for the latest reading of each machine (runs in the train venv).

``python bench/stream_poller.py DATASET MACHINES OUT.jsonl STOP_FILE [INTERVAL_S]``: until
``STOP_FILE`` exists, reads the stream view of machines 1..MACHINES with Feast's
``get_online_features`` (``shared.feast_stream.online_rows``: the stream half of what the
feature server serves) every INTERVAL_S (default 0.02) and appends ``{"reading_id", "seen_at"}`` for each
reading id it has not seen before (``seen_at``: wall-clock seconds at the end of the read
that returned it). Stack settings come from the environment (the function env of the stack).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path


def main(argv: list[str]) -> int:
    from shared import feast_stream
    from shared.contracts import get_contract

    dataset, machines, out, stop = argv[0], int(argv[1]), Path(argv[2]), Path(argv[3])
    interval = float(argv[4]) if len(argv) > 4 else 0.02
    logging.getLogger("feast").setLevel(logging.ERROR)
    contract = get_contract(dataset)
    entities = list(range(1, machines + 1))
    last: dict[int, str] = {}
    reads, read_s = 0, 0.0
    with out.open("w") as sink:
        while not stop.exists():
            started = time.time()
            try:
                rows = feast_stream.online_rows(contract, entities)
                if rows is None:
                    raise LookupError("the stream view is not applied yet")
            except Exception as exc:  # noqa: BLE001 - nothing pushed yet: keep polling
                print(f"poll: {type(exc).__name__}: {exc}", file=sys.stderr)
                time.sleep(0.5)
                continue
            seen_at = time.time()
            reads, read_s = reads + 1, read_s + seen_at - started
            for entity, row in zip(entities, rows, strict=True):
                reading_id = (row or {}).get("reading_id")
                if reading_id and last.get(entity) != reading_id:
                    last[entity] = reading_id
                    sink.write(json.dumps({"reading_id": reading_id, "seen_at": seen_at}) + "\n")
            sink.flush()
            time.sleep(max(0.0, interval - (time.time() - started)))
    print(json.dumps({"reads": reads, "mean_read_ms": round(1000 * read_s / max(reads, 1), 2)}))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    raise SystemExit(main(sys.argv[1:]))
