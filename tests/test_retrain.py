"""retrain-controller: one in-flight retrain per model, cooldown after completion (units + stack)."""

from __future__ import annotations

import json
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import urllib3
from minio.error import S3Error

from events import DriftDetected, ModelPromoted, ModelRejected, rfc3339
from functions.retrain.policy import PolicyConfig, RetrainState, on_decision, on_drift, request_id_for
from shared import layout
from tests.conftest import Stack, wait_until
from tests.fixtures_model import serving_stack
from tests.functions.serve_recorder.client import metric_all, recorded

RETRAIN = "dev.faaspipe.retrain.requested.v1"
T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
CONFIG = PolicyConfig(cooldown_s=600, max_in_flight_s=3600)


# --------------------------------------------------------------------------- policy (units)


def test_first_drift_requests_then_in_flight_blocks() -> None:
    decision, state = on_drift(RetrainState("m"), "d1", T0, CONFIG)
    assert decision.action == "request" and decision.request_id == request_id_for("d1")
    assert state.in_flight_since == T0.isoformat() and state.requests == 1
    later, same = on_drift(state, "d2", T0 + timedelta(seconds=5), CONFIG)
    assert later.action == "in_flight" and not later.sends_request and same == state


def test_redelivered_drift_repeats_the_same_request() -> None:
    _, state = on_drift(RetrainState("m"), "d1", T0, CONFIG)
    again, unchanged = on_drift(state, "d1", T0 + timedelta(seconds=1), CONFIG)
    assert again.action == "repeat" and again.request_id == request_id_for("d1") and unchanged == state


def test_cooldown_runs_from_completion_not_from_request() -> None:
    _, state = on_drift(RetrainState("m"), "d1", T0, CONFIG)
    done_at = T0 + timedelta(seconds=3000)  # a long retrain: longer than the cooldown itself
    changed, state = on_decision(state, "promoted", "7", done_at - timedelta(seconds=1), done_at)
    assert changed and state.in_flight_since is None and state.last_outcome == "promoted"
    cooling, _ = on_drift(state, "d2", done_at + timedelta(seconds=599), CONFIG)
    assert cooling.action == "cooldown"
    fresh, state = on_drift(state, "d3", done_at + timedelta(seconds=601), CONFIG)
    assert fresh.action == "request" and state.requests == 2


def test_decisions_before_the_request_or_without_one_change_nothing() -> None:
    idle = RetrainState("m")
    assert on_decision(idle, "promoted", "1", T0, T0) == (False, idle)
    _, state = on_drift(idle, "d1", T0, CONFIG)
    assert on_decision(state, "rejected", "1", T0 - timedelta(minutes=1), T0)[0] is False
    changed, state = on_decision(state, "rejected", "2", T0 + timedelta(minutes=1), T0 + timedelta(minutes=1))
    assert changed and state.last_outcome == "rejected" and state.last_outcome_version == "2"


def test_a_lost_request_stops_blocking_after_the_in_flight_limit() -> None:
    _, state = on_drift(RetrainState("m"), "d1", T0, CONFIG)
    decision, state = on_drift(state, "d2", T0 + timedelta(seconds=3601), CONFIG)
    assert decision.action == "request" and "presumed lost" in decision.reason
    assert state.in_flight_request_id == request_id_for("d2")


def test_drift_of_a_version_that_is_not_champion_neither_starts_nor_blocks() -> None:
    idle = RetrainState("m")
    old, same = on_drift(idle, "d9", T0, CONFIG, drift_version="9", champion_version="10")
    assert old.action == "not_champion" and not old.sends_request and same == idle
    current, state = on_drift(same, "d10", T0, CONFIG, drift_version="10", champion_version="10")
    assert current.action == "request" and state.last_drift_event_id == "d10"
    unknown, _ = on_drift(idle, "d1", T0, CONFIG, drift_version="1", champion_version=None)
    assert unknown.action == "request"  # no champion known (no alias yet): every drift counts
    # a redelivered drift keeps getting its request, even if the champion moved meanwhile
    again, _ = on_drift(state, "d10", T0, CONFIG, drift_version="10", champion_version="11")
    assert again.action == "repeat" and again.request_id == request_id_for("d10")


def test_state_round_trips_and_ignores_unknown_fields() -> None:
    _, state = on_drift(RetrainState("m"), "d1", T0, CONFIG)
    assert RetrainState.from_dict({**json.loads(json.dumps(state.to_dict())), "future_field": 1}) == state


# --------------------------------------------------------------------------- integration


@pytest.fixture(scope="module")
def serving(request: pytest.FixtureRequest) -> Stack:
    return serving_stack(request)


def _drift(model_name: str, version: str = "1") -> Any:
    return DriftDetected(
        kind="feature",
        detector="ks+chisquare",
        model_name=model_name,
        model_version=version,
        p_values={"torque_nm": 0.0, "tool_wear_min": 1e-9, "type": 0.4},
        threshold=0.05,
        drifted_features=["torque_nm", "tool_wear_min"],
        window={"start": rfc3339(), "end": rfc3339(), "size": 500},
    ).to_event(source="/tests/retrain", subject=f"{model_name}/{version}")


def _state(stack: Stack, model_name: str) -> dict[str, Any] | None:
    try:
        resp = stack.s3().get_object(layout.MODELS, layout.retrain_state(model_name))
    except S3Error:
        return None
    try:
        return json.loads(resp.read())
    finally:
        resp.close()
        resp.release_conn()


