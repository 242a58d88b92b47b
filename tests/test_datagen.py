"""The AI4I generator: determinism, the published failure rules row by row, calibration, drift."""

from __future__ import annotations

import csv
import math
import subprocess
import sys
from pathlib import Path

import pytest

from localdev import datagen
from localdev.datagen import HEADER, generate, read_csv, reference_dataset_path, summarise, write_csv

REPO = Path(__file__).resolve().parent.parent
RAD_PER_S = 2 * math.pi / 60


@pytest.fixture(scope="module")
def rows() -> list[dict[str, object]]:
    return generate(10_000, seed=0)


def test_same_seed_same_rows_other_seed_other_rows() -> None:
    assert generate(500, seed=7) == generate(500, seed=7)
    assert generate(500, seed=7) != generate(500, seed=8)


def test_rows_have_the_real_header_types_and_serials(rows: list[dict[str, object]]) -> None:
    assert all(tuple(r) == HEADER for r in rows)
    assert [r["UDI"] for r in rows] == list(range(1, len(rows) + 1))
    for r in rows[:200]:
        assert r["Product ID"] == f"{r['Type']}{datagen.SERIAL_BASE[r['Type']] + r['UDI']}"
        assert isinstance(r["Rotational speed [rpm]"], int) and isinstance(r["Tool wear [min]"], int)
        assert round(r["Torque [Nm]"], 1) == r["Torque [Nm]"]
    assert min(r["Torque [Nm]"] for r in rows) > 0
    shifted = generate(3, seed=1, start_udi=47)
    assert [r["UDI"] for r in shifted] == [47, 48, 49]


def test_failure_modes_follow_the_published_rules_row_by_row(rows: list[dict[str, object]]) -> None:
    for r in rows:
        diff = r["Process temperature [K]"] - r["Air temperature [K]"]
        power = r["Torque [Nm]"] * r["Rotational speed [rpm]"] * RAD_PER_S
        strain = r["Tool wear [min]"] * r["Torque [Nm]"]
        where = f"row {r['UDI']}: {r}"
        assert r["HDF"] == int(diff < 8.6 and r["Rotational speed [rpm]"] < 1380), where
        assert r["PWF"] == int(power < 3500 or power > 9000), where
        assert r["OSF"] == int(strain > datagen.OSF_LIMIT_MIN_NM[r["Type"]]), where
        modes = [r[m] for m in ("TWF", "HDF", "PWF", "OSF", "RNF")]
        assert r["Machine failure"] == int(any(modes)), where
    counts = summarise(rows)
    assert all(counts[m] > 0 for m in ("TWF", "HDF", "PWF", "OSF", "RNF")), counts


def test_tool_wear_grows_by_variant_and_fails_only_at_end_of_life(rows: list[dict[str, object]]) -> None:
    low, high = datagen.TOOL_LIFE_MIN
    for previous, current in zip(rows, rows[1:], strict=False):
        step = current["Tool wear [min]"] - previous["Tool wear [min]"]
        if current["Tool wear [min]"] == 0:  # the tool was changed after the previous process
            assert previous["Tool wear [min]"] >= low, previous
        else:
            assert step == datagen.WEAR_PER_PROCESS_MIN[previous["Type"]], (previous, current)
        if previous["TWF"]:
            assert low <= previous["Tool wear [min]"] <= high + 5 and current["Tool wear [min]"] == 0


def test_csv_round_trip_keeps_header_and_values(tmp_path: Path) -> None:
    rows = generate(50, seed=3)
    path = write_csv(tmp_path / "sub" / "ai4i.csv", rows)
    with path.open() as f:
        assert next(csv.reader(f)) == list(HEADER)
    assert read_csv(path) == rows


def test_cli_writes_a_shifted_file(tmp_path: Path) -> None:
    out = tmp_path / "drifted.csv"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "localdev.datagen",
            "--rows",
            "300",
            "--seed",
            "5",
            "--torque-shift",
            "10",
            str(out),
        ],
        cwd=REPO,
        check=True,
        capture_output=True,
    )
    assert read_csv(out) == generate(300, seed=5, torque_shift=10)


def test_shifted_stream_is_shifted() -> None:
    base = summarise(generate(5_000, seed=11))
    torque = summarise(generate(5_000, seed=11, torque_shift=8.0))
    wear = summarise(generate(5_000, seed=11, tool_wear_shift=40.0))
    assert torque["Torque [Nm]"]["mean"] - base["Torque [Nm]"]["mean"] == pytest.approx(8.0, abs=0.5)
    assert torque["Rotational speed [rpm]"]["mean"] < base["Rotational speed [rpm]"]["mean"] - 50
    assert wear["Tool wear [min]"]["mean"] - base["Tool wear [min]"]["mean"] == pytest.approx(40.0, abs=5)
    assert wear["OSF"] > 3 * base["OSF"]
    assert torque["Machine failure"] > 1.5 * base["Machine failure"]


def test_reference_path_follows_the_env_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = write_csv(tmp_path / "ref.csv", generate(5, seed=0))
    monkeypatch.setenv(datagen.REFERENCE_ENV, str(fake))
    assert reference_dataset_path() == fake


def test_column_stats_and_failure_counts_match_the_real_file(rows: list[dict[str, object]]) -> None:
    path = reference_dataset_path()
    if path is None:
        pytest.skip("the real ai4i2020.csv is not here (../shared/datasets/ or $FAASPIPE_AI4I_CSV)")
    real, ours = summarise(read_csv(path)), summarise(rows)
    assert real["rows"] == 10_000
    for column in datagen.NUMERIC_COLUMNS:
        assert ours[column]["mean"] == pytest.approx(real[column]["mean"], rel=0.02), column
        assert ours[column]["std"] == pytest.approx(real[column]["std"], rel=0.05), column
    for kind, count in real["types"].items():
        assert ours["types"][kind] == pytest.approx(count, rel=0.05, abs=60), kind
    # Counts are random; HDF depends on a random walk of the temperature difference, so wide.
    for mode, rel in {"Machine failure": 0.25, "TWF": 0.35, "PWF": 0.35, "OSF": 0.25, "HDF": 0.5}.items():
        assert ours[mode] == pytest.approx(real[mode], rel=rel), (mode, ours[mode], real[mode])


def test_stream_mode_gives_valid_readings_of_each_machine_in_turn(tmp_path: Path) -> None:
    import json as _json

    from localdev.datagen import main as datagen_main
    from localdev.datagen import stream_readings
    from shared.contracts import get_contract
    from shared.contracts.streaming import check_reading

    contract = get_contract("ai4i")
    readings = stream_readings(2000, 7, seed=5)
    assert [r["udi"] for r in readings[:8]] == [1, 2, 3, 4, 5, 6, 7, 1]
    assert all(check_reading(contract, r)[1] == [] for r in readings)
    out = tmp_path / "readings.jsonl"
    assert datagen_main(["stream", "--count", "3", "--machines", "2", str(out)]) == 0
    events = [_json.loads(line) for line in out.read_text().splitlines()]
    assert [e["type"] for e in events] == ["dev.faaspipe.sensor.reading.v1"] * 3
    assert events[2]["data"]["reading"]["udi"] == 1 and len({e["id"] for e in events}) == 3
