"""The whole ML chain on the real stack: file drop → champion serving → drift → retrain → decision.

Observed only through what a user sees: the event log, the predict function's routes, the
object store and the MLflow registry.
"""

from __future__ import annotations

import io
import json
import time
import uuid
from collections.abc import Callable

import pytest
import urllib3

from events import is_known
from localdev.datagen import generate, reference_dataset_path, write_csv
from localdev.event_log import EventLog
from shared import layout
from shared.cloudevents_io import CloudEvent
from tests.conftest import Stack

pytestmark = pytest.mark.integration
HTTP = urllib3.PoolManager(maxsize=8, retries=False, timeout=urllib3.Timeout(connect=2, read=60))
MODEL = "ai4i-machine-failure"


def wait_for_event(
    log: EventLog, match: Callable[[CloudEvent], bool], timeout: float, what: str, seen: list[CloudEvent]
) -> CloudEvent:
    for event in log.events(timeout):
        seen.append(event)
        if match(event):
            return event
    types = [e.get_type().removeprefix("dev.faaspipe.") for e in seen[-30:]]
    pytest.fail(f"no {what} within {timeout:.0f}s; last events: {types}")


def dataset_bytes(tmp_path) -> bytes:  # type: ignore[no-untyped-def]
    real = reference_dataset_path()
    if real is not None:
        return real.read_bytes()
    return write_csv(tmp_path / "ai4i.csv", generate(10_000, seed=7)).read_bytes()


def post_json(url: str, doc: object) -> urllib3.BaseHTTPResponse:
    return HTTP.request(
        "POST", url, body=json.dumps(doc).encode(), headers={"Content-Type": "application/json"}
    )


