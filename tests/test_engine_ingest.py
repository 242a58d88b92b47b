"""Ingest validation on the Dask engine (unit, on a local dask.distributed cluster): the same
report, counts, quarantined rows and offline bytes as the in-process path, on the same file."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from functions.ingest.chunked import validate_file
from localdev.datagen import generate
from shared.contracts import get_contract
from shared.engine import EngineSettings, settings
from shared.engine import cluster as engine_cluster

CONTRACT = get_contract("ai4i")


@pytest.fixture(scope="module")
def client() -> Iterator[object]:
    dask = engine_cluster.new(EngineSettings("dask", None, workers=2, threads=1))
    try:
        yield dask
    finally:
        engine_cluster.close(dask)


def report(result: object) -> list[dict[str, object]]:
    return [x.to_report() for x in result.ordered_violations()]  # type: ignore[attr-defined]


def run(tmp_path: Path, name: str, data: bytes, fmt: str, client: object) -> tuple[object, Path, Path]:
    folder = tmp_path / name
    folder.mkdir()
    source = folder / f"in.{fmt}"
    source.write_bytes(data)
    offline, rejected = folder / "offline.parquet", folder / f"rejected.{fmt}"
    result = validate_file(
        CONTRACT, source, fmt, chunk_rows=97, offline_path=offline, rejected_path=rejected, client=client
    )
    return result, offline, rejected


def bad_rows_csv() -> bytes:
    f = pd.DataFrame(generate(2000, 2)).astype(object)
    f.loc[list(range(5, 2000, 150)), "Torque [Nm]"] = -1.0
    f.loc[[7, 1500], "Type"] = "X"
    f.loc[[9], "Machine failure"] = None
    f.loc[[11, 12], "TWF"] = " NA"
    return f.to_csv(index=False).encode()


def file_level_csv() -> bytes:
    f = pd.DataFrame(generate(1000, 3)).astype(object).drop(columns=["Torque [Nm]"]).assign(colour="red")
    f.loc[700, "Air temperature [K]"] = "hot"
    f.loc[[900, 950], "UDI"] = f.loc[3, "UDI"]
    return f.to_csv(index=False).encode()


def too_many_bad_csv() -> bytes:
    f = pd.DataFrame(generate(500, 4)).astype(object)
    f.loc[list(range(0, 500, 20)), "Type"] = "Q"
    return f.to_csv(index=False).encode()


def bad_rows_parquet() -> bytes:
    f = pd.DataFrame(generate(600, 5))
    f.loc[[3, 400], "Torque [Nm]"] = -2.0
    f.loc[[10, 590], "UDI"] = f.loc[300, "UDI"]
    buffer = io.BytesIO()
    f.to_parquet(buffer, index=False)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("data", "fmt"),
    [
        (bad_rows_csv(), "csv"),
        (file_level_csv(), "csv"),
        (too_many_bad_csv(), "csv"),
        (bad_rows_parquet(), "parquet"),
        (b"UDI,Product ID\n1,L1,extra\n", "csv"),  # ragged: the in-memory fallback on both
    ],
    ids=["bad-rows", "file-level", "too-many-bad", "parquet", "ragged"],
)
def test_dask_and_in_process_validation_agree_row_for_row(
    tmp_path: Path, client: object, data: bytes, fmt: str
) -> None:
    local, local_offline, local_rejected = run(tmp_path, "local", data, fmt, None)
    dask, dask_offline, dask_rejected = run(tmp_path, "dask", data, fmt, client)
    for attr in (
        "rows_in",
        "rows_rejected",
        "rows_written",
        "file_rejected",
        "event_time_min",
        "event_time_max",
    ):
        assert getattr(dask, attr) == getattr(local, attr), attr
    assert dask.chunks == local.chunks  # type: ignore[attr-defined]
    assert report(dask) == report(local)  # every rule, count, row listed and message
    assert dask_offline.read_bytes() == local_offline.read_bytes()
    assert local_rejected.exists() == dask_rejected.exists()
    if local_rejected.exists():
        assert dask_rejected.read_bytes() == local_rejected.read_bytes()


def test_engine_settings() -> None:
    assert settings({}) == EngineSettings()
    s = settings(
        {"FAASPIPE_ENGINE": "dask", "FAASPIPE_DASK_SCHEDULER": "tcp://s:8786", "FAASPIPE_DASK_MIN_BYTES": "0"}
    )
    assert s.dask and s.scheduler == "tcp://s:8786" and s.use_dask(0)
    assert not EngineSettings().use_dask(10**12)
    with pytest.raises(ValueError, match="FAASPIPE_ENGINE"):
        settings({"FAASPIPE_ENGINE": "spark"})
