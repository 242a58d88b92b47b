"""Unit tests of a model's feature set (``shared/feature_set.py``): the contract's encoded
features, then the streamed rolling aggregates when the training frame has them; training
(``shared/modelling.py``, ``shared/stream_join.py``, ``functions/train/fit.py``), promotion's
input gate and serving (``functions/predict/aggregates.py``, ``encode_rows``) agree on it.

The train-venv parts run once in a subprocess (as ``tests/test_modelling.py`` does).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from functions.predict.aggregates import with_aggregates
from functions.predict.inputs import BadInput, encode_rows
from shared import feature_set
from shared.contracts import get_contract
from tests.test_modelling import needs_train_env, run_in_train_env

CONTRACT = get_contract("ai4i")
AGGREGATES = CONTRACT.streaming.feature_names if CONTRACT.streaming else ()
RAW = {
    "type": "M",
    "air_temperature_k": 299.0,
    "process_temperature_k": 309.5,
    "rotational_speed_rpm": 1500.0,
    "torque_nm": 40.0,
    "tool_wear_min": 100.0,
}


def test_the_ai4i_contract_declares_the_aggregates_the_model_may_use() -> None:
    assert AGGREGATES == (
        "torque_nm_mean_10",
        "torque_nm_max_10",
        "rotational_speed_rpm_mean_10",
        "tool_wear_min_max_10",
        "power_w_mean_10",
    )


def test_a_frame_trains_on_all_declared_aggregates_or_none() -> None:
    contract_columns = ["udi", "event_timestamp", *CONTRACT.model_features]
    assert feature_set.aggregates_in(CONTRACT, contract_columns) == ()
    assert feature_set.aggregates_in(CONTRACT, [*contract_columns, *reversed(AGGREGATES)]) == AGGREGATES
    with pytest.raises(ValueError, match="lacks"):
        feature_set.aggregates_in(CONTRACT, [*contract_columns, AGGREGATES[0]])


def test_the_encoded_features_and_their_label() -> None:
    assert feature_set.encoded_features(CONTRACT) == CONTRACT.encoded_features
    both = feature_set.encoded_features(CONTRACT, AGGREGATES)
    assert both == (*CONTRACT.encoded_features, *AGGREGATES)
    assert feature_set.label(()) == "contract" and feature_set.label(AGGREGATES) == "contract+stream"


def test_a_models_aggregates_come_back_from_its_feature_list() -> None:
    base = list(CONTRACT.encoded_features)
    assert feature_set.model_aggregates(CONTRACT, base) == ()
    assert feature_set.model_aggregates(CONTRACT, [*base, *AGGREGATES]) == AGGREGATES
    for wrong in ([*base, *AGGREGATES[:2]], [*base[::-1]], [*AGGREGATES, *base], [*base, "x"]):
        with pytest.raises(ValueError, match="neither"):
            feature_set.model_aggregates(CONTRACT, wrong)


def test_missing_aggregates_are_an_error_naming_them() -> None:
    row = dict.fromkeys(AGGREGATES, 1.0)
    assert feature_set.aggregate_values(AGGREGATES, row, "entity 7") == row
    with pytest.raises(feature_set.MissingAggregates, match=r"entity 7: no rolling aggregate\(s\) \['torque"):
        feature_set.aggregate_values(AGGREGATES, {**row, "torque_nm_mean_10": None}, "entity 7")
    with pytest.raises(feature_set.MissingAggregates):
        feature_set.aggregate_values(AGGREGATES, None, "entity 7")


def test_serving_appends_the_models_aggregates_after_the_contracts_features() -> None:
    online = {**RAW, **{name: float(i + 1) for i, name in enumerate(AGGREGATES)}, "window_readings": 3}
    (row,) = with_aggregates([dict(RAW)], [online], AGGREGATES, ["entity 7"])
    matrix = encode_rows(CONTRACT, [row], AGGREGATES)
    assert matrix.shape == (1, len(CONTRACT.encoded_features) + len(AGGREGATES))
    assert np.allclose(matrix[0, : len(CONTRACT.encoded_features)], CONTRACT.encode(CONTRACT.derive(RAW)))
    assert matrix[0, len(CONTRACT.encoded_features) :].tolist() == [1.0, 2.0, 3.0, 4.0, 5.0]
    # a contract-only model: nothing added, the same matrix as before streaming existed
    assert with_aggregates([dict(RAW)], [online], (), ["entity 7"]) == [RAW]
    assert encode_rows(CONTRACT, [RAW]).shape == (1, len(CONTRACT.encoded_features))


def test_by_entity_the_other_declared_aggregates_are_carried_for_a_rollouts_candidate() -> None:
    online = {**RAW, **{name: float(i + 1) for i, name in enumerate(AGGREGATES)}, "window_readings": 3}
    # the champion scores the contract's features only; the candidate also the aggregates
    (row,) = with_aggregates([dict(RAW)], [online], (), ["entity 7"], carry=AGGREGATES)
    assert encode_rows(CONTRACT, [row]).shape == (1, len(CONTRACT.encoded_features))
    assert encode_rows(CONTRACT, [row], AGGREGATES)[0, len(CONTRACT.encoded_features) :].tolist() == [
        1.0,
        2.0,
        3.0,
        4.0,
        5.0,
    ]
    # carried, never required: an entity without a streamed window still serves the champion
    assert with_aggregates([dict(RAW)], [dict(RAW)], (), ["entity 8"], carry=AGGREGATES) == [RAW]
    bad = {**RAW, AGGREGATES[0]: float("nan"), AGGREGATES[1]: "x"}
    assert with_aggregates([dict(RAW)], [bad], (), ["entity 9"], carry=AGGREGATES) == [RAW]


@pytest.mark.parametrize(
    ("source", "status", "needle"),
    [
        ({}, 422, "no rolling aggregate"),
        (None, 422, "no rolling aggregate"),
        ({name: "big" for name in AGGREGATES}, 400, "must be numbers"),
        ({name: float("nan") for name in AGGREGATES}, 400, "not finite"),
    ],
)
def test_a_row_without_usable_aggregates_is_a_4xx(source: Any, status: int, needle: str) -> None:
    with pytest.raises(BadInput, match=needle) as caught:
        with_aggregates([dict(RAW)], [source], AGGREGATES, ["entity 7"])
    assert caught.value.status == status and "entity 7" in str(caught.value)


def test_encoding_a_row_without_the_models_aggregates_is_a_422_not_zeros() -> None:
    with pytest.raises(BadInput, match="torque_nm_mean_10") as caught:
        encode_rows(CONTRACT, [RAW], AGGREGATES)
    assert caught.value.status == 422


def test_the_promotion_input_gate_accepts_either_feature_set() -> None:
    from functions.promote.gates import example_row, input_schema_gate

    stream = [*CONTRACT.encoded_features, *AGGREGATES]
    meta = {"contract": CONTRACT.ref, "features": stream}
    assert input_schema_gate(meta, CONTRACT, len(stream))["passed"]
    narrow = input_schema_gate(meta, CONTRACT, len(CONTRACT.encoded_features))
    assert not narrow["passed"] and "booster takes" in narrow["detail"]
    partial = input_schema_gate({**meta, "features": stream[:-1]}, CONTRACT, len(stream) - 1)
    assert not partial["passed"]
    assert example_row(CONTRACT, None, len(stream)).shape == (1, len(stream))


TRAIN_ENV_PROBE = r"""
import json, os, warnings
warnings.filterwarnings("ignore")
import numpy as np
import pandas as pd
from shared import modelling, stream_join, feast_stream
from shared.contracts import get_contract
from functions.train.fit import train_final