def test_file_drop_to_champion_then_drift_triggers_a_retrain(stack: Stack, tmp_path) -> None:  # type: ignore[no-untyped-def]
    seen: list[CloudEvent] = []
    log = EventLog(stack.config)
    key = f"ai4i/e2e-{uuid.uuid4().hex[:8]}.csv"
    body = dataset_bytes(tmp_path)
    stack.s3().put_object("landing", key, io.BytesIO(body), len(body), content_type="text/csv")

    ingested = wait_for_event(
        log,
        lambda e: (
            e.get_type() == "dev.faaspipe.dataset.ingested.v1" and e.get_data()["source_uri"].endswith(key)
        ),
        300,
        "dataset.ingested",
        seen,
    )
    data = ingested.get_data()
    assert data["rows_in"] == data["rows_written"] + data["rows_rejected"] == body.count(b"\n") - 1
    version = data["version"]
    wait_for_event(
        log,
        lambda e: (
            e.get_type() == "dev.faaspipe.features.materialised.v1" and e.get_data()["version"] == version
        ),
        300,
        "features.materialised",
        seen,
    )
    study = wait_for_event(
        log,
        lambda e: (
            e.get_type() == "dev.faaspipe.tuning.study.completed.v1"
            and e.get_data()["dataset_version"] == version
        ),
        1200,
        "study.completed",
        seen,
    )
    trials = [
        e
        for e in seen
        if e.get_type() == "dev.faaspipe.tuning.trial.finished.v1"
        and e.get_data()["study_id"] == study.get_data()["study_id"]
    ]
    # every counted trial finished (one still in flight when the study stopped may finish too)
    assert len({t.get_data()["trial_number"] for t in trials}) >= study.get_data()["n_trials"]
    registered = wait_for_event(
        log,
        lambda e: (
            e.get_type() == "dev.faaspipe.model.registered.v1"
            and e.get_data()["study_id"] == study.get_data()["study_id"]
        ),
        600,
        "model.registered",
        seen,
    )
    metrics = registered.get_data()["metrics"]
    print(f"holdout ROC-AUC {metrics['roc_auc']:.4f}, PR-AUC {metrics['pr_auc']:.4f}, F1 {metrics['f1']:.3f}")
    assert metrics["roc_auc"] > 0.9
    reg_version = registered.get_data()["version"]
    decision = wait_for_event(
        log,
        lambda e: (
            e.get_type() in ("dev.faaspipe.model.promoted.v1", "dev.faaspipe.model.rejected.v1")
            and e.get_data()["version"] == reg_version
        ),
        600,
        "a promotion decision",
        seen,
    )
    audit = json.loads(stack.s3().get_object("models", layout.audit_record(MODEL, reg_version)).read())
    assert audit  # who/what/why/when kept with the version

    # a champion serves predictions through both routes
    predict = stack.config.function_url("predict")
    promoted = decision.get_type() == "dev.faaspipe.model.promoted.v1"

    def serving() -> bool:  # hot swap is asynchronous: wait for the promoted version (or any champion)
        resp = HTTP.request("GET", f"{predict}v2/models/{MODEL}")
        if resp.status != 200:
            return False
        return not promoted or json.loads(resp.data).get("versions", [None])[0] == str(reg_version)

    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and not serving():
        time.sleep(1)
    raw = {
        "type": "L",
        "air_temperature_k": 298.9,
        "process_temperature_k": 309.1,
        "rotational_speed_rpm": 1410.0,
        "torque_nm": 65.7,
        "tool_wear_min": 191.0,
    }
    resp = post_json(f"{predict}predict", {"instances": [raw]})
    assert resp.status == 200, resp.data
    answer = json.loads(resp.data)
    assert 0.0 <= answer["predictions"][0]["probability"] <= 1.0
    if promoted:
        assert answer["model_version"] == str(reg_version)
    meta = json.loads(HTTP.request("GET", f"{predict}v2/models/{MODEL}").data)
    names = [i["name"] for i in meta["inputs"]]
    v2 = {
        "inputs": [
            {"name": n, "shape": [1], "datatype": "BYTES" if n == "type" else "FP32", "data": [raw[n]]}
            for n in names
        ]
    }
    resp = post_json(f"{predict}v2/models/{MODEL}/infer", v2)
    assert resp.status == 200, resp.data
    assert {o["name"] for o in json.loads(resp.data)["outputs"]} >= {"probability"}
    assert (
        post_json(f"{predict}predict", {"instances": [{"type": "L"}]}).status == 400
    )  # names what is missing

    # a drifted stream (more torque, worn tools) is detected and starts one retrain
    drifted = generate(700, seed=99, start_udi=50_000, torque_shift=15.0, tool_wear_shift=80.0)
    for row in drifted:
        instance = {
            "type": row["Type"],
            "air_temperature_k": row["Air temperature [K]"],
            "process_temperature_k": row["Process temperature [K]"],
            "rotational_speed_rpm": float(row["Rotational speed [rpm]"]),
            "torque_nm": row["Torque [Nm]"],
            "tool_wear_min": float(row["Tool wear [min]"]),
        }
        assert post_json(f"{predict}predict", {"instances": [instance]}).status == 200
    drift = wait_for_event(
        log, lambda e: e.get_type() == "dev.faaspipe.drift.detected.v1", 300, "drift.detected", seen
    )
    assert {"torque_nm", "tool_wear_min"} & set(drift.get_data()["drifted_features"])
    retrain = wait_for_event(
        log, lambda e: e.get_type() == "dev.faaspipe.retrain.requested.v1", 120, "retrain.requested", seen
    )
    assert retrain.get_data()["model_name"] == MODEL
    retrain_study = wait_for_event(
        log,
        lambda e: (
            e.get_type() == "dev.faaspipe.tuning.study.completed.v1"
            and e.get_data()["study_id"] != study.get_data()["study_id"]
        ),
        1200,
        "the retrain's study",
        seen,
    )
    retrained = wait_for_event(
        log,
        lambda e: (
            e.get_type() == "dev.faaspipe.model.registered.v1"
            and e.get_data()["study_id"] == retrain_study.get_data()["study_id"]
        ),
        600,
        "the retrained model",
        seen,
    )
    wait_for_event(
        log,
        lambda e: (
            e.get_type() in ("dev.faaspipe.model.promoted.v1", "dev.faaspipe.model.rejected.v1")
            and e.get_data()["version"] == retrained.get_data()["version"]
        ),
        600,
        "the retrained model's promotion decision",
        seen,
    )
    retrains = [e for e in seen if e.get_type() == "dev.faaspipe.retrain.requested.v1"]
    assert len(retrains) == 1, "a burst of drift started more than one retrain"
    assert all(is_known(e.get_type()) for e in seen)
    log.close()


def test_a_file_breaking_the_contract_is_quarantined_with_its_report(stack: Stack, tmp_path) -> None:  # type: ignore[no-untyped-def]
    seen: list[CloudEvent] = []
    log = EventLog(stack.config)
    rows = generate(200, seed=3)
    for row in rows[:40]:
        row["Torque [Nm]"] = -5.0  # 20 % out of range: far over the contract's 1 % tolerance
    key = f"ai4i/broken-{uuid.uuid4().hex[:8]}.csv"
    body = write_csv(tmp_path / "broken.csv", rows).read_bytes()
    stack.s3().put_object("landing", key, io.BytesIO(body), len(body), content_type="text/csv")
    rejected = wait_for_event(
        log,
        lambda e: (
            e.get_type() == "dev.faaspipe.dataset.rejected.v1" and e.get_data()["source_uri"].endswith(key)
        ),
        300,
        "dataset.rejected",
        seen,
    )
    data = rejected.get_data()
    assert any(r["column"] == "torque_nm" for r in data["reasons"])
    file_key, report_key = layout.quarantined(key)
    report = json.loads(stack.s3().get_object("quarantine", report_key).read())
    assert report
    assert stack.s3().stat_object("quarantine", file_key).size == len(body)
    assert not [
        e
        for e in seen
        if e.get_type() == "dev.faaspipe.dataset.ingested.v1" and e.get_data()["source_uri"].endswith(key)
    ]
    log.close()
