"""Production data becomes training data (issue 11): labelled predictions → a contract file →
a dataset version of origin production → a retrain's time-windowed training data → a
challenger and champion judged on the same recent holdout."""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
import urllib3

from functions.ingest.validation import validate_bytes
from functions.monitor.production import production_csv, production_key, udi_of
from functions.monitor.store import ProductionRow
from functions.tune.study import study_id_for
from localdev.datagen import generate, write_csv
from localdev.event_log import EventLog
from shared import layout
from shared.cloudevents_io import CloudEvent
from shared.contracts import get_contract
from tests.conftest import Stack, wait_until
from tests.fixtures_model import wait_served

if TYPE_CHECKING:
    import pandas as pd

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


# --------------------------------------------------------------------------- windows (no stack)


def _frame(times: list[int], labels: list[int], version: str = "p1") -> pd.DataFrame:
    import pandas as pd

    from functions.tune.window import VERSION_COLUMN

    return pd.DataFrame(
        {
            "udi": times,
            "event_timestamp": pd.to_datetime(times, unit="m"),
            "machine_failure": labels,
            VERSION_COLUMN: version,
        }
    )


def test_the_time_holdout_is_the_newest_slice() -> None:
    from functions.tune.window import split_by_time

    frame = _frame(list(range(1, 101)), [i % 2 for i in range(100)])
    older, newest = split_by_time(frame, 0.25)
    assert len(newest) == 25 and len(older) == 75
    assert newest["udi"].min() == 76 and older["udi"].max() == 75


def test_window_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from functions.tune.window import WindowConfig

    assert WindowConfig.from_env() == WindowConfig(20_000, 300, 0.25)
    monkeypatch.setenv("FAASPIPE_RETRAIN_PRODUCTION_ROWS", "1000")
    monkeypatch.setenv("FAASPIPE_RETRAIN_MIN_PRODUCTION_ROWS", "50")
    monkeypatch.setenv("FAASPIPE_RETRAIN_HOLDOUT_FRACTION", "0.3")
    assert WindowConfig.from_env() == WindowConfig(1000, 50, 0.3)


# --------------------------------------------------------------------------- the real stack

MODEL = "ai4i-learn-failure"  # tests/contracts/ai4i_learn.yaml: no other test uses this model
DATASET = "ai4i-learn"
HTTP = urllib3.PoolManager(maxsize=4, retries=False, timeout=urllib3.Timeout(connect=2, read=60))


def _wait_for(
    log: EventLog, match: Callable[[CloudEvent], bool], timeout: float, what: str, seen: list[CloudEvent]
) -> CloudEvent:
    """The first event ``match`` accepts, among those read already or the next ones (a reply
    may be read before its cause: the broker topic has several partitions)."""
    for event in seen:
        if match(event):
            return event
    for event in log.events(timeout):
        seen.append(event)
        if match(event):
            return event
    types = [e.get_type().removeprefix("dev.faaspipe.") for e in seen[-30:]]
    pytest.fail(f"no {what} within {timeout:.0f}s; last events: {types}")


def _is(event: CloudEvent, name: str, **data: object) -> bool:
    if event.get_type() != f"dev.faaspipe.{name}.v1":
        return False
    got = event.get_data()
    return all(got.get(k) == v for k, v in data.items())


def _instance(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": row["Type"],
        "air_temperature_k": row["Air temperature [K]"],
        "process_temperature_k": row["Process temperature [K]"],
        "rotational_speed_rpm": float(row["Rotational speed [rpm]"]),
        "torque_nm": row["Torque [Nm]"],
        "tool_wear_min": float(row["Tool wear [min]"]),
    }


def _stored(stack: Stack, request_prefix: str) -> int:
    """Predictions the monitor stored whose request id starts with the prefix (its store)."""
    from shared.sqldb import connect

    db = connect(stack.env.get("FAASPIPE_DATABASE_URL") or stack.state_dir / "monitor" / "monitor.db")
    try:
        rows, _ = db.execute(
            "SELECT COUNT(*) FROM monitor_predictions WHERE request_id LIKE ?", (request_prefix + "%",)
        )
        return int(rows[0][0])
    finally:
        db.close()


def _roc_auc(truth: list[int], scores: list[float]) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(truth, scores))


