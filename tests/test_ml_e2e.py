"""The whole ML chain on the real stack: file drop → champion serving → drift → retrain → decision.

Observed only through what a user sees: the event log, the predict function's routes, the
object store and the MLflow registry.
"""

from __future__ import annotations

import io
import json
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
import urllib3

from events import is_known
from functions.tune.study import study_id_for
from localdev.datagen import generate, reference_dataset_path, write_csv
from localdev.event_log import EventLog
from shared import layout, tracing
from shared.cloudevents_io import CloudEvent
from tests.conftest import Stack, wait_until
from tests.fixtures_model import served_version

pytestmark = pytest.mark.integration
HTTP = urllib3.PoolManager(maxsize=8, retries=False, timeout=urllib3.Timeout(connect=2, read=60))
MODEL = "ai4i-machine-failure"


def wait_for_event(
    log: EventLog, match: Callable[[CloudEvent], bool], timeout: float, what: str, seen: list[CloudEvent]
) -> CloudEvent:
    """The first event ``match`` accepts: among those already read, else the next ones.

    The broker topic has several partitions and events without a ``partitionkey`` land on any
    of them, so a reply may be read before its cause (a ``retrain.requested`` before the
    ``drift.detected`` awaited first): what was read while waiting for something else counts.
    ``match`` must name the test's own ids (dataset, study, model version, event ids): the
    stack is shared, other tests' chains run at the same time.
    """
    for event in seen:
        if match(event):
            return event
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


def is_type(event: CloudEvent, *names: str) -> bool:
    return event.get_type() in {f"dev.faaspipe.{n}.v1" for n in names}


def registry_champion(stack: Stack) -> str | None:
    """The version the registry's ``champion`` alias points at (None: no champion yet)."""
    resp = HTTP.request(
        "GET",
        stack.config.url("mlflow") + "/api/2.0/mlflow/registered-models/alias",
        fields={"name": MODEL, "alias": "champion"},
    )
    return str(json.loads(resp.data)["model_version"]["version"]) if resp.status == 200 else None


def served_champion(stack: Stack, timeout: float = 180) -> str:
    """The registry's champion, once predict serves it on every replica (a few answers in a
    row agree): other tests' chains may move the alias, and a replica swaps on its own."""

    def probe() -> str | None:
        champion = registry_champion(stack)
        if champion is None or not all(served_version(stack, MODEL) == champion for _ in range(4)):
            return None
        return champion

    return wait_until(probe, timeout, interval=0.5, what="predict to serve the registry's champion")


def study_digest(source: str, event_id: str) -> str:
    """The part of a study id its triggering event fixes (``study_id_for``'s last field)."""
    return study_id_for("any", "any", source, event_id).rsplit("-", 1)[1]


def instance_of(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": row["Type"],
        "air_temperature_k": row["Air temperature [K]"],
        "process_temperature_k": row["Process temperature [K]"],
        "rotational_speed_rpm": float(row["Rotational speed [rpm]"]),
        "torque_nm": row["Torque [Nm]"],
        "tool_wear_min": float(row["Tool wear [min]"]),
    }


def stream(predict: str, rows: list[dict[str, Any]], batch: int = 25) -> Counter[str]:
    """POST the rows to /predict; how many predictions each model version made."""
    served: Counter[str] = Counter()
    for start in range(0, len(rows), batch):
        chunk = [instance_of(r) for r in rows[start : start + batch]]
        resp = post_json(f"{predict}predict", {"instances": chunk})
        assert resp.status == 200, resp.data
        served[json.loads(resp.data)["model_version"]] += len(chunk)
    return served