contract = get_contract("ai4i")
names = list(contract.streaming.feature_names)
frame = modelling.frame_from_csv(contract, os.environ["FAASPIPE_AI4I_CSV"]).head(2000)
out = {"contract_features": modelling.frame_features(contract, frame)}

# the joined frame: what feast_stream.training_frame returns (entity_df + the stream columns);
# rows without a streamed reading are dropped by Feast, the rest carry the aggregates
def fake_join(c, entity_df):
    joined = entity_df.copy()
    for i, name in enumerate(names):
        joined[name] = joined["torque_nm"] * (i + 1)
    joined["window_readings"] = 10
    joined["reading_id"] = "r"
    return joined.iloc[::2]
stream_join.has_stream_rows = lambda c: True
feast_stream.training_frame = fake_join
joined = modelling.prepare_frame(contract, stream_join.join_aggregates(contract, frame))
out["joined_columns"] = list(joined.columns)
out["joined_rows"] = len(joined)
out["joined_features"] = modelling.frame_features(contract, joined)
x = modelling.encode_frame(contract, joined)
out["encoded_tail_equal"] = bool(np.allclose(x[:, -len(names):], joined[names].to_numpy(dtype=np.float32)))
out["width"] = int(x.shape[1])
out["checksums_differ"] = modelling.frame_checksum(contract, joined) != modelling.frame_checksum(
    contract, joined.drop(columns=names))

# too few covered rows of a class: the frame comes back unchanged (contract features only)
feast_stream.training_frame = lambda c, e: fake_join(c, e).head(3)
out["fallback_columns"] = list(stream_join.join_aggregates(contract, frame).columns) == list(frame.columns)
stream_join.has_stream_rows = lambda c: False
out["no_parts_unchanged"] = stream_join.join_aggregates(contract, frame) is frame

train, holdout = modelling.split_holdout(contract, joined)
model = train_final(contract, train, holdout, {"max_depth": 2}, best_iteration=9, seed=1)
out["booster_features"] = model.booster.feature_names
out["model_features"] = model.features
out["reference_columns"] = list(model.reference.columns)
out["example_columns"] = list(model.input_example.columns)
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def probe() -> dict[str, Any]:
    return run_in_train_env(TRAIN_ENV_PROBE)


@needs_train_env
def test_training_on_joined_aggregates_records_them_as_features(probe: dict[str, Any]) -> None:
    stream = [*CONTRACT.encoded_features, *AGGREGATES]
    assert probe["contract_features"] == list(CONTRACT.encoded_features)
    assert probe["joined_columns"] == [
        "udi",
        "event_timestamp",
        "machine_failure",
        *CONTRACT.model_features,
        *AGGREGATES,
    ]  # window_readings / reading_id dropped: not features
    assert probe["joined_rows"] == 1000 and probe["joined_features"] == stream
    assert probe["encoded_tail_equal"] and probe["width"] == len(stream)
    assert probe["checksums_differ"]
    assert probe["booster_features"] == stream == probe["model_features"] == probe["example_columns"]
    assert probe["reference_columns"] == list(CONTRACT.model_features)  # drift: the contract's


@needs_train_env
def test_without_enough_streamed_rows_training_keeps_the_contracts_features(probe: dict[str, Any]) -> None:
    assert probe["fallback_columns"] and probe["no_parts_unchanged"]
