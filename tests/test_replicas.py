"""Two replicas of every stateful function of the modelling chain give the outcomes of one.

A stack of its own runs tune, train, promote and the retrain controller with
``minReplicaCount = maxReplicaCount = 2`` (their function.yaml, copied with only the scaling
changed, a small trial budget and a latency budget a busy 2-core box meets), trial and the
``ml-recorder``. Then:

* the chain, driven by one ``features.materialised``: one study with its budget of trials, each
  trial run once, exactly one ``study.completed``, one registered version, one decision;
* deliberate races, posted straight to each replica (bypassing the broker, with distinct event
  ids so the idempotency store does not separate them): trial results of one study on both tune
  replicas, one completed study on both train replicas, drift of one model on both retrain
  replicas, two versions of one model on both promote replicas — no lost or doubled effect;
* a promote replica waits for the model's decision lease held elsewhere;
* logged predictions of one model version spread over both monitor replicas fill shared
  windows, and each window is checked by exactly one of them.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import urllib3
import yaml

from events import (
    DriftDetected,
    FeaturesMaterialised,
    ModelRegistered,
    PredictionLogged,
    StudyCompleted,
    TrialFinished,
    rfc3339,
)
from functions.tune.study import study_id_for
from shared import layout
from shared.cloudevents_io import CloudEvent, parse_http, to_http
from shared.contracts import get_contract
from tests.conftest import TEST_PORT_BASE, Stack, running_stack, wait_until
from tests.fixtures_model import dataset_csv
from tests.functions.serve_recorder.client import metric_at

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parent.parent
PORT_BASE = TEST_PORT_BASE + 3000  # session stack +0, durable +500, services +1000, test_concurrency +2000
CONTRACT = get_contract("ai4i")
SOURCE = "/tests/test_replicas"
TRIALS = 4
FOLDERS = {
    "tune": "tune",
    "train": "train",
    "promote": "promote",
    "retrain-controller": "retrain",
    "monitor": "monitor",
}
MONITOR_WINDOW = 20
ENV = {
    "tune": {
        "FAASPIPE_TUNE_TRIALS": str(TRIALS),
        "FAASPIPE_TUNE_PARALLELISM": "2",
        "FAASPIPE_TUNE_PATIENCE": "0",
    },
    "promote": {"FAASPIPE_PROMOTE_LATENCY_BUDGET_MS": "1000", "FAASPIPE_PROMOTE_FLOOR": "0.5"},
    "monitor": {"FAASPIPE_DRIFT_WINDOW_SIZE": str(MONITOR_WINDOW), "FAASPIPE_DRIFT_MIN_WINDOW": "10"},
}
CHAIN_TIMEOUT_S = 420
HTTP = urllib3.PoolManager(maxsize=16, retries=False, timeout=urllib3.Timeout(connect=5, read=600))


# --------------------------------------------------------------------------- the stack


def replica_functions(root: Path) -> Path:
    """The stateful functions' function.yaml files pinned to two replicas each; trial (stateless,
    its own scaling) and the ml-recorder as they are."""
    for folder in FOLDERS.values():
        doc = yaml.safe_load((REPO / "functions" / folder / "function.yaml").read_text())
        doc["scaling"] = {**doc.get("scaling", {}), "minReplicaCount": 2, "maxReplicaCount": 2}
        doc["env"] = {**doc.get("env", {}), **ENV.get(folder, {})}
        (root / folder).mkdir(parents=True)
        (root / folder / "function.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    (root / "trial").symlink_to(REPO / "functions" / "trial")
    (root / "ml_recorder").symlink_to(REPO / "tests" / "functions" / "ml_recorder")
    return root


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    functions = replica_functions(tmp_path_factory.mktemp("replica-functions"))
    with running_stack(
        tmp_path_factory.mktemp("replica-state"), PORT_BASE, str(functions), "memory"
    ) as stack:
        yield stack


def replica_urls(stack: Stack, name: str) -> list[str]:
    """The two ready replicas of ``name`` (their own ports, not the gateway)."""

    def ready() -> list[str] | None:
        status = json.loads(stack.cli("status", "--json").stdout)["functions"][name]
        urls = [r["url"] + "/" for r in status["replicas"] if r["state"] == "ready"]
        return urls if len(urls) == 2 else None

    return wait_until(ready, timeout=180, interval=1.0, what=f"two ready replicas of {name}")


def post_direct(url: str, event: CloudEvent) -> tuple[int, CloudEvent | None]:
    """POST ``event`` to one replica; (status, its reply event or None)."""
    headers, body = to_http(event)
    resp = HTTP.request("POST", url, body=body, headers=headers)
    reply = parse_http(dict(resp.headers), resp.data) if resp.status == 200 else None
    return resp.status, reply


def race(calls: list[tuple[str, CloudEvent]]) -> list[tuple[int, CloudEvent | None]]:
    """Post each (replica, event) at the same moment; the answers in order."""
    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(lambda call: post_direct(*call), calls))


def ml_records(stack: Stack, trigger: str, subject: str | None = None) -> list[dict[str, Any]]:
    fields = {"trigger": trigger, **({"subject": subject} if subject else {})}
    resp = HTTP.request("GET", stack.config.function_url("ml-recorder") + "records", fields=fields)
    assert resp.status == 200, resp.data
    return json.loads(resp.data)


def s3_json(stack: Stack, key: str) -> Any:
    resp = stack.s3().get_object(layout.MODELS, key)
    try:
        return json.loads(resp.read())
    finally:
        resp.close()
        resp.release_conn()


def put_json(stack: Stack, key: str, doc: Any) -> None:
    data = json.dumps(doc).encode()
    stack.s3().put_object(layout.MODELS, key, io.BytesIO(data), len(data), content_type="application/json")


def mlflow(stack: Stack) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=stack.config.url("mlflow"))


def versions_of_study(stack: Stack, model_name: str, study_id: str) -> list[Any]:
    return mlflow(stack).search_model_versions(
        f"name = '{model_name}' and tags.`faaspipe.study_id` = '{study_id}'"
    )


def trial_runs(stack: Stack, state: dict[str, Any]) -> Counter[str]:
    """How many MLflow trial runs each trial number of the study has."""
    runs = mlflow(stack).search_runs(
        [state["mlflow"]["experiment_id"]],
        f"tags.`faaspipe.study_id` = '{state['study_id']}' and tags.`faaspipe.role` = 'trial'",
        max_results=500,
    )
    return Counter(r.data.tags["faaspipe.trial_number"] for r in runs)


def registered_of(stack: Stack, study_id: str) -> list[dict[str, Any]]:
    return [r for r in ml_records(stack, "mlrec-model-registered") if r["data"]["study_id"] == study_id]


def offline_parquet(raw_csv: bytes) -> bytes:
    """The AI4I file as ingest stores it: canonical names, derived features, event_timestamp."""
    import pandas as pd

    frame = pd.read_csv(io.BytesIO(raw_csv)).rename(columns={c.source: c.name for c in CONTRACT.columns})
    derived = CONTRACT.derive({name: frame[name] for name in frame.columns})
    for name in CONTRACT.derived:
        frame[name] = pd.Series(derived[name], index=frame.index).astype("float64")
    minutes = pd.to_timedelta(frame[CONTRACT.timestamp_source], unit="min")
    frame["event_timestamp"] = pd.Timestamp(CONTRACT.timestamp_origin) + minutes
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False, engine="pyarrow")
    return buffer.getvalue()


# --------------------------------------------------------------------------- the chain


@pytest.fixture(scope="module")
def chain(stack: Stack) -> dict[str, Any]:
    """One study → one model version → one decision, every function at two replicas."""
    csv = dataset_csv()
    raw = csv.read_bytes()
    version = hashlib.sha256(raw).hexdigest()[:16]
    data = offline_parquet(raw)
    stack.s3().put_object(
        layout.FEATURES, layout.offline_data(CONTRACT.name, version), io.BytesIO(data), len(data)
    )
    for name in FOLDERS:
        replica_urls(stack, name)  # both replicas up before the first event
    event = FeaturesMaterialised(
        feature_view=CONTRACT.feature_view,
        dataset=CONTRACT.name,
        version=version,
        start="2020-01-01T00:01:00Z",
        end="2020-01-07T22:40:00Z",
        rows=10_000,
        online_store="sqlite",
    ).to_event(source=SOURCE, id=str(uuid.uuid4()))
    assert stack.post_event(event).status == 202
    study_id = study_id_for(CONTRACT.name, version, SOURCE, event.get_id())
    wait_until(
        lambda: ml_records(stack, "mlrec-study-completed", study_id),
        timeout=CHAIN_TIMEOUT_S,
        interval=1.0,
        what=f"study {study_id} to complete",
    )
    [registered, *_] = wait_until(
        lambda: registered_of(stack, study_id), timeout=CHAIN_TIMEOUT_S, interval=1.0, what="model.registered"
    )
    subject = f"{registered['data']['model_name']}/{registered['data']['version']}"
    wait_until(
        lambda: ml_records(stack, "mlrec-model-decided", subject),
        timeout=CHAIN_TIMEOUT_S,
        interval=1.0,
        what=f"the decision on {subject}",
    )
    return {
        "study_id": study_id,
        "model_name": registered["data"]["model_name"],
        "version": registered["data"]["version"],
        "state": s3_json(stack, layout.study_state(study_id)),
    }


def test_the_chain_has_one_of_each_effect(stack: Stack, chain: dict[str, Any]) -> None:
    state, study_id = chain["state"], chain["study_id"]
    trials = state["trials"]
    assert [t["number"] for t in trials] == list(range(TRIALS)), trials  # none handed out twice
    assert all(t["status"] in ("ok", "failed") for t in trials)
    assert state["finish_count"] == TRIALS  # every result counted once
    assert state["completion"]["n_trials"] == TRIALS and state["completion"]["stop_reason"] == "budget_trials"
    assert trial_runs(stack, state) == Counter({str(n): 1 for n in range(TRIALS)})  # each trial ran once
    completions = ml_records(stack, "mlrec-study-completed", study_id)
    assert len({r["id"] for r in completions}) == 1, completions
    parents = mlflow(stack).search_runs(
        [state["mlflow"]["experiment_id"]],
        f"tags.`faaspipe.study_id` = '{study_id}' and tags.`faaspipe.role` = 'study'",
    )
    assert len(parents) == 1
    assert [v.version for v in versions_of_study(stack, chain["model_name"], study_id)] == [chain["version"]]
    assert {r["data"]["version"] for r in registered_of(stack, study_id)} == {chain["version"]}
    subject = f"{chain['model_name']}/{chain['version']}"
    decisions = ml_records(stack, "mlrec-model-decided", subject)
    assert len({r["id"] for r in decisions}) == 1, decisions
    audit = s3_json(stack, layout.audit_record(chain["model_name"], chain["version"]))
    assert audit["status"] == "final" and audit["decision"] in ("promoted", "rejected")


# --------------------------------------------------------------------------- deliberate races


def test_trial_results_racing_on_two_tune_replicas(stack: Stack, chain: dict[str, Any]) -> None:
    """Two results of one study (and one of them again) at once on both replicas: both recorded,
    the repeat counted as a repeat, exactly ``parallelism`` new trials asked; then the study runs
    to its budget and completes once."""
    a, b = replica_urls(stack, "tune")
    base = chain["state"]
    study_id = f"{base['study_id'][:60]}-race-{uuid.uuid4().hex[:6]}"
    parent = mlflow(stack).create_run(
        base["mlflow"]["experiment_id"],
        run_name=f"study {study_id}",
        tags={"faaspipe.role": "study", "faaspipe.study_id": study_id},
    )
    state = copy.deepcopy(base)
    state.update(
        study_id=study_id,
        trials=[],
        finish_count=0,
        stopping=None,
        completion=None,
        failure=None,
        created_ts=time.time(),
        mlflow={"experiment_id": base["mlflow"]["experiment_id"], "parent_run_id": parent.info.run_id},
    )
    for old in base["trials"][:2]:
        state["trials"].append(
            {k: old[k] for k in ("number", "x", "params")}
            | {"status": "requested", "emitted": True, "requested_at": rfc3339()}
        )
    put_json(stack, layout.study_state(study_id), state)

    def result(number: int, score: float) -> CloudEvent:
        return TrialFinished(
            study_id=study_id,
            trial_number=number,
            params=state["trials"][number]["params"],
            status="ok",
            score=score,
            duration_s=1.0,
        ).to_event(source=SOURCE, subject=study_id, id=str(uuid.uuid4()))

    answers = race([(a, result(0, 0.95)), (b, result(1, 0.96)), (b, result(0, 0.95))])
    assert [status for status, _ in answers] == [202, 202, 202]
    after = s3_json(stack, layout.study_state(study_id))
    assert [t["status"] for t in after["trials"][:2]] == ["ok", "ok"]  # both results, neither lost
    assert after["trials"][0].get("repeats") == 1  # the repeat seen as one
    assert [t["number"] for t in after["trials"]] == [0, 1, 2, 3]  # exactly parallelism new trials
    finished_since = sum(t["status"] != "requested" for t in after["trials"][2:])  # the new ones may run fast
    assert after["finish_count"] == 2 + finished_since
    wait_until(
        lambda: ml_records(stack, "mlrec-study-completed", study_id),
        timeout=CHAIN_TIMEOUT_S,
        interval=1.0,
        what=f"the raced study {study_id} to complete",
    )
    final = s3_json(stack, layout.study_state(study_id))
    assert [t["number"] for t in final["trials"]] == list(range(TRIALS))
    assert final["finish_count"] == TRIALS
    assert trial_runs(stack, final) == Counter({"2": 1, "3": 1})  # the two asked trials, run once each
    completions = ml_records(stack, "mlrec-study-completed", study_id)
    assert len({r["id"] for r in completions}) == 1, completions


def test_one_completed_study_on_two_train_replicas_registers_one_version(
    stack: Stack, chain: dict[str, Any]
) -> None:
    a, b = replica_urls(stack, "train")
    state = copy.deepcopy(chain["state"])
    study_id = f"{state['study_id'][:60]}-train-{uuid.uuid4().hex[:6]}"
    state["study_id"] = study_id
    put_json(stack, layout.study_state(study_id), state)
    completion = state["completion"]

    def completed() -> CloudEvent:
        return StudyCompleted(
            study_id=study_id,
            parent_run_id=state["mlflow"]["parent_run_id"],
            dataset_version=state["dataset_version"],
            feature_view=state["feature_view"],
            best_params=completion["best_params"],
            best_score=completion["best_score"],
            n_trials=completion["n_trials"],
            stop_reason=completion["stop_reason"],
        ).to_event(source=SOURCE, subject=study_id, id=str(uuid.uuid4()))

    answers = race([(a, completed()), (b, completed())])
    assert [status for status, _ in answers] == [200, 200], answers
    replies = [ModelRegistered.from_event(reply) for _, reply in answers if reply is not None]
    assert len({r.version for r in replies}) == 1, replies  # both answer with the same version
    versions = versions_of_study(stack, chain["model_name"], study_id)
    assert [v.version for v in versions] == [replies[0].version]  # registered once
    runs = mlflow(stack).search_runs(
        [state["mlflow"]["experiment_id"]],
        f"tags.`faaspipe.study_id` = '{study_id}' and tags.`faaspipe.role` = 'train'",
    )
    assert len(runs) == 1  # the loser threw its fit away: no second training run either


def drift(model_name: str) -> CloudEvent:
    return DriftDetected(
        kind="feature",
        detector="ks+chisquare",
        model_name=model_name,
        model_version="1",
        p_values={"torque_nm": 0.0},
        threshold=0.05,
        drifted_features=["torque_nm"],
        window={"start": rfc3339(), "end": rfc3339(), "size": 500},
    ).to_event(source=SOURCE, subject=f"{model_name}/1", id=str(uuid.uuid4()))


def test_drift_racing_on_two_retrain_replicas_requests_one_retrain(stack: Stack) -> None:
    a, b = replica_urls(stack, "retrain-controller")
    model_name = f"replicas-retrain-{uuid.uuid4().hex[:8]}"  # no contract: tune rejects its retrain
    answers = race(
        [(a, drift(model_name)), (b, drift(model_name)), (a, drift(model_name)), (b, drift(model_name))]
    )
    assert all(status in (200, 202) for status, _ in answers), answers
    requests = [reply for _, reply in answers if reply is not None]
    assert len(requests) == 1, requests
    state = s3_json(stack, layout.retrain_state(model_name))
    assert state["requests"] == 1 and state["in_flight_request_id"] == requests[0].get_id()


def register_copy(stack: Stack, source: tuple[str, str], name: str, roc_auc: float) -> str:
    """A version of ``name`` with the serving artefacts of ``source`` (model, version)."""
    from mlflow.exceptions import MlflowException

    client = mlflow(stack)
    with_name = client.get_experiment_by_name("faaspipe-replica-tests")
    experiment = with_name.experiment_id if with_name else client.create_experiment("faaspipe-replica-tests")
    run = client.create_run(experiment, run_name=f"{name} roc={roc_auc}")
    client.set_terminated(run.info.run_id)
    try:
        client.create_registered_model(name)
    except MlflowException as exc:
        if "already exists" not in str(exc).lower() and "RESOURCE_ALREADY_EXISTS" not in str(exc):
            raise
    version = str(
        client.create_model_version(
            name,
            f"runs:/{run.info.run_id}/model",
            run.info.run_id,
            tags={"faaspipe.holdout_roc_auc": f"{roc_auc:.6f}"},
        ).version
    )
    for file in ("model.json", "reference.csv"):
        resp = stack.s3().get_object(layout.MODELS, layout.serving_model(*source, file))
        try:
            data = resp.read()
        finally:
            resp.close()
            resp.release_conn()
        stack.s3().put_object(
            layout.MODELS, layout.serving_model(name, version, file), io.BytesIO(data), len(data)
        )
    meta = s3_json(stack, layout.serving_model(*source, "meta.json"))
    meta.update(model_name=name, version=version, metrics={**meta["metrics"], "roc_auc": roc_auc})
    put_json(stack, layout.serving_model(name, version, "meta.json"), meta)
    return version


def test_two_versions_racing_on_two_promote_replicas_are_decided_in_turn(
    stack: Stack, chain: dict[str, Any]
) -> None:
    """Both pass; whichever is decided second must see the first as champion (one decision at a
    time per model across replicas), and the alias ends on the second."""
    a, b = replica_urls(stack, "promote")
    name = f"replicas-promote-{uuid.uuid4().hex[:8]}"
    source = (chain["model_name"], chain["version"])
    first, second = register_copy(stack, source, name, 0.99), register_copy(stack, source, name, 0.99)
    meta = s3_json(stack, layout.serving_model(name, first, "meta.json"))

    def registered(version: str) -> CloudEvent:
        metrics = {k: float(meta["metrics"][k]) for k in ("pr_auc", "f1", "brier")}
        return ModelRegistered(
            model_name=name,
            version=version,
            run_id="replica-test",
            model_uri=f"models:/{name}/{version}",
            study_id="replica-test",
            dataset_checksum="0" * 64,
            feature_view=CONTRACT.feature_view,
            metrics={**metrics, "threshold": float(meta["threshold"]), "roc_auc": 0.99},
        ).to_event(source=SOURCE, subject=f"{name}/{version}", id=str(uuid.uuid4()))

    answers = race([(a, registered(first)), (b, registered(second))])
    assert [status for status, _ in answers] == [200, 200], answers
    records = [s3_json(stack, layout.audit_record(name, v)) for v in (first, second)]
    assert [r["decision"] for r in records] == ["promoted", "promoted"], records
    [earlier] = [r for r in records if r["champion_before"] is None]  # one decided first, not both
    [later] = [r for r in records if r is not earlier]
    assert later["champion_before"] == earlier["version"]  # not a second "no champion yet"
    champion = mlflow(stack).get_model_version_by_alias(name, "champion").version
    assert str(champion) == later["version"]


def test_a_promote_replica_decides_nothing_while_another_holds_the_model_lease(
    stack: Stack, chain: dict[str, Any]
) -> None:
    """decision.decide re-reads the champion before moving it, which catches most overlaps; the
    lease closes the rest. Held here (as another replica would), it keeps a decision out."""
    from functions.promote.handler import lease_key
    from shared.concurrency import Lease, S3VersionedStore

    a, _ = replica_urls(stack, "promote")
    name = f"replicas-lease-{uuid.uuid4().hex[:8]}"
    version = register_copy(stack, (chain["model_name"], chain["version"]), name, 0.99)
    meta = s3_json(stack, layout.serving_model(name, version, "meta.json"))
    event = ModelRegistered(
        model_name=name,
        version=version,
        run_id="replica-test",
        model_uri=f"models:/{name}/{version}",
        study_id="replica-test",
        dataset_checksum="0" * 64,
        feature_view=CONTRACT.feature_view,
        metrics={
            **{k: float(meta["metrics"][k]) for k in ("pr_auc", "f1", "brier")},
            "threshold": 0.5,
            "roc_auc": 0.99,
        },
    ).to_event(source=SOURCE, subject=f"{name}/{version}", id=str(uuid.uuid4()))
    lease = Lease(S3VersionedStore(stack.s3(), layout.MODELS), lease_key(name), "the test", ttl_s=600)
    lease.acquire(wait_s=10)
    with ThreadPoolExecutor(1) as pool:
        answer = pool.submit(post_direct, a, event)
        time.sleep(5)  # the replica has had time to decide, were it not waiting for the lease
        assert not answer.done()
        assert not list(stack.s3().list_objects(layout.MODELS, prefix=layout.audit_record(name, version)))
        lease.release()
        status, reply = answer.result()
    assert status == 200 and reply is not None
    assert s3_json(stack, layout.audit_record(name, version))["status"] == "final"


# --------------------------------------------------------------------------- the monitor


def test_predictions_spread_over_two_monitor_replicas_fill_shared_windows_checked_once(stack: Stack) -> None:
    """Three windows' worth of one model version's predictions, each posted to one of the two
    monitor replicas at once (and one redelivered to both): every prediction is stored once, and
    exactly three windows are closed and checked, each by one replica. The version has no drift
    reference, so each check ends as ``no_reference``: the count of checks is what matters."""
    replicas = replica_urls(stack, "monitor")
    version = uuid.uuid4().hex[:8]  # a model version of this test only: windows of its own

    def logged(i: int) -> CloudEvent:
        return PredictionLogged(
            request_id=f"replicas-{version}-{i}",
            model_name="replicas-m",
            model_version=version,
            route="json",
            inputs={"torque_nm": 40.0 + i % 7},
            output={"probability": 0.3, "label": 0},
            latency_ms=5.0,
        ).to_event(source=SOURCE, id=f"monitor-{version}-{i}")

    events = [logged(i) for i in range(3 * MONITOR_WINDOW)]
    calls = [(replicas[i % 2], e) for i, e in enumerate(events)]
    calls += [(replicas[0], events[0]), (replicas[1], events[0])]  # a redelivery, on both
    for start in range(0, len(calls), 8):
        assert all(status in (200, 202) for status, _ in race(calls[start : start + 8]))

    def checks() -> float:
        return sum(
            metric_at(url, "faaspipe_monitor_drift_checks_total", model="replicas-m", version=version)
            for url in replicas
        )

    wait_until(lambda: checks() >= 3, timeout=60, interval=0.5, what="three windows checked")
    time.sleep(2)  # a fourth (doubled) check would show up now
    per_replica = [
        metric_at(url, "faaspipe_monitor_drift_checks_total", model="replicas-m", version=version)
        for url in replicas
    ]
    assert sum(per_replica) == 3, per_replica
    new = sum(metric_at(url, "faaspipe_monitor_predictions_total", outcome="new") for url in replicas)
    assert new == 3 * MONITOR_WINDOW  # the redelivery stored on neither replica a second time
