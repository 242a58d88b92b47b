"""Run in the train environment (Feast): write overlapping batches through Feast's online store
and through faaspipe's fast writer (``functions.materialise.sqlite_fast`` or ``redis_fast``)
into two stores; print whether what is stored is equal.

    .venvs/train/bin/python -m tests.online_fast_check WORKDIR sqlite
    .venvs/train/bin/python -m tests.online_fast_check WORKDIR redis HOST:PORT DB_FAST DB_FEAST
"""

from __future__ import annotations

import os
import sqlite3
import sys
from pathlib import Path
from typing import Any


def batches(contract: Any) -> list[Any]:
    """Four writes: 200 rows; 200 rows of which 100 overwrite; 50 rows older than stored; 20 rows
    at the instant stored (Redis keeps what is stored, SQLite overwrites), two of them before
    1970 and one a microsecond later."""
    import pandas as pd
    import pyarrow as pa

    from functions.ingest.validation import offline_frame, validate
    from localdev.datagen import generate

    raw = pd.DataFrame(generate(300, 3)).rename(columns={c.source: c.name for c in contract.columns})
    frame = offline_frame(contract, validate(contract, raw).valid_table())
    frame.loc[3, "product_id"] = None
    frame.loc[4, "torque_nm"] = float("nan")
    frame.loc[5, "product_id"] = "é€x"
    frame.loc[6, "product_id"] = "P" * 300  # a length past one varint byte
    frame.loc[10:12, "event_timestamp"] = pd.Timestamp("1969-12-31 23:59:58.250001", tz="UTC")
    later = frame.iloc[100:].copy()  # half of it overwrites entities of the first write
    later["torque_nm"] = later["torque_nm"] + 1.0
    later["event_timestamp"] = later["event_timestamp"] + pd.Timedelta(microseconds=1500)
    later.loc[later.index[7], "tool_wear_min"] = None
    older = frame.iloc[150:200].copy()  # older than what the second write stored
    older["torque_nm"] = 0.0
    older["event_timestamp"] = older["event_timestamp"] - pd.Timedelta(days=1)
    same = frame.iloc[:20].copy()  # what the first write stored (these are not overwritten later)
    same["torque_nm"] = -1.0
    same.loc[12, "event_timestamp"] = same.loc[12, "event_timestamp"] + pd.Timedelta(microseconds=1)
    writes = (frame.iloc[:200], later, older, same)
    return [pa.RecordBatch.from_pandas(f, preserve_index=False) for f in writes]


def write(state: Path, fast: bool, redis: str | None) -> Any:
    os.environ["FAASPIPE_STATE_DIR"] = str(state)
    if redis:
        os.environ["FAASPIPE_FEAST_REDIS"] = redis
    from feast.utils import _convert_arrow_to_proto

    from functions.materialise import redis_fast, sqlite_fast
    from shared import feast_repo
    from shared.contracts import get_contract

    contract = get_contract("ai4i")
    store = feast_repo.feature_store(contract)
    store.apply(list(feast_repo.definitions(contract, "0123456789abcdef")))
    view = store.get_feature_view(contract.feature_view)
    key, ts = contract.entity_key, feast_repo.EVENT_TIMESTAMP
    if fast and redis:  # every write through one writer: the next encoded while one is sent
        assert redis_fast.supports(store, view)
        redis_fast.Writer(store, view, key, ts).write_all(batches(contract))
    for batch in batches(contract):
        if fast and redis:
            pass
        elif fast:
            assert sqlite_fast.supports(store, view)
            # a small chunk: several upsert transactions, split inside the key order
            with sqlite_fast.Staged(store, view, key, ts, 37) as staged:
                for part in (batch.slice(0, 60), batch.slice(60)):
                    staged.add(part)
                assert staged.commit() == batch.num_rows
        else:
            join_keys = {key: view.entity_columns[0].dtype.to_value_type()}
            rows = _convert_arrow_to_proto(batch, view, join_keys)
            store._get_provider().online_write_batch(store.config, view, rows, None)
    if redis:
        client = store._get_provider().online_store._get_client(store.config.online_store)
        keys = [k for k in client.scan_iter(count=1000) if client.type(k) == b"hash"]  # not a test's lock
        return sorted((k, sorted(client.hgetall(k).items())) for k in keys)
    con = sqlite3.connect(state / "feast" / "online.db")
    return con.execute('SELECT * FROM "faaspipe_ai4i_readings" ORDER BY entity_key, feature_name').fetchall()


if __name__ == "__main__":
    import shared.feast_repo as repo

    work, kind = Path(sys.argv[1]), sys.argv[2]
    address = sys.argv[3] if kind == "redis" else None
    stores = {
        "fast": f"{address},db={sys.argv[4]}" if address else None,
        "feast": f"{address},db={sys.argv[5]}" if address else None,
    }
    fast = write(work / "fast", True, stores["fast"])
    print("rows", len(fast))
    repo._SHARED_STORES.clear()
    feast = write(work / "feast", False, stores["feast"])
    print("equal", fast == feast and len(fast) > 0)