# Two whole chains (file drop → champion, drift → retrained model) of studies with a 600 s
# budget each, beside other tests' chains on 2 cores: well over pytest's default 600 s.
@pytest.mark.timeout(3600)
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
    materialised = wait_for_event(
        log,
        lambda e: is_type(e, "features.materialised") and e.get_data()["version"] == version,
        300,
        "features.materialised",
        seen,
    )
    # the study this dataset version started (one per triggering event: a retrain on the same
    # dataset version is another study)
    study_id = study_id_for(
        materialised.get_data()["dataset"], version, str(materialised.get_source()), materialised.get_id()
    )
    study = wait_for_event(
        log,
        lambda e: is_type(e, "tuning.study.completed") and e.get_data()["study_id"] == study_id,
        1200,
        "study.completed",
        seen,
    )
    trials = [e for e in seen if is_type(e, "tuning.trial.finished") and e.get_data()["study_id"] == study_id]
    # every counted trial finished (one still in flight when the study stopped may finish too)
    assert len({t.get_data()["trial_number"] for t in trials}) >= study.get_data()["n_trials"]
    registered = wait_for_event(
        log,
        lambda e: is_type(e, "model.registered") and e.get_data()["study_id"] == study_id,
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
            is_type(e, "model.promoted", "model.rejected")
            and e.get_data()["model_name"] == MODEL
            and e.get_data()["version"] == reg_version
        ),
        600,
        "a promotion decision",
        seen,
    )
    audit = json.loads(stack.s3().get_object("models", layout.audit_record(MODEL, reg_version)).read())
    assert audit  # who/what/why/when kept with the version

    # a champion serves predictions through both routes: ours if promoted, unless another
    # test's chain (same shared stack) promoted a newer version since
    predict = stack.config.function_url("predict")
    promoted = is_type(decision, "model.promoted")
    champion = served_champion(stack)
    if promoted:
        assert int(champion) >= int(reg_version), (champion, reg_version)
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
        assert int(answer["model_version"]) >= int(reg_version)
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

    # a drifted stream (more torque, worn tools) is detected and starts one retrain. Only the
    # drift of the versions that served this stream counts, and only the retrain one of those
    # drift events started. If another chain promotes a newer champion before the drift of
    # the stream's version is judged, that drift no longer counts (the controller judges the
    # champion only): the stream then goes to the new champion.
    fed: Counter[str] = Counter()

    def own_drift(e: CloudEvent) -> bool:
        return (
            is_type(e, "drift.detected")
            and e.get_data()["model_name"] == MODEL
            and e.get_data()["kind"] == "feature"
            and e.get_data()["model_version"] in fed
        )

    def own_retrain(e: CloudEvent) -> bool:
        return is_type(e, "retrain.requested") and e.get_data()["drift_event_id"] in {
            d.get_id() for d in seen if own_drift(d)
        }

    def newer_champion(e: CloudEvent) -> bool:
        return (
            is_type(e, "model.promoted")
            and e.get_data()["model_name"] == MODEL
            and int(e.get_data()["version"]) > max(int(v) for v in fed)
        )

    for attempt in range(3):
        drifted = generate(700, seed=99 + attempt, start_udi=50_000, torque_shift=15.0, tool_wear_shift=80.0)
        fed.update(stream(predict, drifted))
        print(f"drifted stream {attempt + 1} served by versions {dict(fed)}")
        outcome = wait_for_event(
            log, lambda e: own_retrain(e) or newer_champion(e), 420, "retrain.requested", seen
        )
        if own_retrain(outcome):
            break
        print(f"version {outcome.get_data()['version']} promoted meanwhile: streaming to it")
        served_champion(stack)
    else:
        pytest.fail(f"the champion kept moving: no retrain for the drifted streams ({dict(fed)})")
    retrain = outcome
    (drift,) = [d for d in seen if own_drift(d) and d.get_id() == retrain.get_data()["drift_event_id"]]
    assert {"torque_nm", "tool_wear_min"} & set(drift.get_data()["drifted_features"])
    assert retrain.get_data()["model_name"] == MODEL
    # the request is the controller's reply to the drift: one trace
    assert tracing.trace_id(retrain.get_extension("traceparent")) == tracing.trace_id(
        drift.get_extension("traceparent")
    )
    digest = study_digest(str(retrain.get_source()), retrain.get_id())
    retrain_study = wait_for_event(
        log,
        lambda e: (
            is_type(e, "tuning.study.completed") and e.get_data()["study_id"].rsplit("-", 1)[1] == digest
        ),
        1200,
        "the retrain's study",
        seen,
    )
    retrained = wait_for_event(
        log,
        lambda e: (
            is_type(e, "model.registered")
            and e.get_data()["study_id"] == retrain_study.get_data()["study_id"]
        ),
        600,
        "the retrained model",
        seen,
    )
    wait_for_event(
        log,
        lambda e: (
            is_type(e, "model.promoted", "model.rejected")
            and e.get_data()["model_name"] == MODEL
            and e.get_data()["version"] == retrained.get_data()["version"]
        ),
        600,
        "the retrained model's promotion decision",
        seen,
    )
    retrains = [e for e in seen if own_retrain(e)]
    assert len({e.get_id() for e in retrains}) == 1, "a burst of drift started more than one retrain"
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
