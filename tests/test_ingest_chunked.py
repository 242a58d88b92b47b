"""Streamed ingest validation (unit): the same outcome as the in-memory validation, in chunks."""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd
import pytest

from functions.ingest.chunked import validate_file
from functions.ingest.validation import offline_frame, validate_bytes
from localdev.datagen import generate
from shared.contracts import get_contract

CONTRACT = get_contract("ai4i")


def summary(result: object) -> tuple[object, ...]:
    violations = sorted(
        (x.rule, x.column, x.level, x.count, x.to_report()["rows"], x.to_report()["rows_truncated"])
        for x in result.ordered_violations()  # type: ignore[attr-defined]
    )
    return (result.rows_in, result.rows_rejected, result.rows_written, result.file_rejected, violations)  # type: ignore[attr-defined]


def both(tmp_path: Path, data: bytes, fmt: str, chunk_rows: int = 97) -> tuple[object, object, Path, Path]:
    source = tmp_path / f"in.{fmt}"
    source.write_bytes(data)
    offline, rejected = tmp_path / "offline.parquet", tmp_path / f"rejected.{fmt}"
    new = validate_file(
        CONTRACT, source, fmt, chunk_rows=chunk_rows, offline_path=offline, rejected_path=rejected
    )
    old = validate_bytes(CONTRACT, data, key=f"ai4i/x.{fmt}", content_type=None)
    return old, new, offline, rejected


def frame(n: int, seed: int) -> pd.DataFrame:
    return pd.DataFrame(generate(n, seed)).astype(object)


def test_a_valid_file_in_chunks_writes_the_same_offline_rows(tmp_path: Path) -> None:
    data = frame(1000, 1).to_csv(index=False).encode()
    old, new, offline, _ = both(tmp_path, data, "csv")
    assert summary(old) == summary(new) and new.chunks > 5  # type: ignore[attr-defined]
    expected = offline_frame(CONTRACT, old.valid_table())  # type: ignore[attr-defined]
    pd.testing.assert_frame_equal(pd.read_parquet(offline), expected)
    assert new.event_time_min == expected.event_timestamp.min()  # type: ignore[attr-defined]
    assert new.event_time_max == expected.event_timestamp.max()  # type: ignore[attr-defined]


def test_row_violations_across_chunks_count_exactly(tmp_path: Path) -> None:
    f = frame(2000, 2)
    bad = list(range(5, 2000, 150))
    f.loc[bad, "Torque [Nm]"] = -1.0
    f.loc[[7, 1500], "Type"] = "X"
    f.loc[[9], "Machine failure"] = None
    f.loc[[11, 12], "TWF"] = " NA"
    old, new, offline, rejected = both(tmp_path, f.to_csv(index=False).encode(), "csv")
    assert summary(old) == summary(new)
    assert len(pd.read_parquet(offline)) == 2000 - new.rows_rejected  # type: ignore[attr-defined]
    rows = pd.read_csv(rejected, dtype=str)
    pd.testing.assert_frame_equal(
        rows, pd.read_csv(io.StringIO(old.rejected_source_rows().to_csv(index=False)), dtype=str)
    )  # type: ignore[attr-defined]


def test_file_level_rules_and_duplicate_keys_across_chunks(tmp_path: Path) -> None:
    f = frame(1000, 3).drop(columns=["Torque [Nm]"]).assign(colour="red")
    f.loc[7, "Air temperature [K]"] = "hot"
    f.loc[[900, 950], "UDI"] = f.loc[3, "UDI"]
    f.loc[[990], "UDI"] = f.loc[500, "UDI"]
    old, new, _, _ = both(tmp_path, f.to_csv(index=False).encode(), "csv")
    assert summary(old) == summary(new)
    messages = {(x.rule, x.column): x.message for x in new.violations}  # type: ignore[attr-defined]
    assert messages == {(x.rule, x.column): x.message for x in old.violations}  # type: ignore[attr-defined]


def test_too_many_bad_rows_reject_the_file(tmp_path: Path) -> None:
    f = frame(500, 4)
    f.loc[list(range(0, 500, 20)), "Type"] = "Q"
    old, new, _, _ = both(tmp_path, f.to_csv(index=False).encode(), "csv")
    assert summary(old) == summary(new) and new.file_rejected  # type: ignore[attr-defined]


def test_parquet_in_chunks(tmp_path: Path) -> None:
    f = pd.DataFrame(generate(600, 5))
    f.loc[[3, 400], "Torque [Nm]"] = -2.0
    buffer = io.BytesIO()
    f.to_parquet(buffer, index=False)
    old, new, offline, rejected = both(tmp_path, buffer.getvalue(), "parquet")
    assert summary(old) == summary(new)
    assert len(pd.read_parquet(rejected)) == 2 and len(pd.read_parquet(offline)) == 598


@pytest.mark.parametrize(
    ("data", "fmt"),
    [
        (b"", "csv"),
        (b"PAR1 not really", "parquet"),
        (b"UDI,Product ID\n", "csv"),
        (b"UDI,Product ID\n1,L1,extra\n", "csv"),  # ragged: the in-memory reader decides
        (b"UDI,Product ID\n1\n", "csv"),
    ],
)
def test_odd_files_get_the_in_memory_outcome(tmp_path: Path, data: bytes, fmt: str) -> None:
    old, new, _, _ = both(tmp_path, data, fmt)
    assert summary(old) == summary(new)


def test_newest_rows_keeps_the_latest_row_per_entity_in_range(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from functions.materialise.online_writer import newest_rows

    ts = pd.to_datetime(["2020-01-01", "2020-01-03", "2020-01-02", "2020-01-05", "2020-01-02"], utc=True)
    table = pa.table({"udi": [1, 1, 2, 2, 3], "event_timestamp": ts})
    path = tmp_path / "v.parquet"
    pq.write_table(table, path, row_group_size=2)  # groups: [0, 1], [2, 3], [4]
    start, end = pd.Timestamp("2020-01-01", tz="UTC"), pd.Timestamp("2020-01-04", tz="UTC")
    rows = newest_rows(pq.ParquetFile(path), "udi", start.to_pydatetime(), end.to_pydatetime())
    # entity 1: row 1 (Jan 3); entity 2: row 2 (Jan 5 is out of range); entity 3: row 4
    assert [r.tolist() for r in rows] == [[1], [0], [0]]


def _fast_check(tmp_path: Path, *args: str) -> None:
    import subprocess

    from tests.conftest import REPO

    train = REPO / ".venvs" / "train" / "bin" / "python"
    if not train.exists():
        pytest.skip("no train environment (make envs)")
    done = subprocess.run(
        [str(train), "-m", "tests.online_fast_check", str(tmp_path), *args],
        cwd=REPO,
        env={**__import__("os").environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "equal True" in done.stdout, done.stdout


def test_the_sqlite_fast_path_writes_the_rows_feast_writes(tmp_path: Path) -> None:
    _fast_check(tmp_path, "sqlite")


def test_the_redis_fast_path_writes_the_hashes_feast_writes(tmp_path: Path) -> None:
    from tests import services

    problem = services.redis_problem()
    if problem:
        pytest.skip(f"no Redis: {problem}")
    with services.claimed_redis_db() as fast, services.claimed_redis_db() as feast:
        _fast_check(tmp_path, "redis", f"{services.REDIS_HOST}:{services.REDIS_PORT}", str(fast), str(feast))
