"""The contract's ``streaming:`` section and the check of one streamed reading (units)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import yaml

from shared.contracts import CONTRACTS_DIR, ContractError, get_contract, load_contract
from shared.contracts.streaming import aggregate_window, check_reading

CONTRACT = get_contract("ai4i")
READING = {
    "udi": 3,
    "type": "L",
    "air_temperature_k": 300.0,
    "process_temperature_k": 310.0,
    "rotational_speed_rpm": 1500,
    "torque_nm": 40.0,
    "tool_wear_min": 10,
}


def test_the_ai4i_contract_declares_rolling_aggregates() -> None:
    spec = CONTRACT.streaming
    assert spec is not None and spec.window == 10
    assert "torque_nm_mean_10" in spec.feature_names and "torque_nm_max_10" in spec.feature_names
    assert CONTRACT.stream_feature_view == "ai4i_readings_stream"


def test_a_valid_reading_gets_its_derived_features() -> None:
    row, reasons = check_reading(CONTRACT, {**READING, "product_id": "L47181"})
    assert reasons == [] and row is not None
    assert row["power_w"] == pytest.approx(40.0 * 1500 * 2 * math.pi / 60)
    assert row["product_id"] == "L47181" and row["rotational_speed_rpm"] == 1500.0


@pytest.mark.parametrize(
    ("change", "field", "rule"),
    [
        ({"torque_nm": 400}, "torque_nm", "max"),
        ({"torque_nm": -1}, "torque_nm", "min"),
        ({"torque_nm": float("nan")}, "torque_nm", "finite"),
        ({"torque_nm": "40"}, "torque_nm", "type"),
        ({"torque_nm": True}, "torque_nm", "type"),
        ({"torque_nm": None}, "torque_nm", "not_null"),
        ({"type": "X"}, "type", "allowed_values"),
        ({"udi": 0}, "udi", "min"),
        ({"udi": 2.5}, "udi", "type"),
        ({"product_id": "Q1"}, "product_id", "pattern"),
        ({"machine_failure": 1}, "machine_failure", "unknown_field"),
        ({"torque_nm": ...}, "torque_nm", "required"),
    ],
)
def test_a_bad_reading_is_rejected_with_a_reason_per_field(
    change: dict[str, Any], field: str, rule: str
) -> None:
    reading = {k: v for k, v in {**READING, **change}.items() if v is not ...}
    row, reasons = check_reading(CONTRACT, reading)
    assert row is None
    assert [(r.field, r.rule) for r in reasons] == [(field, rule)], reasons
    assert field in reasons[0].message


def test_every_bad_field_is_named_at_once() -> None:
    _, reasons = check_reading(CONTRACT, {**READING, "torque_nm": 500, "type": "Z", "udi": -4})
    assert {(r.field, r.rule) for r in reasons} == {
        ("torque_nm", "max"),
        ("type", "allowed_values"),
        ("udi", "min"),
    }
    _, reasons = check_reading(CONTRACT, ["not", "an", "object"])
    assert [(r.field, r.rule) for r in reasons] == [(None, "schema")]


def test_aggregates_over_a_window() -> None:
    assert CONTRACT.streaming is not None
    window = [CONTRACT.derive({**READING, "torque_nm": t}) for t in (10.0, 20.0, 60.0)]
    features = aggregate_window(CONTRACT.streaming, window)
    assert features["torque_nm_mean_10"] == pytest.approx(30.0)
    assert features["torque_nm_max_10"] == 60.0
    assert features["tool_wear_min_max_10"] == 10.0


@pytest.mark.parametrize(
    ("streaming", "needle"),
    [
        ({"window": 0, "aggregates": {"torque_nm": ["mean"]}}, "streaming.window"),
        ({"window": 5, "aggregates": {"type": ["mean"]}}, "streaming.aggregates.type"),
        ({"window": 5, "aggregates": {"torque_nm": ["median"]}}, "'median' is not one of"),
        ({"window": 5, "aggregates": {"udi": ["max"]}}, "streaming.aggregates.udi"),
        ({"window": 5, "aggregates": {}}, "streaming.aggregates must map"),
        ({"window": 5, "aggregates": {"torque_nm": ["max"]}, "every": 3}, "unknown field(s) ['every']"),
    ],
)
def test_a_bad_streaming_section_is_refused_naming_the_field(
    tmp_path: Path, streaming: dict[str, Any], needle: str
) -> None:
    doc = yaml.safe_load((CONTRACTS_DIR / "ai4i.yaml").read_text())
    doc["streaming"] = streaming
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(
        ContractError, match=needle.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
    ):
        load_contract(path)
