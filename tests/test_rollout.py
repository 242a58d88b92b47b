"""Progressive rollouts: the policy a contract declares, request routing by id, promote's side
(unit, with an in-memory registry), and a canary on the real stack (integration).

The integration tests use the test contracts ``ai4i-canary`` (tests/contracts/ai4i_canary.yaml:
canary, share 0.3, window 30 s, at least 40 requests) and ``ai4i-shadow`` (shadow, same window),
whose models no other test touches.
Fixture versions are trained in the train venv; the challenger is the better of two, so the
offline gates pass; ``model.registered`` goes through the broker to promote. The monitor then
decides on live signals and promote carries the decision out, or a person rolls it back with
``faaspipe rollout rollback``. Events are matched on the model version's subject.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any, Literal

import pytest

from events import ModelRegistered, RolloutDecided, rfc3339
from functions.promote import rollouts
from shared.contracts import ContractError, load_contract
from shared.rollout import CANARY, ROLLOUT_TAG, Rollout, RolloutPolicy, RolloutPolicyError, bucket

TEST_CONTRACTS = Path(__file__).resolve().parent / "contracts"
CANARY_MODEL = "ai4i-canary-failure"  # model_name of tests/contracts/ai4i_canary.yaml
integration = pytest.mark.integration


# --------------------------------------------------------------------------- unit: policy


def test_a_contract_without_a_rollout_block_promotes_at_once() -> None:
    assert RolloutPolicy.parse(None, "c").mode == "off"
    policy = load_contract(TEST_CONTRACTS / "ai4i_canary.yaml").rollout
    assert (policy.mode, policy.share, policy.window_s, policy.min_requests) == ("canary", 0.3, 30.0, 40)


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"mode": "blue-green"}, "rollout.mode must be one of"),
        ({"mode": "canary", "share": 0}, "rollout.share must be in (0, 1]"),
        ({"mode": "canary", "share": 1.5}, "rollout.share must be in (0, 1]"),
        ({"mode": "canary", "windowS": -1}, "rollout.windowS must be a number >= 0"),
        ({"mode": "canary", "minRequests": True}, "rollout.minRequests must be a number >= 0"),
        ({"mode": "canary", "window_s": 10}, "unknown field(s) ['window_s']"),
        (["canary"], "expected a mapping"),
    ],
)
def test_a_bad_rollout_block_names_the_field(doc: Any, message: str) -> None:
    with pytest.raises(RolloutPolicyError, match=None) as raised:
        RolloutPolicy.parse(doc, "contract.yaml")
    assert message in str(raised.value)


def test_a_contract_with_a_bad_rollout_block_does_not_load(tmp_path: Path) -> None:
    text = (TEST_CONTRACTS / "ai4i_canary.yaml").read_text().replace("share: 0.3", "share: 3")
    (tmp_path / "bad.yaml").write_text(text)
    with pytest.raises(ContractError, match="share"):
        load_contract(tmp_path / "bad.yaml")


def test_request_ids_split_by_share_the_same_way_everywhere() -> None:
    ids = [f"req-{i}" for i in range(20_000)]
    share = sum(bucket(i) < 0.3 for i in ids) / len(ids)
    assert abs(share - 0.3) < 0.015
    assert [bucket(i) for i in ids[:50]] == [bucket(i) for i in ids[:50]]
    canary = _rollout("canary", 0.3)
    assert sum(canary.candidate_answers(i) for i in ids) / len(ids) == pytest.approx(share)
    assert not any(_rollout("shadow", 1.0).candidate_answers(i) for i in ids[:1000])
    assert canary.shares() == {"1": 0.7, "2": 0.3}


def test_the_rollout_tag_round_trips() -> None:
    rollout = _rollout("shadow", 0.05)
    assert Rollout.from_json(rollout.to_json()) == rollout


def _rollout(mode: str, share: float, candidate: str = "2", champion: str = "1") -> Rollout:
    return Rollout(
        id=f"m-v{candidate}-abc",
        model_name="m",
        candidate=candidate,
        champion=champion,
        started_at="2026-12-01T00:00:00Z",
        started_by="tests",
        policy=RolloutPolicy(mode=mode, share=share),
    )


# --------------------------------------------------------------------------- unit: promote's side


class MemoryRegistry:
    """Aliases and registered-model tags in memory (the promote rollouts' registry protocol)."""

    def __init__(self, champion: str) -> None:
        self.aliases: dict[str, str] = {"champion": champion}
        self.tags: dict[str, str] = {}

    def champion(self, model_name: str) -> str | None:
        return self.aliases.get("champion")

    def set_champion(self, model_name: str, version: str) -> None:
        self.aliases["champion"] = version

    def alias_version(self, model_name: str, alias: str) -> str | None:
        return self.aliases.get(alias)

    def set_alias(self, model_name: str, alias: str, version: str) -> None:
        self.aliases[alias] = version

    def delete_alias(self, model_name: str, alias: str) -> None:
        self.aliases.pop(alias, None)

    def model_tag(self, model_name: str, key: str) -> str | None:
        return self.tags.get(key)

    def set_model_tag(self, model_name: str, key: str, value: str) -> None:
        self.tags[key] = value

    def delete_model_tag(self, model_name: str, key: str) -> None:
        self.tags.pop(key, None)


def _decided(rollout: Rollout, decision: Literal["promote", "rollback"], *, passed: bool) -> RolloutDecided:
    check = {"name": "error_rate", "passed": passed, "value": 0.0, "threshold": 0.01, "detail": "0 of 50"}
    return RolloutDecided(
        model_name=rollout.model_name,
        rollout_id=rollout.id,
        candidate_version=rollout.candidate,
        champion_version=rollout.champion,
        decision=decision,
        checks=[check],
        evidence={},
        decided_by="tests",
        decided_at=rfc3339(),
    )


def _keep(history: list[Any]) -> rollouts.History:
    def write(rollout: Rollout, ended: dict[str, Any] | None) -> None:
        history.append((rollout.id, rollout.shares(), ended and ended["outcome"]))

    return write


def test_start_gives_the_canary_alias_then_the_tag() -> None:
    registry, history = MemoryRegistry("1"), []
    policy = RolloutPolicy(mode="canary", share=0.1)
    rollout = rollouts.start(registry, "m", "2", "1", policy, "tests", history=_keep(history))
    assert registry.aliases == {"champion": "1", CANARY: "2"}
    assert rollouts.running(registry, "m") == rollout and rollout.champion == "1"
    assert history == [(rollout.id, {"1": 0.9, "2": 0.1}, None)]


@pytest.mark.parametrize(
    ("decision", "moved_to", "outcome", "champion"),
    [
        ("promote", None, "promoted", "2"),  # compare-and-set against v1 succeeds
        ("promote", "3", "rejected", "3"),  # someone promoted v3 meanwhile: never over it
        ("rollback", None, "rejected", "1"),
    ],
)
def test_finish_moves_the_champion_only_by_compare_and_set(
    decision: Literal["promote", "rollback"], moved_to: str | None, outcome: str, champion: str
) -> None:
    registry, history = MemoryRegistry("1"), []
    rollout = rollouts.start(
        registry, "m", "2", "1", RolloutPolicy(mode="canary"), "tests", history=_keep(history)
    )
    if moved_to:
        registry.set_champion("m", moved_to)
    decided = _decided(rollout, decision, passed=decision == "promote")
    result = rollouts.finish(registry, rollout, decided, history=_keep(history))
    assert [h[2] for h in history] == [None, outcome]  # the history object: started, then ended
    assert result["decision"] == outcome and registry.champion("m") == champion
    assert CANARY not in registry.aliases and ROLLOUT_TAG not in registry.tags
    assert result["reasons"] or outcome == "promoted"


def test_a_newer_challenger_replaces_the_running_rollout() -> None:
    registry, history = MemoryRegistry("1"), []
    first = rollouts.start(
        registry, "m", "2", "1", RolloutPolicy(mode="canary"), "tests", history=_keep(history)
    )
    second = rollouts.start(
        registry, "m", "3", "1", RolloutPolicy(mode="canary"), "tests", history=_keep(history)
    )
    assert rollouts.running(registry, "m") == second != first and registry.aliases[CANARY] == "3"


# --------------------------------------------------------------------------- integration


CANARY_DATASET, SHADOW_DATASET = "ai4i-canary", "ai4i-shadow"
SHADOW_MODEL = "ai4i-shadow-failure"  # model_name of tests/contracts/ai4i_shadow.yaml


def _publish_pair(stack: Any, seeds: list[int], dataset: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Two fixture versions; the weaker becomes champion, the other is the challenger."""
    from tests.fixtures_model import publish_models, set_alias

    published = publish_models(stack.config.function_env(), seeds, alias=None, contract=dataset)
    weaker, stronger = sorted(published, key=lambda p: p["meta"]["metrics"]["roc_auc"])
    set_alias(stack, weaker["version"], model_name=weaker["model_name"])
    return weaker, stronger


def _register(stack: Any, published: dict[str, Any]) -> None:
    name, version, metrics = published["model_name"], published["version"], published["meta"]["metrics"]
    event = ModelRegistered(
        model_name=name,
        version=version,
        run_id=published["run_id"],
        model_uri=f"models:/{name}/{version}",
        study_id="rollout-test",
        dataset_checksum="0" * 64,
        feature_view="ai4i_readings",
        metrics={k: float(metrics[k]) for k in ("roc_auc", "pr_auc", "f1", "threshold")},
    ).to_event(source="/tests/test_rollout", subject=f"{name}/{version}")
    assert stack.post_event(event).status == 202


def _wait_event(
    stack: Any, trigger: str, published: dict[str, Any], event_type: str | None, timeout: float
) -> dict[str, Any]:
    """The first event of ``event_type`` (any, if None) the ml-recorder got on this version."""
    from tests.conftest import wait_until
    from tests.test_promotion import ml_records

    subject = f"{published['model_name']}/{published['version']}"

    def found() -> dict[str, Any] | None:
        rows = ml_records(stack, trigger, subject)
        return next((r for r in rows if event_type is None or r["type"] == event_type), None)

    return wait_until(found, timeout=timeout, interval=0.5, what=f"{event_type or trigger} for {subject}")


def _predict(stack: Any, dataset: str, request_id: str, rows: list[dict[str, Any]]) -> str:
    """The version that answered one JSON request (the rows) with this request id."""
    from tests.fixtures_model import HTTP

    resp = HTTP.request(
        "POST",
        stack.config.function_url("predict") + "predict",
        body=json.dumps({"dataset": dataset, "instances": rows}).encode(),
        headers={"Content-Type": "application/json", "X-Request-Id": request_id, "Cache-Control": "no-cache"},
    )
    assert resp.status == 200, resp.data
    doc = json.loads(resp.data)
    assert doc["request_id"] == request_id
    return str(doc["model_version"])


def _rows() -> list[dict[str, Any]]:
    """Dataset rows, one per request (the monitor compares the two sides' probabilities)."""
    from tests.fixtures_model import ai4i_rows

    contract = load_contract(TEST_CONTRACTS / "ai4i_canary.yaml")
    return [{name: row[name] for name in contract.raw_inputs} for row in ai4i_rows()[:400]]


def _registry(stack: Any) -> Any:
    from shared.registry_alias import RegistryClient

    return RegistryClient(stack.config.url("mlflow"))


def _ids_with_canary_share(run: str, inside: int) -> list[str]:
    """Request ids ``<run>-0``, ``<run>-1``, ... up to the one that makes ``inside`` of them fall in
    the canary's 30 % (more than the policy's 40 minRequests, whatever the random run prefix)."""
    ids: list[str] = []
    while sum(bucket(i) < 0.3 for i in ids) < inside:
        ids.append(f"{run}-{len(ids)}")
    return ids


def _routed(stack: Any, run: str, candidate: str, rows: list[dict[str, Any]]) -> None:
    """Until predict routes by the rollout: a request id in the candidate's share gets it."""
    from tests.conftest import wait_until

    inside = next(f"{run}-probe-{i}" for i in range(1000) if bucket(f"{run}-probe-{i}") < 0.3)
    wait_until(
        lambda: _predict(stack, CANARY_DATASET, inside, rows[:1]) == candidate,
        timeout=60,
        what="predict routing the canary",
    )


def _assert_promoted_by_the_monitor(
    stack: Any, champion: dict[str, Any], challenger: dict[str, Any]
) -> dict[str, Any]:
    name = challenger["model_name"]
    decision = _wait_event(stack, "mlrec-model-decided", challenger, None, 240)
    assert decision["type"] == "dev.faaspipe.model.promoted.v1", decision["data"]
    assert decision["data"]["decided_by"].startswith("monitor@")
    assert decision["data"]["previous_version"] == champion["version"]
    live = {g["name"] for g in decision["data"]["gates"]}
    assert {"roc_auc", "error_rate", "latency_p95_ratio", "prediction_psi"} <= live
    registry = _registry(stack)
    assert registry.alias_version(name, "champion") == challenger["version"]
    assert registry.alias_version(name, CANARY) is None
    assert registry.model_tag(name, ROLLOUT_TAG) is None
    decided = _wait_event(stack, "mlrec-rollout", challenger, "dev.faaspipe.rollout.decided.v1", 30)
    assert decided["data"]["decision"] == "promote"
    return decided["data"]["evidence"]


@integration
def test_a_canary_takes_its_share_by_request_id_and_the_monitor_promotes_it(stack: Any) -> None:
    champion, challenger = _publish_pair(stack, [301, 302], CANARY_DATASET)
    rows, run = _rows(), uuid.uuid4().hex[:8]
    assert _predict(stack, CANARY_DATASET, f"{run}-warm", rows[:1]) == champion["version"]
    _register(stack, challenger)
    started = _wait_event(stack, "mlrec-rollout", challenger, "dev.faaspipe.rollout.started.v1", 240)
    assert started["data"]["champion_version"] == champion["version"] and started["data"]["share"] == 0.3
    assert _registry(stack).alias_version(CANARY_MODEL, CANARY) == challenger["version"]
    _routed(stack, run, challenger["version"], rows)

    ids = _ids_with_canary_share(run, 50)
    answered = {rid: _predict(stack, CANARY_DATASET, rid, [rows[i % len(rows)]]) for i, rid in enumerate(ids)}
    expected = {rid: challenger["version"] if bucket(rid) < 0.3 else champion["version"] for rid in ids}
    assert answered == expected  # the same id always lands on the same side

    evidence = _assert_promoted_by_the_monitor(stack, champion, challenger)
    assert evidence["candidate"]["requests"] >= 40


@integration
def test_a_miscalibrated_canary_is_rolled_back_by_the_monitor(stack: Any) -> None:
    """The challenger ranks rows exactly as the champion does (same seed: the same ROC-AUC, so the
    offline gates pass) but its base score is 0.9: every probability far too high. Live, the
    distance between the two sides' probabilities gives it away."""
    from tests.fixtures_model import publish_models

    env = stack.config.function_env()
    (champion,) = publish_models(env, [307], alias="champion", contract=CANARY_DATASET)
    (challenger,) = publish_models(env, [307], alias=None, contract=CANARY_DATASET, base_score=0.9)
    rows, run = _rows(), uuid.uuid4().hex[:8]
    _register(stack, challenger)
    _wait_event(stack, "mlrec-rollout", challenger, "dev.faaspipe.rollout.started.v1", 240)
    _routed(stack, run, challenger["version"], rows)
    for i, rid in enumerate(_ids_with_canary_share(run, 50)):
        _predict(stack, CANARY_DATASET, rid, [rows[i % len(rows)]])

    rejected = _wait_event(stack, "mlrec-model-decided", challenger, None, 240)
    assert rejected["type"] == "dev.faaspipe.model.rejected.v1", rejected["data"]
    assert rejected["data"]["decided_by"].startswith("monitor@")
    assert any(r.startswith("prediction_psi:") for r in rejected["data"]["reasons"]), rejected["data"]
    decided = _wait_event(stack, "mlrec-rollout", challenger, "dev.faaspipe.rollout.decided.v1", 30)
    assert decided["data"]["decision"] == "rollback"
    evidence = decided["data"]["evidence"]
    assert evidence["candidate"]["probability_mean"] > 5 * evidence["champion"]["probability_mean"]
    registry = _registry(stack)
    assert registry.alias_version(CANARY_MODEL, "champion") == champion["version"]
    assert registry.alias_version(CANARY_MODEL, CANARY) is None

    status = stack.cli("rollout", "status", CANARY_MODEL, "--json")
    assert status.returncode == 0, status.stderr
    past = {h["candidate"]: h for h in json.loads(status.stdout)["history"]}[challenger["version"]]
    assert past["shares"] == {champion["version"]: 0.7, challenger["version"]: 0.3}
    assert past["outcome"] == "rejected" and past["ended_at"] >= past["started_at"]


@integration
def test_a_shadow_candidate_is_never_returned_and_is_judged_on_the_mirrored_requests(stack: Any) -> None:
    champion, challenger = _publish_pair(stack, [305, 306], SHADOW_DATASET)
    rows, run = _rows(), uuid.uuid4().hex[:8]
    _register(stack, challenger)
    started = _wait_event(stack, "mlrec-rollout", challenger, "dev.faaspipe.rollout.started.v1", 240)
    assert started["data"]["mode"] == "shadow" and started["data"]["share"] == 0.0
    answered = [_predict(stack, SHADOW_DATASET, f"{run}-{i}", [rows[i]]) for i in range(120)]
    assert set(answered) == {champion["version"]}  # mirrored, never returned

    evidence = _assert_promoted_by_the_monitor(stack, champion, challenger)
    assert evidence["candidate"]["requests"] >= 40  # the candidate saw the mirrored requests


@integration
def test_a_rollout_rolled_back_by_hand_keeps_the_champion(stack: Any) -> None:
    champion, challenger = _publish_pair(stack, [303, 304], CANARY_DATASET)
    rows, run = _rows(), uuid.uuid4().hex[:8]
    _register(stack, challenger)
    _wait_event(stack, "mlrec-rollout", challenger, "dev.faaspipe.rollout.started.v1", 240)
    _routed(stack, run, challenger["version"], rows)

    status = stack.cli("rollout", "status", CANARY_MODEL, "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["canary"] == challenger["version"]
    result = stack.cli("rollout", "rollback", CANARY_MODEL, "--reason", "tests: looks wrong")
    assert result.returncode == 0, result.stderr

    rejected = _wait_event(stack, "mlrec-model-decided", challenger, None, 120)
    assert rejected["type"] == "dev.faaspipe.model.rejected.v1", rejected["data"]
    assert rejected["data"]["decided_by"].startswith("cli:")
    assert any("tests: looks wrong" in r for r in rejected["data"]["reasons"])
    registry = _registry(stack)
    assert registry.alias_version(CANARY_MODEL, "champion") == champion["version"]
    assert registry.alias_version(CANARY_MODEL, CANARY) is None
    inside = next(f"{run}-probe-{i}" for i in range(1000) if bucket(f"{run}-probe-{i}") < 0.3)
    from tests.conftest import wait_until

    wait_until(
        lambda: _predict(stack, CANARY_DATASET, inside, rows[:1]) == champion["version"],
        timeout=30,
        what="routing to stop",
    )
