"""Unit tests of the CloudEvent catalogue (events/)."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import pickle
import re
import timeit
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent
from jsonschema import Draft202012Validator

import events
from events import (
    EVENT_TYPES,
    EventData,
    EventDataError,
    UnknownEventType,
    is_known,
    new_event,
    validate_data,
    validate_event,
)
from events._fastpath import compile_check
from events.validation import _fast_check, _validator

SCHEMA_DIR = Path(events.__file__).parent / "schemas"
DRAFT = "https://json-schema.org/draft/2020-12/schema"
T0 = "2025-03-01T12:00:00Z"
T1 = "2025-03-02T12:00:00+01:00"
SHA = "3f" * 32
GATE: events.Gate = {
    "name": "min_roc_auc",
    "passed": True,
    "value": 0.91,
    "threshold": 0.8,
    "detail": "0.91 >= 0.8",
}

EXAMPLES: list[EventData] = [
    events.ObjectCreated(
        bucket="raw",
        key="credit/2025-03-01.csv",
        size=1024,
        etag='"9b2cf535f27731c974343645a3985328"',
        version="v-0001",
        content_type="text/csv",
        event_name="ObjectCreated:Put",
        origin="seaweedfs",
    ),
    events.DatasetIngested(
        dataset="credit",
        version="2025-03-01",
        contract="credit@1.2.0",
        source_uri="s3://raw/credit/2025-03-01.csv",
        offline_uri="s3://offline/credit/version=2025-03-01/part-0.parquet",
        checksum=SHA,
        rows_in=100,
        rows_written=97,
        rows_rejected=3,
        event_time_min=T0,
        event_time_max=T1,
    ),
    events.DatasetRejected(
        dataset=None,
        source_uri="s3://raw/unknown.csv",
        quarantine_uri="s3://quarantine/unknown.csv",
        report_uri="s3://quarantine/unknown.csv.report.json",
        rows_in=0,
        rows_rejected=0,
        reasons=[{"rule": "schema", "column": None, "count": 1, "message": "no header row"}],
    ),
    events.FeaturesMaterialised(
        feature_view="credit_features",
        dataset="credit",
        version="2025-03-01",
        start=T0,
        end=T1,
        rows=97,
        online_store="sqlite",
    ),
    events.TrialRequested(
        study_id="study-1",
        trial_number=0,
        params={"max_depth": 6, "eta": 0.1, "booster": "gbtree", "use_gpu": False},
        dataset_version="2025-03-01",
        feature_view="credit_features",
        seed=42,
    ),
    events.TrialFinished(
        study_id="study-1",
        trial_number=0,
        params={"max_depth": 6, "eta": 0.1},
        status="ok",
        score=0.91,
        score_std=0.01,
        best_iteration=120,
        run_id="abc123",
        duration_s=12.5,
    ),
    events.TrialProgress(
        study_id="study-1",
        trial_number=3,
        step=40,
        score=0.87,
        pruner="median",
        pruned=True,
    ),
    events.StudyCompleted(
        study_id="study-1",
        parent_run_id="parent123",
        dataset_version="2025-03-01",
        feature_view="credit_features",
        best_params={"max_depth": 6, "eta": 0.1},
        best_score=0.91,
        n_trials=20,
        stop_reason="early_stop",
    ),
    events.ModelRegistered(
        model_name="credit-default",
        version="3",
        run_id="run123",
        model_uri="models:/credit-default/3",
        study_id="study-1",
        dataset_checksum=SHA,
        feature_view="credit_features",
        metrics={"roc_auc": 0.91, "pr_auc": 0.55, "f1": 0.6, "threshold": 0.35, "brier": 0.08},
        dataset_versions=["2025-03-01"],
        training_sample={
            "dataset_version": "2025-03-01",
            "rule": {"max_rows": 500000, "stratify": "default", "min_per_class": 1000, "seed": 42},
            "sampled": True,
            "rows_in": 2000000,
            "rows_out": 500000,
            "classes": {
                "0": {"rows_in": 1900000, "rows_out": 475000},
                "1": {"rows_in": 100000, "rows_out": 25000},
            },
            "positions_sha256": SHA,
        },
    ),
    events.ModelPromoted(
        model_name="credit-default",
        version="3",
        previous_version="2",
        gates=[
            GATE,
            {"name": "beats_champion", "passed": True, "value": None, "threshold": "v2", "detail": ""},
        ],
        decided_by="promote",
        decided_at=T0,
    ),
    events.ModelRejected(
        model_name="credit-default",
        version="4",
        champion_version="3",
        gates=[{**GATE, "passed": False, "value": 0.7}],
        reasons=["roc_auc 0.7 < 0.8"],
        decided_by="promote",
        decided_at=T0,
    ),
    events.LabelRecorded(labels=[{"request_id": "req-1", "truth": 1}, {"request_id": "req-2", "truth": 0}]),
    events.PredictionLogged(
        request_id="req-1",
        model_name="credit-default",
        model_version="3",
        route="v2",
        entity_id=1234,
        inputs={"income": 52000.0, "age": 41, "segment": "retail"},
        output={"probability": 0.12, "label": 0},
        latency_ms=3.2,
        rollout={"id": "r-7", "variant": "candidate", "candidate_version": "4", "candidate_error": False},
    ),
    events.DriftDetected(
        kind="feature",
        detector="ks",
        model_name="credit-default",
        model_version="3",
        p_values={"income": 0.001, "age": 0.4},
        threshold=0.05,
        drifted_features=["income"],
        window={"start": T0, "end": T1, "size": 500},
    ),
    events.RetrainRequested(
        model_name="credit-default",
        reason="feature drift in income",
        requested_by="retrain-controller",
        drift_event_id="6f0e6c1e-5d0b-4a59-9d64-3a3c7b1f2e10",
    ),
    events.RolloutStarted(
        model_name="credit-default",
        rollout_id="credit-default-4-1733100000",
        mode="canary",
        share=0.05,
        candidate_version="4",
        champion_version="3",
        window_s=300.0,
        min_requests=200,
        gates=[{"name": "roc_auc", "passed": True, "value": 0.91, "threshold": 0.9, "detail": "ok"}],
        started_by="promote@promote-0/1",
        started_at="2025-03-01T12:00:00Z",
    ),
    events.RolloutDecided(
        model_name="credit-default",
        rollout_id="credit-default-4-1733100000",
        candidate_version="4",
        champion_version="3",
        decision="rollback",
        checks=[
            {"name": "error_rate", "passed": False, "value": 0.2, "threshold": 0.01, "detail": "20 of 100"}
        ],
        evidence={"candidate": {"requests": 100, "errors": 20}, "champion": {"requests": 1900, "errors": 0}},
        decided_by="cli:ops@host",
        decided_at="2025-03-01T12:10:00Z",
    ),
    events.SamplePing(message="hello", fail_times=2),
    events.SensorReading(
        dataset="ai4i",
        reading={"udi": 7, "type": "L", "air_temperature_k": 298.1, "torque_nm": 42.8},
    ),
    events.SensorReadingRejected(
        dataset="ai4i",
        reading_id="r-1",
        reading_source="/sensors/line-1",
        entity=None,
        reasons=[
            {
                "field": "torque_nm",
                "rule": "max",
                "message": "torque_nm: 400 is above the contract maximum 200",
            }
        ],
    ),
    events.SamplePong(message="hello", handled_by="sample-0", attempt=3),
    events.BatchScored(
        dataset="credit",
        contract="credit@1.2.0",
        source_uri="s3://landing/credit/score/2025-03-01.csv",
        object_version="9b2cf535-1741000000",
        request_id="6f0e6c1e-5d0b-4a59-9d64-3a3c7b1f2e10",
        model_name="credit-default",
        model_version="3",
        output_uri="s3://predictions/credit/2025-03-01.csv/ab12cd34ef56ab78/predictions.parquet",
        rejected_uri="s3://predictions/credit/2025-03-01.csv/ab12cd34ef56ab78/rejected.csv",
        report_uri="s3://predictions/credit/2025-03-01.csv/ab12cd34ef56ab78/report.json",
        rows_in=100,
        rows_scored=97,
        rows_rejected=3,
        chunks=1,
        duration_s=0.4,
    ),
    events.BatchRejected(
        dataset="credit",
        source_uri="s3://landing/credit/score/2025-03-02.csv",
        object_version="v-2",
        model_name="credit-default",
        model_version=None,
        rule="no_champion",
        column=None,
        message="registered model 'credit-default' has no 'champion' alias",
    ),
]
BY_TYPE = {example.TYPE: example for example in EXAMPLES}
TYPES = sorted(EVENT_TYPES)


def _data(event_type: str) -> dict[str, Any]:
    return BY_TYPE[event_type].to_data()


def _walk_schemas(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, schema
    for name, sub in schema.get("properties", {}).items():
        yield from _walk_schemas(sub, f"{path}.{name}")
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            yield from _walk_schemas(schema[key], f"{path}.{key}")


# --- the catalogue and its schema files ------------------------------------------------------------


def test_catalogue_has_every_type_and_an_example_per_type() -> None:
    assert len(EVENT_TYPES) == 23
    assert set(BY_TYPE) == set(EVENT_TYPES)
    assert {p.name.removesuffix(".json") for p in SCHEMA_DIR.glob("*.json")} == set(EVENT_TYPES)


@pytest.mark.parametrize("event_type", TYPES)
def test_type_names_are_reverse_dns_and_versioned(event_type: str) -> None:
    assert re.fullmatch(r"dev\.faaspipe(\.[a-z]+)+\.v[1-9][0-9]*", event_type)
    assert is_known(event_type)
    spec = EVENT_TYPES[event_type]
    assert spec.type == event_type
    assert spec.description
    assert event_type == spec.data_class.TYPE


@pytest.mark.parametrize("event_type", TYPES)
def test_schema_file_is_valid_draft_2020_12_with_matching_id(event_type: str) -> None:
    schema = json.loads((SCHEMA_DIR / f"{event_type}.json").read_text())
    Draft202012Validator.check_schema(schema)
    assert schema == EVENT_TYPES[event_type].schema
    assert schema["$schema"] == DRAFT
    assert schema["$id"] == f"https://faaspipe.dev/events/{event_type}.json" == events.schema_uri(event_type)
    assert schema["title"] == event_type
    assert schema["type"] == "object"


@pytest.mark.parametrize("event_type", TYPES)
def test_schema_objects_are_closed_and_snake_case(event_type: str) -> None:
    for path, node in _walk_schemas(EVENT_TYPES[event_type].schema):
        if "properties" in node:
            assert node.get("additionalProperties") is False, path
            assert set(node.get("required", [])) <= set(node["properties"]), path
            for name in node["properties"]:
                assert re.fullmatch(r"[a-z][a-z0-9]*(_[a-z0-9]+)*", name), f"{path}.{name}"


@pytest.mark.parametrize("event_type", TYPES)
def test_dataclass_matches_schema(event_type: str) -> None:
    spec = EVENT_TYPES[event_type]
    cls = spec.data_class
    assert dataclasses.is_dataclass(cls) and issubclass(cls, EventData)
    assert cls.__dataclass_params__.frozen  # type: ignore[attr-defined]
    fields = dataclasses.fields(cls)
    properties = spec.schema["properties"]
    assert [f.name for f in fields] == list(properties)
    assert {
        f.name
        for f in fields
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    } == set(spec.schema["required"])
    for f in fields:
        if f.default is not dataclasses.MISSING:
            assert properties[f.name].get("default") == f.default, f.name


def test_all_schemas_compile_to_the_fast_path() -> None:
    for spec in EVENT_TYPES.values():
        assert compile_check(spec.schema, {}) is not None, spec.type


# --- round trips ------------------------------------------------------------------------------------


@pytest.mark.parametrize("event_type", TYPES)
def test_example_round_trips(event_type: str) -> None:
    example = BY_TYPE[event_type]
    example.validate()
    event = example.to_event(source="/tests", subject="s-1", id="id-1", extensions={"partitionkey": "k"})
    assert event.get_type() == event_type
    assert event.get_source() == "/tests"
    assert event.get_subject() == "s-1"
    assert event.get_id() == "id-1"
    assert event.get_extension("partitionkey") == "k"
    assert event.get_datacontenttype() == "application/json"
    assert event.get_dataschema() == EVENT_TYPES[event_type].schema["$id"]
    validate_event(event)
    assert type(example).from_event(event) == example
    # through the structured JSON wire format (what goes over Kafka/HTTP)
    wire = JSONFormat().write(event)
    received = JSONFormat().read(None, wire)
    assert type(example).from_event(received) == example
    assert type(example).from_data(json.loads(wire)["data"]) == example


def test_optional_fields_take_defaults() -> None:
    ping = events.SamplePing.from_data({"message": "hi"})
    assert ping.fail_times == 0
    assert ping.to_data() == {"message": "hi", "fail_times": 0}
    promoted = events.ModelPromoted(model_name="m", version="1", gates=[], decided_by="me", decided_at=T0)
    assert (promoted.alias, promoted.previous_version) == ("champion", None)
    validate_data(promoted.TYPE, promoted.to_data())
    validate_data(
        "dev.faaspipe.object.created.v1",
        {k: v for k, v in _data("dev.faaspipe.object.created.v1").items() if k != "content_type"},
    )


def test_to_data_is_a_copy() -> None:
    example = BY_TYPE["dev.faaspipe.model.promoted.v1"]
    data = example.to_data()
    data["gates"][0]["name"] = "changed"
    assert example.gates[0]["name"] == "min_roc_auc"  # type: ignore[attr-defined]


def test_new_event_defaults() -> None:
    before = datetime.now(UTC)
    event = new_event("dev.faaspipe.sample.ping.v1", {"message": "x"}, source="/tests")
    assert event.get_id() and event.get_subject() is None
    assert event.get_time() is not None and event.get_time() >= before  # type: ignore[operator]
    assert event.get_dataschema() == "https://faaspipe.dev/events/dev.faaspipe.sample.ping.v1.json"


def test_from_event_rejects_another_type() -> None:
    event = events.SamplePing(message="x").to_event(source="/tests")
    with pytest.raises(ValueError, match="expected a dev.faaspipe.sample.pong.v1 event"):
        events.SamplePong.from_event(event)


def test_validate_event_decodes_json_text_and_rejects_non_objects() -> None:
    ok = CloudEvent({"type": "dev.faaspipe.sample.ping.v1", "source": "/t"}, b'{"message": "hi"}')
    validate_event(ok)
    assert events.SamplePing.from_event(ok) == events.SamplePing(message="hi")
    for data in (None, b"[1, 2]", "not json", b"\xff"):
        event = CloudEvent({"type": "dev.faaspipe.sample.ping.v1", "source": "/t"}, data)
        with pytest.raises(EventDataError) as err:
            validate_event(event)
        assert err.value.field == ""
    bad = CloudEvent({"type": "dev.faaspipe.sample.ping.v1", "source": "/t"}, {"message": 5})
    with pytest.raises(EventDataError, match=r"data\.message"):
        validate_event(bad)


def test_rfc3339_helper() -> None:
    assert events.rfc3339(datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)) == "2025-01-02T03:04:05Z"
    assert (
        events.rfc3339(datetime(2025, 1, 2, tzinfo=timezone(timedelta(hours=2))))
        == "2025-01-02T00:00:00+02:00"
    )
    validate_data(
        "dev.faaspipe.model.rejected.v1",
        {**_data("dev.faaspipe.model.rejected.v1"), "decided_at": events.rfc3339()},
    )
    with pytest.raises(ValueError):
        events.rfc3339(datetime(2025, 1, 2))


# --- errors -----------------------------------------------------------------------------------------


def _mutated(event_type: str, path: str, value: Any) -> dict[str, Any]:
    data = _data(event_type)
    *parents, last = path.split(".")
    node: Any = data
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if value is _DELETE:
        del node[last]
    elif isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return data


_DELETE = object()

BAD: list[tuple[str, str, Any, str, str]] = [
    # (type, path to change, new value, expected field, expected reason pattern)
    ("dev.faaspipe.dataset.ingested.v1", "rows_in", -1, "rows_in", "-1 is less than the minimum of 0"),
    ("dev.faaspipe.dataset.ingested.v1", "rows_in", "10", "rows_in", "is not of type 'integer'"),
    ("dev.faaspipe.dataset.ingested.v1", "rows_written", True, "rows_written", "is not of type 'integer'"),
    ("dev.faaspipe.dataset.ingested.v1", "checksum", "abc", "checksum", "does not match"),
    ("dev.faaspipe.dataset.ingested.v1", "event_time_min", "yesterday", "event_time_min", "date-time"),
    (
        "dev.faaspipe.dataset.ingested.v1",
        "event_time_min",
        "2025-03-01T12:00:00",
        "event_time_min",
        "date-time",
    ),
    (
        "dev.faaspipe.dataset.ingested.v1",
        "event_time_max",
        "2025-13-01T12:00:00Z",
        "event_time_max",
        "date-time",
    ),
    ("dev.faaspipe.dataset.ingested.v1", "contract", "credit", "contract", "does not match"),
    ("dev.faaspipe.batch.scored.v1", "rows_rejected", -1, "rows_rejected", "minimum"),
    ("dev.faaspipe.batch.scored.v1", "output_uri", "no scheme", "output_uri", "does not match"),
    ("dev.faaspipe.batch.rejected.v1", "rule", "tired", "rule", "is not one of"),
    ("dev.faaspipe.rollout.decided.v1", "decision", "maybe", "decision", "is not one of"),
    ("dev.faaspipe.rollout.started.v1", "share", 1.5, "share", "maximum"),
    ("dev.faaspipe.object.created.v1", "bucket", _DELETE, "bucket", "required property is missing"),
    ("dev.faaspipe.object.created.v1", "size", -5, "size", "minimum"),
    ("dev.faaspipe.object.created.v1", "origin", "gcs", "origin", "is not one of"),
    ("dev.faaspipe.object.created.v1", "event_name", "ObjectRemoved:Delete", "event_name", "does not match"),
    ("dev.faaspipe.dataset.rejected.v1", "reasons", [], "reasons", "should be non-empty"),
    ("dev.faaspipe.dataset.rejected.v1", "reasons.0.count", -1, "reasons.0.count", "minimum"),
    ("dev.faaspipe.dataset.rejected.v1", "reasons.0.column", 3, "reasons.0.column", "is not of type"),
    (
        "dev.faaspipe.dataset.rejected.v1",
        "reasons.0.rule",
        _DELETE,
        "reasons.0.rule",
        "required property is missing",
    ),
    ("dev.faaspipe.features.materialised.v1", "online_store", "dynamodb", "online_store", "is not one of"),
    ("dev.faaspipe.tuning.trial.requested.v1", "params.max_depth", [6], "params.max_depth", "is not of type"),
    ("dev.faaspipe.tuning.trial.requested.v1", "seed", -1, "seed", "minimum"),
    ("dev.faaspipe.tuning.trial.finished.v1", "score", math.nan, "score", "is not of type"),
    ("dev.faaspipe.tuning.trial.finished.v1", "duration_s", math.inf, "duration_s", "is not of type"),
    ("dev.faaspipe.tuning.trial.finished.v1", "status", "running", "status", "is not one of"),
    ("dev.faaspipe.tuning.study.completed.v1", "stop_reason", "tired", "stop_reason", "is not one of"),
    ("dev.faaspipe.tuning.study.completed.v1", "n_trials", 0, "n_trials", "minimum of 1"),
    ("dev.faaspipe.model.registered.v1", "metrics.roc_auc", 1.5, "metrics.roc_auc", "maximum of 1"),
    ("dev.faaspipe.model.registered.v1", "metrics.f1", _DELETE, "metrics.f1", "required property is missing"),
    ("dev.faaspipe.model.registered.v1", "metrics.accuracy", 0.9, "metrics.accuracy", "unexpected property"),
    ("dev.faaspipe.model.registered.v1", "model_uri", "no scheme", "model_uri", "does not match"),
    ("dev.faaspipe.model.promoted.v1", "gates.0.name", 7, "gates.0.name", "is not of type 'string'"),
    ("dev.faaspipe.model.promoted.v1", "gates.1.passed", "yes", "gates.1.passed", "is not of type 'boolean'"),
    ("dev.faaspipe.model.promoted.v1", "alias", "Champion!", "alias", "does not match"),
    ("dev.faaspipe.model.rejected.v1", "reasons", [], "reasons", "should be non-empty"),
    ("dev.faaspipe.label.recorded.v1", "labels", [], "labels", "should be non-empty"),
    ("dev.faaspipe.label.recorded.v1", "labels.0.truth", "yes", "labels.0.truth", "is not of type"),
    ("dev.faaspipe.prediction.logged.v1", "output.probability", 1.2, "output.probability", "maximum"),
    ("dev.faaspipe.prediction.logged.v1", "output.label", 2, "output.label", "is not one of"),
    ("dev.faaspipe.prediction.logged.v1", "output.label", True, "output.label", "is not one of"),
    ("dev.faaspipe.prediction.logged.v1", "inputs.age", None, "inputs.age", "is not of type"),
    ("dev.faaspipe.prediction.logged.v1", "latency_ms", -0.1, "latency_ms", "minimum"),
    ("dev.faaspipe.prediction.logged.v1", "entity_id", 1.5, "entity_id", "is not of type"),
    (
        "dev.faaspipe.drift.detected.v1",
        "p_values.torque",
        "low",
        "p_values.torque",
        "is not of type 'number'",
    ),
    ("dev.faaspipe.drift.detected.v1", "window.size", 0, "window.size", "minimum of 1"),
    ("dev.faaspipe.drift.detected.v1", "window.end", _DELETE, "window.end", "required property is missing"),
    ("dev.faaspipe.drift.detected.v1", "drifted_features", ["a", "a"], "drifted_features", "non-unique"),
    (
        "dev.faaspipe.drift.detected.v1",
        "metric",
        {"name": "roc_auc", "value": 0.7},
        "metric.reference",
        "required property is missing",
    ),
    ("dev.faaspipe.retrain.requested.v1", "reason", "", "reason", "should be non-empty"),
    ("dev.faaspipe.sample.ping.v1", "message", "x" * 1001, "message", "is too long"),
    ("dev.faaspipe.sample.ping.v1", "fail_times", -1, "fail_times", "minimum"),
    ("dev.faaspipe.sample.ping.v1", "surprise", 1, "surprise", "unexpected property"),
    ("dev.faaspipe.sample.pong.v1", "attempt", 0, "attempt", "minimum of 1"),
]


@pytest.mark.parametrize(
    ("event_type", "path", "value", "field", "reason"),
    BAD,
    ids=[f"{t.split('.', 2)[2]}:{p}={v!r:.20}" for t, p, v, *_ in BAD],
)
def test_bad_data_raises_naming_the_field(
    event_type: str, path: str, value: Any, field: str, reason: str
) -> None:
    data = _mutated(event_type, path, value)
    with pytest.raises(EventDataError) as err:
        validate_data(event_type, data)
    assert (err.value.event_type, err.value.field) == (event_type, field)
    assert re.search(reason, err.value.reason), err.value.reason
    assert str(err.value) == f"{event_type}: data.{field}: {err.value.reason}"
    # the same error on the emitting and on the receiving side
    with pytest.raises(EventDataError) as emit:
        new_event(event_type, data, source="/tests")
    assert emit.value.field == field
    received = CloudEvent({"type": event_type, "source": "/tests"}, data)
    with pytest.raises(EventDataError) as receive:
        EVENT_TYPES[event_type].data_class.from_event(received)
    assert receive.value.field == field


def test_error_message_format() -> None:
    data = {**_data("dev.faaspipe.dataset.ingested.v1"), "rows_in": -1}
    with pytest.raises(EventDataError) as err:
        validate_data("dev.faaspipe.dataset.ingested.v1", data)
    assert (
        str(err.value) == "dev.faaspipe.dataset.ingested.v1: data.rows_in: -1 is less than the minimum of 0"
    )
    missing = _mutated("dev.faaspipe.object.created.v1", "bucket", _DELETE)
    with pytest.raises(
        EventDataError,
        match=r"^dev\.faaspipe\.object\.created\.v1: data\.bucket: required property is missing$",
    ):
        validate_data("dev.faaspipe.object.created.v1", missing)
    restored = pickle.loads(pickle.dumps(err.value))
    assert (restored.event_type, restored.field, restored.reason) == (
        err.value.event_type,
        err.value.field,
        err.value.reason,
    )


def test_whole_data_errors_have_an_empty_field() -> None:
    for data in ([1], "x", None, 3):
        with pytest.raises(EventDataError) as err:
            validate_data("dev.faaspipe.sample.ping.v1", data)
        assert err.value.field == ""
        assert str(err.value).startswith("dev.faaspipe.sample.ping.v1: data: ")


def test_several_errors_pick_one_deterministically() -> None:
    data = {"size": -1, "zzz": 1, "aaa": 2, "origin": "ftp", "bucket": 5}
    fields = set()
    for _ in range(5):
        shuffled = dict(sorted(data.items(), key=lambda kv: hash((kv[0], _))))
        with pytest.raises(EventDataError) as err:
            validate_data("dev.faaspipe.object.created.v1", shuffled)
        fields.add((err.value.field, err.value.reason))
    assert len(fields) == 1
    with pytest.raises(EventDataError) as err:
        validate_data("dev.faaspipe.sample.ping.v1", {"message": "x", "zzz": 1, "aaa": 2})
    assert (err.value.field, err.value.reason) == ("aaa", "unexpected property (also: zzz)")


def test_unknown_type() -> None:
    with pytest.raises(
        UnknownEventType,
        match=r"unknown event type 'dev\.faaspipe\.dataset\.ingest\.v1'; did you mean 'dev\.faaspipe\.dataset\.ingested\.v1'\?",
    ) as err:
        validate_data("dev.faaspipe.dataset.ingest.v1", {})
    assert err.value.suggestion == "dev.faaspipe.dataset.ingested.v1"
    with pytest.raises(UnknownEventType) as err:
        new_event("com.example.nothing", {}, source="/tests")
    assert err.value.suggestion is None and str(err.value) == "unknown event type 'com.example.nothing'"
    with pytest.raises(UnknownEventType):
        validate_event(CloudEvent({"type": "dev.faaspipe.sample.ping.v2", "source": "/t"}, {"message": "x"}))
    assert not is_known("dev.faaspipe.sample.ping.v2")
    assert isinstance(err.value, ValueError)


def test_catalogue_is_read_only() -> None:
    with pytest.raises(TypeError):
        EVENT_TYPES["x"] = EVENT_TYPES["dev.faaspipe.sample.ping.v1"]  # type: ignore[index]


# --- the fast path never accepts what jsonschema rejects ------------------------------------------

ODD_VALUES: list[Any] = [
    None,
    True,
    False,
    0,
    -1,
    1.0,
    1.5,
    math.nan,
    math.inf,
    "",
    "x",
    "x" * 1001,
    T0,
    "2025-02-30T00:00:00Z",
    [],
    ["a"],
    ["a", "a"],
    {},
    {"a": 1},
]


def _variants(value: Any) -> Iterator[Any]:
    """The value with each leaf/member replaced by odd values, members deleted, or an extra key."""
    yield from ODD_VALUES
    if isinstance(value, dict):
        yield {**value, "extra": 1}
        for key in value:
            yield {k: v for k, v in value.items() if k != key}
            for variant in _variants(value[key]):
                yield {**value, key: variant}
    elif isinstance(value, list) and value:
        yield value + value
        for variant in _variants(value[0]):
            yield [variant, *value[1:]]


@pytest.mark.parametrize("event_type", TYPES)
def test_fast_path_is_sound(event_type: str) -> None:
    fast, full = _fast_check(event_type), _validator(event_type)
    data = _data(event_type)
    assert fast(data), "valid examples must take the fast path"
    checked = 0
    for variant in _variants(data):
        if fast(variant):
            assert full.is_valid(variant), variant
        checked += 1
    assert checked > 50


def test_fast_path_defers_exotic_python_values() -> None:
    import enum
    from decimal import Decimal

    class Size(enum.IntEnum):
        NEG = -1

    base = _data("dev.faaspipe.object.created.v1")
    fast = _fast_check("dev.faaspipe.object.created.v1")
    assert not fast({**base, "size": Size.NEG})
    assert not fast({**base, "size": Decimal(5)})
    assert not fast({**base, "size": 5.0})  # valid per jsonschema, decided by the slow path
    validate_data("dev.faaspipe.object.created.v1", {**base, "size": 5.0})
    with pytest.raises(EventDataError, match="size"):
        validate_data("dev.faaspipe.object.created.v1", {**base, "size": Size.NEG})


def test_validation_is_fast() -> None:
    event_type = "dev.faaspipe.model.promoted.v1"
    data = copy.deepcopy(_data(event_type))
    validate_data(event_type, data)
    best = min(timeit.repeat(lambda: validate_data(event_type, data), number=200, repeat=5)) / 200
    assert best < 100e-6, f"validate_data took {best * 1e6:.1f} µs"


def test_valid_data_does_not_import_jsonschema() -> None:
    """jsonschema costs ~90 ms of start-up: functions that only see valid data never load it."""
    import subprocess
    import sys

    code = (
        "import sys, events\n"
        "events.SamplePing(message='hi').to_event(source='/t')\n"
        "events.validate_data('dev.faaspipe.drift.detected.v1', "
        + repr(_data("dev.faaspipe.drift.detected.v1"))
        + ")\n"
        "assert 'jsonschema' not in sys.modules, 'jsonschema imported'\n"
    )
    root = Path(events.__file__).parent.parent
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root, timeout=60)
