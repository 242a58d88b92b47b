"""Run in the train environment (Feast): write two overlapping batches through Feast's SQLite online store and
through ``functions.materialise.sqlite_fast`` into two stores; print whether the rows are equal.

    .venvs/train/bin/python -m tests.sqlite_fast_check WORKDIR
"""

from __future__ import annotations

import os
import sqlite3
import sys
from pathlib import Path


def write(state: Path, fast: bool) -> list[tuple[object, ...]]:
    os.environ["FAASPIPE_STATE_DIR"] = str(state)
    import pandas as pd
    import pyarrow as pa
    from feast.utils import _convert_arrow_to_proto

    from functions.ingest.validation import offline_frame, validate
    from functions.materialise import sqlite_fast
    from localdev.datagen import generate
    from shared import feast_repo
    from shared.contracts import get_contract

    contract = get_contract("ai4i")
    store = feast_repo.feature_store(contract)
    store.apply(list(feast_repo.definitions(contract, "0123456789abcdef")))
    raw = pd.DataFrame(generate(300, 3)).rename(columns={c.source: c.name for c in contract.columns})
    frame = offline_frame(contract, validate(contract, raw).valid_table())
    frame.loc[3, "product_id"] = None
    frame.loc[4, "torque_nm"] = float("nan")
    frame.loc[5, "product_id"] = "é€x"
    view = store.get_feature_view(contract.feature_view)
    first = pa.RecordBatch.from_pandas(frame.iloc[:200], preserve_index=False)
    later = frame.iloc[100:].copy()  # half of it overwrites entities of the first write
    later["torque_nm"] = later["torque_nm"] + 1.0
    later.loc[later.index[7], "tool_wear_min"] = None
    second = pa.RecordBatch.from_pandas(later, preserve_index=False)
    for batch in (first, second):
        if fast:
            assert sqlite_fast.supports(store, view)
            # a small chunk: several upsert transactions, split inside the key order
            with sqlite_fast.Staged(
                store, view, contract.entity_key, feast_repo.EVENT_TIMESTAMP, 37
            ) as staged:
                for part in (batch.slice(0, 60), batch.slice(60)):
                    staged.add(part)
                assert staged.commit() == batch.num_rows
        else:
            join_keys = {contract.entity_key: view.entity_columns[0].dtype.to_value_type()}
            rows = _convert_arrow_to_proto(batch, view, join_keys)
            store._get_provider().online_write_batch(store.config, view, rows, None)
    con = sqlite3.connect(state / "feast" / "online.db")
    return con.execute('SELECT * FROM "faaspipe_ai4i_readings" ORDER BY entity_key, feature_name').fetchall()


if __name__ == "__main__":
    work = Path(sys.argv[1])
    fast = write(work / "fast", True)
    print("rows", len(fast))
    import shared.feast_repo as repo

    repo._SHARED_STORES.clear()
    feast = write(work / "feast", False)
    print("equal", fast == feast and len(fast) > 0)
