"""Run in the train environment (Feast): push the same stream rows online through Feast's
``FeatureStore.push`` (the path ``feast_stream.push`` took before) and through
``feast_stream.push`` (the SQLite fast path) into two stores; print whether the stored rows are equal.

    .venvs/train/bin/python -m tests.stream_push_check WORKDIR
"""

from __future__ import annotations

import os
import sqlite3
import sys
from pathlib import Path
from typing import Any


def rows() -> list[dict[str, Any]]:
    """Feature rows as stream-features makes them (datagen readings in windows), plus edge cases."""
    from functions.stream_features.handler import feature_row
    from localdev.datagen import stream_readings
    from shared.contracts import get_contract
    from shared.contracts.streaming import check_reading
    from shared.stream_windows import Reading

    contract = get_contract("ai4i")
    out = []
    windows: dict[int, list[Reading]] = {}
    t0 = 1_764_770_000.0
    for i, reading in enumerate(stream_readings(120, 40, seed=3)):
        row, reasons = check_reading(contract, reading)
        assert row is not None, reasons
        # times with sub-millisecond fractions: pandas' float rounding and Feast's truncation to µs
        r = Reading(f"/src/é{i}", t0 + i * 0.0137 + (i % 7) * 1e-7, row)
        window = windows.setdefault(int(row["udi"]), [])
        window.append(r)
        del window[:-10]
        out.append(feature_row(contract, int(row["udi"]), list(window)))
    latest = {row["udi"]: row for row in out}
    edge = list(latest.values())
    edge[0] = {**edge[0], "product_id": None, "torque_nm_max_10": float("nan")}
    edge[1] = {**edge[1], "torque_nm": 41, "power_w": None}  # an int in a Float64 feature, a null
    edge[2] = {**edge[2], "event_timestamp": 1_764_770_000.999_999_9}
    return edge


def write(state: Path, fast: bool, batch: list[dict[str, Any]]) -> list[tuple[object, ...]]:
    os.environ["FAASPIPE_STATE_DIR"] = str(state)
    from feast.data_source import PushMode

    from shared import feast_repo, feast_stream
    from shared.contracts import get_contract

    contract = get_contract("ai4i")
    feast_stream.apply_stream(contract)
    if fast:
        assert feast_stream._online_view(contract) is not None
        feast_stream.push(contract, batch)
    else:
        feast_repo.feature_store(contract).push(
            feast_stream.push_source_name(contract), feast_stream._frame(contract, batch), to=PushMode.ONLINE
        )
    con = sqlite3.connect(state / "feast" / "online.db")
    table = f"{feast_repo.PROJECT}_{contract.stream_feature_view}"
    return con.execute(f'SELECT * FROM "{table}" ORDER BY entity_key, feature_name').fetchall()


if __name__ == "__main__":
    import warnings

    warnings.simplefilter("ignore")
    work = Path(sys.argv[1])
    batch = rows()
    fast = write(work / "fast", True, batch)
    print("rows", len(fast))
    import shared.feast_repo as repo

    repo._SHARED_STORES.clear()
    feast = write(work / "feast", False, batch)
    for a, b in zip(fast, feast, strict=False):
        if a != b:
            print("first difference", a, b)
            break
    print("equal", fast == feast and len(fast) > 0)
