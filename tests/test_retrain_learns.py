"""Production data becomes training data (issue 11): labelled predictions → a contract file →
a dataset version of origin production → a retrain's time-windowed training data → a
challenger and champion judged on the same recent holdout."""

from __future__ import annotations

from functions.ingest.validation import validate_bytes
from functions.monitor.production import production_csv, production_key, udi_of
from functions.monitor.store import ProductionRow
from shared import layout
from shared.contracts import get_contract

INPUTS = {
    "type": "M",
    "air_temperature_k": 298.1,
    "process_temperature_k": 308.6,
    "rotational_speed_rpm": 1551.0,
    "torque_nm": 42.8,
    "tool_wear_min": 0.0,
    "power_w": 6951.6,  # derived features travel with the logged inputs; the file keeps its columns
}


def _row(seq: int, truth: int, entity: str | None = None, **change: object) -> ProductionRow:
    return ProductionRow(
        seq, entity, "ai4i-machine-failure", {**INPUTS, **change}, truth, "2026-12-03T07:00:00+00:00"
    )


def test_labelled_predictions_become_a_file_the_contract_accepts() -> None:
    contract = get_contract("ai4i")
    rows = [_row(1, 0), _row(2, 1, type="L"), _row(3, 0, entity="42")]
    data = production_csv(contract, rows, udi_base=1_000_000)
    validation = validate_bytes(contract, data, key="ai4i/production/x.csv", content_type="text/csv")
    assert not validation.file_rejected and validation.rows_rejected == 0 and validation.rows_in == 3
    lines = data.decode().splitlines()
    assert lines[0].split(",")[:3] == ["UDI", "Product ID", "Type"]
    assert lines[1].startswith("1000001,M1000001,M,") and lines[2].startswith("1000002,L1000002,L,")
    assert lines[3].startswith("42,M42,M,")  # a prediction that named its entity keeps it
    assert [udi_of(r, 1_000_000) for r in rows] == [1_000_001, 1_000_002, 42]
    assert production_key(contract, "labels/batch-7.csv", data).startswith(
        layout.production_prefix(contract.landing_prefix) + "batch-7-"
    )
    assert (
        production_csv(contract, rows, udi_base=1_000_000) == data
    )  # a redelivery: same bytes, same version


def test_a_bad_labelled_row_is_rejected_by_the_contract_like_any_file() -> None:
    contract = get_contract("ai4i")
    rows = [_row(i, i % 2) for i in range(1, 200)] + [_row(500, 1, torque_nm=-5.0)]
    validation = validate_bytes(
        contract, production_csv(contract, rows, 10), key="ai4i/production/y.csv", content_type="text/csv"
    )
    assert validation.rows_rejected == 1 and not validation.file_rejected