@pytest.mark.integration
@pytest.mark.timeout(1800)
def test_a_retrain_learns_the_changed_rule_from_labelled_production_data(stack: Stack) -> None:
    """v1 learns the reference data; a drifted stream is labelled by another rule (in the
    drifted region, failures come with *low* torque); the labelled predictions become a
    production dataset version, the retrain trains on reference + production with the newest
    production rows held out, and its v2 beats v1 on that same recent holdout: promoted."""
    seen: list[CloudEvent] = []
    log = EventLog(stack.config)
    tag = uuid.uuid4().hex[:8]
    s3 = stack.s3()

    # v1: the reference data of the dataset → a first study → champion
    reference = write_csv(Path(f"/tmp/learn-reference-{tag}.csv"), generate(5000, seed=21))
    body = reference.read_bytes()
    reference.unlink()
    key = f"{DATASET}/reference-{tag}.csv"
    s3.put_object(layout.LANDING, key, io.BytesIO(body), len(body), content_type="text/csv")
    ingested = _wait_for(
        log,
        lambda e: _is(e, "dataset.ingested", dataset=DATASET) and e.get_data()["source_uri"].endswith(key),
        300,
        "the reference's dataset.ingested",
        seen,
    )
    assert ingested.get_data()["origin"] == "file"
    reference_version = ingested.get_data()["version"]
    materialised = _wait_for(
        log, lambda e: _is(e, "features.materialised", version=reference_version), 300, "materialised", seen
    )
    first_study = study_id_for(
        DATASET, reference_version, str(materialised.get_source()), materialised.get_id()
    )
    v1_registered = _wait_for(
        log, lambda e: _is(e, "model.registered", study_id=first_study), 900, "v1 registered", seen
    )
    v1 = v1_registered.get_data()["version"]
    assert v1_registered.get_data()["dataset_versions"] == [reference_version]
    # the contract caps training sets at 3,000 rows: the 5,000-row reference is sampled
    v1_sample = v1_registered.get_data()["training_sample"]
    assert v1_sample["dataset_version"] == reference_version and v1_sample["sampled"] is True
    assert v1_sample["rows_in"] == 5000 and v1_sample["rows_out"] == 3000
    assert v1_sample["rule"] == {
        "max_rows": 3000,
        "stratify": "machine_failure",
        "min_per_class": 100,
        "seed": 7,
    }
    assert sum(c["rows_out"] for c in v1_sample["classes"].values()) == 3000
    assert v1_sample["classes"]["1"]["rows_out"] >= min(100, v1_sample["classes"]["1"]["rows_in"])
    decision = _wait_for(
        log,
        lambda e: (
            _is(e, "model.promoted", model_name=MODEL, version=v1)
            or _is(e, "model.rejected", model_name=MODEL, version=v1)
        ),
        300,
        "v1's promotion",
        seen,
    )
    assert decision.get_type() == "dev.faaspipe.model.promoted.v1", decision.get_data()
    wait_served(stack, v1, timeout=120, model_name=MODEL)

    # a drifted stream (more torque, worn tools) whose label rule changed in that region:
    # failures now come with the lowest torques. Fewer rows than a drift window (500), so the
    # labels, not a feature-drift window, start the retrain.
    drifted = generate(480, seed=22, start_udi=60_000, torque_shift=15.0, tool_wear_shift=80.0)
    instances = [_instance(r) for r in drifted]
    torque = np.array([i["torque_nm"] for i in instances], dtype=float)
    truth = [int(t < np.quantile(torque, 0.3)) for t in torque]
    prefix = f"learn-{tag}-"
    request_ids: list[str] = []
    v1_scores: list[float] = []
    batch = 40
    for start in range(0, len(instances), batch):
        request_id = f"{prefix}{start // batch}"
        resp = HTTP.request(
            "POST",
            stack.config.function_url("predict") + "predict",
            body=json.dumps({"model": MODEL, "instances": instances[start : start + batch]}).encode(),
            headers={
                "Content-Type": "application/json",
                "X-Request-Id": request_id,
                "Cache-Control": "no-cache",
            },
        )
        assert resp.status == 200, resp.data
        answer = json.loads(resp.data)
        assert answer["model_version"] == v1, answer
        v1_scores += [p["probability"] for p in answer["predictions"]]
        request_ids += [f"{request_id}-{i}" for i in range(len(answer["predictions"]))]
    v1_on_stream = _roc_auc(truth, v1_scores)
    wait_until(lambda: _stored(stack, prefix) == len(instances), 120, interval=0.5, what="the stream stored")

    labels = "request_id,machine_failure\n" + "".join(
        f"{r},{t}\n" for r, t in zip(request_ids, truth, strict=True)
    )
    labels_key = f"labels/learn-{tag}.csv"
    s3.put_object(
        layout.LANDING, labels_key, io.BytesIO(labels.encode()), len(labels), content_type="text/csv"
    )

    # the labelled predictions: a production version of the dataset, validated by ingest
    production = _wait_for(
        log,
        lambda e: (
            _is(e, "dataset.ingested", dataset=DATASET, origin="production")
            and f"/production/learn-{tag}-" in e.get_data()["source_uri"]
        ),
        300,
        "the production dataset.ingested",
        seen,
    )
    production_version = production.get_data()["version"]
    assert (
        production.get_data()["rows_written"] == len(instances)
        and production.get_data()["rows_rejected"] == 0
    )
    drift = _wait_for(
        log,
        lambda e: _is(e, "drift.detected", model_name=MODEL, model_version=v1, kind="performance"),
        300,
        "performance drift of v1",
        seen,
    )
    retrain = _wait_for(
        log,
        lambda e: _is(e, "retrain.requested", model_name=MODEL, drift_event_id=drift.get_id()),
        120,
        "retrain",
        seen,
    )
    digest = study_id_for("any", "any", str(retrain.get_source()), retrain.get_id()).rsplit("-", 1)[1]
    study = _wait_for(
        log,
        lambda e: _is(e, "tuning.study.completed") and e.get_data()["study_id"].rsplit("-", 1)[1] == digest,
        900,
        "the retrain's study",
        seen,
    )
    versions = [reference_version, production_version]
    assert study.get_data()["dataset_versions"] == versions
    assert study.get_data()["dataset_version"] == reference_version
    v2_registered = _wait_for(
        log,
        lambda e: _is(e, "model.registered", study_id=study.get_data()["study_id"]),
        600,
        "v2 registered",
        seen,
    )
    v2 = v2_registered.get_data()["version"]
    assert v2_registered.get_data()["dataset_versions"] == versions
    decision = _wait_for(
        log,
        lambda e: (
            _is(e, "model.promoted", model_name=MODEL, version=v2)
            or _is(e, "model.rejected", model_name=MODEL, version=v2)
        ),
        300,
        "v2's promotion",
        seen,
    )
    audit = json.loads(settings_read(s3, layout.MODELS, layout.audit_record(MODEL, v2)))
    comparison = audit["comparison"]
    print(
        f"v1 ROC-AUC on the drifted stream {v1_on_stream:.3f}; on the recent holdout ({comparison['rows']} rows):"
        f" v1 {comparison['champion_roc_auc']:.3f}, v2 {comparison['challenger_roc_auc']:.3f}"
    )
    assert decision.get_type() == "dev.faaspipe.model.promoted.v1", audit["reasons"]
    assert audit["same_holdout"] is True and comparison["champion_version"] == v1
    assert comparison["challenger_roc_auc"] > comparison["champion_roc_auc"]
    assert audit["challenger"]["dataset_versions"] == versions

    # the lineage names every version: the study state, meta.json and the MLflow tags
    state = json.loads(settings_read(s3, layout.MODELS, layout.study_state(study.get_data()["study_id"])))
    assert state["data"]["split"] == "time" and state["data"]["window"]["production_versions"] == [
        production_version
    ]
    assert state["data"]["rows_holdout"] == comparison["rows"] == 120  # the newest quarter of 480
    meta = json.loads(settings_read(s3, layout.MODELS, layout.serving_model(MODEL, v2, "meta.json")))
    assert meta["dataset_versions"] == versions and meta["split"] == "time"
    resp = HTTP.request(
        "GET",
        stack.config.url("mlflow") + "/api/2.0/mlflow/model-versions/get",
        fields={"name": MODEL, "version": v2},
    )
    tags = {t["key"]: t["value"] for t in json.loads(resp.data)["model_version"].get("tags", [])}
    assert tags["faaspipe.dataset_versions"] == ",".join(versions)

    # the retrain sampled the same reference by the same rule: the same rows, recorded everywhere
    sample = study.get_data()["training_sample"]
    assert sample == v1_sample == v2_registered.get_data()["training_sample"]
    assert state["data"]["training_sample"] == sample and meta["training_sample"] == sample
    assert state["data"]["window"]["rows_reference"] <= 3000  # the sample, less production's entities
    assert tags["faaspipe.training_sample_sha256"] == sample["positions_sha256"]
    assert json.loads(tags["faaspipe.training_sample"]) == sample
    log.close()


def settings_read(s3: Any, bucket: str, key: str) -> bytes:
    from shared import settings

    return settings.read_object(bucket, key, s3)