def _decisions(stack: Stack, model_name: str, action: str) -> float:
    # summed over the controller's replicas: it scales out on a burst (maxReplicaCount 3)
    return metric_all(
        stack, "retrain-controller", "faaspipe_retrain_decisions_total", model=model_name, action=action
    )


def _burst(stack: Stack, model_name: str, count: int) -> list[str]:
    events = [_drift(model_name) for _ in range(count)]
    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda e: stack.post_event(e).status, events))
    assert statuses == [202] * count
    return [e.get_id() for e in events]


@pytest.mark.integration
def test_a_burst_of_drift_starts_exactly_one_retrain_until_promoted(serving: Stack) -> None:
    model_name = f"retrain-test-{uuid.uuid4().hex[:8]}"
    drift_ids = _burst(serving, model_name, 12)
    wait_until(
        lambda: sum(_decisions(serving, model_name, a) for a in ("request", "in_flight")) >= 12,
        60,
        what="the controller to decide on all 12 drift events",
    )
    # one decision was "request": its reply travels through the broker to the recorder after
    # the decision is counted, so wait for it (the other eleven emit nothing)
    requests = wait_until(
        lambda: recorded(serving, RETRAIN, subject=model_name), 60, what="the retrain request delivered"
    )
    assert len({r["id"] for r in requests}) == 1, requests
    request = requests[0]["data"]
    assert request["model_name"] == model_name and request["requested_by"] == "retrain-controller"
    assert request["drift_event_id"] in drift_ids and "torque_nm" in request["reason"]
    state = _state(serving, model_name)
    assert state is not None and state["in_flight_since"] and state["requests"] == 1

    promoted = ModelPromoted(
        model_name=model_name,
        version="2",
        previous_version="1",
        gates=[],
        decided_by="tests",
        decided_at=rfc3339(),
    ).to_event(source="/tests/retrain", subject=model_name)
    assert serving.post_event(promoted).status == 202
    cleared = wait_until(
        lambda: (s := _state(serving, model_name)) and s["in_flight_since"] is None and s,
        60,
        what="model.promoted to clear the in-flight retrain",
    )
    assert cleared["last_outcome"] == "promoted" and cleared["last_outcome_version"] == "2"
    assert cleared["last_completed_at"]

    # right after a completed retrain, more drift only meets the cooldown
    _burst(serving, model_name, 3)
    wait_until(lambda: _decisions(serving, model_name, "cooldown") >= 3, 60, what="three cooldown decisions")
    assert len({r["id"] for r in recorded(serving, RETRAIN, subject=model_name)}) == 1


@pytest.mark.integration
def test_model_rejected_also_completes_the_retrain(serving: Stack) -> None:
    model_name = f"retrain-test-{uuid.uuid4().hex[:8]}"
    _burst(serving, model_name, 1)
    wait_until(lambda: recorded(serving, RETRAIN, subject=model_name), 60, what="retrain.requested")
    rejected = ModelRejected(
        model_name=model_name,
        version="2",
        champion_version="1",
        gates=[],
        reasons=["does not beat the champion"],
        decided_by="tests",
        decided_at=rfc3339(),
    ).to_event(source="/tests/retrain", subject=model_name)
    assert serving.post_event(rejected).status == 202
    state = wait_until(
        lambda: (s := _state(serving, model_name)) and s["in_flight_since"] is None and s,
        60,
        what="model.rejected to clear the in-flight retrain",
    )
    assert state["last_outcome"] == "rejected"


def _mlflow(stack: Stack, path: str, doc: dict[str, Any]) -> None:
    resp = urllib3.request(
        "POST",
        stack.config.url("mlflow") + f"/api/2.0/mlflow/{path}",
        body=json.dumps(doc).encode(),
        headers={"Content-Type": "application/json"},
        retries=False,
        timeout=30,
    )
    assert resp.status == 200, resp.data


@pytest.mark.integration
def test_drift_of_a_version_that_is_no_longer_champion_is_ignored(serving: Stack) -> None:
    """Versions 1 and 2 registered, 2 champion: drift of 1 (e.g. a replica that had not swapped
    yet) starts nothing and does not block the champion's drift."""
    model_name = f"retrain-test-{uuid.uuid4().hex[:8]}"
    _mlflow(serving, "registered-models/create", {"name": model_name})
    for _ in range(2):
        _mlflow(serving, "model-versions/create", {"name": model_name, "source": "s3://models/none"})
    _mlflow(serving, "registered-models/alias", {"name": model_name, "alias": "champion", "version": "2"})

    old = _drift(model_name, "1")
    assert serving.post_event(old).status == 202
    wait_until(
        lambda: _decisions(serving, model_name, "not_champion") >= 1, 60, what="a not_champion decision"
    )
    assert recorded(serving, RETRAIN, subject=model_name) == []
    assert _state(serving, model_name) is None  # nothing stored: nothing in flight

    current = _drift(model_name, "2")
    assert serving.post_event(current).status == 202
    (request,) = wait_until(
        lambda: recorded(serving, RETRAIN, subject=model_name), 60, what="the champion's retrain.requested"
    )
    assert request["data"]["drift_event_id"] == current.get_id()
