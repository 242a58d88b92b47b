"""Promotion: gates, compare-and-set on the champion alias, audit records.

Unit tests drive ``functions.promote.decision`` with an in-memory registry. Integration tests
(marked) run on the real stack: model versions are registered under a model name unique to the
test run (the session's other tests train and promote ``ai4i-machine-failure`` meanwhile), with
real serving artefacts (an XGBoost model trained in the train venv), and ``model.registered``
events go through the broker to the promote function; the ``ml-recorder`` test function records
its replies. The compare-and-set test runs the promote function's decision code against the
stack's real MLflow registry, moving the alias between its read and its write.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from functions.promote.decision import ChampionKeptChanging, Decision, decide, roc_auc_gate
from tests.fixtures_model import dataset_csv

REPO = Path(__file__).resolve().parent.parent
TRAIN_PYTHON = REPO / ".venvs" / "train" / "bin" / "python"
AI4I_CSV = dataset_csv()  # the real file ($FAASPIPE_AI4I_CSV or ../shared), else a generated one
integration = pytest.mark.integration
DECISION_TIMEOUT_S = 240


# --------------------------------------------------------------------------- unit: the decision


class MemoryRegistry:
    """Champion alias and scores in memory; ``on_read`` can move the alias behind the decider's back."""

    def __init__(self, champion: str | None, scores: dict[str, float]) -> None:
        self.current = champion
        self.scores = scores
        self.reads = 0
        self.writes: list[str] = []
        self.on_read: Callable[[int], None] | None = None

    def champion(self, model_name: str) -> str | None:
        self.reads += 1
        if self.on_read is not None:
            self.on_read(self.reads)
        return self.current

    def set_champion(self, model_name: str, version: str) -> None:
        self.writes.append(version)
        self.current = version


def _evaluator(registry: MemoryRegistry, challenger: float) -> Callable[[str | None], list[dict[str, Any]]]:
    def evaluate(champion: str | None) -> list[dict[str, Any]]:
        score = registry.scores.get(champion) if champion else None
        return [roc_auc_gate(challenger, champion, score, tolerance=0.005, floor=0.90)]

    return evaluate


def test_first_model_is_judged_against_the_floor() -> None:
    registry = MemoryRegistry(None, {})
    decision = decide(registry, "m", "1", _evaluator(registry, 0.95))
    assert decision.outcome == "promoted" and registry.current == "1"
    assert decision.champion_before is None and decision.champion_after == "1"
    assert "floor" in decision.gates[0]["detail"]

    registry = MemoryRegistry(None, {})
    decision = decide(registry, "m", "1", _evaluator(registry, 0.85))
    assert decision.outcome == "rejected" and registry.current is None and not registry.writes
    assert decision.reasons and decision.reasons[0].startswith("roc_auc:")


def test_challenger_within_tolerance_of_the_champion_is_promoted() -> None:
    registry = MemoryRegistry("1", {"1": 0.980})
    assert decide(registry, "m", "2", _evaluator(registry, 0.976)).outcome == "promoted"
    registry = MemoryRegistry("1", {"1": 0.980})
    decision = decide(registry, "m", "2", _evaluator(registry, 0.974))
    assert decision.outcome == "rejected" and registry.current == "1"
    assert decision.gates[0]["threshold"] == pytest.approx(0.975)


def test_champion_moved_between_read_and_write_is_evaluated_again() -> None:
    registry = MemoryRegistry("1", {"1": 0.95, "9": 0.99})

    def someone_promotes_9(reads: int) -> None:
        if reads == 2:  # the re-read just before the write
            registry.current = "9"

    registry.on_read = someone_promotes_9
    decision = decide(registry, "m", "2", _evaluator(registry, 0.97))
    # against v1 it would have won; against v9, promoted meanwhile, it loses: v9 stays
    assert decision.outcome == "rejected"
    assert registry.current == "9" and not registry.writes
    assert decision.champion_before == "9"
    assert [r["outcome"] for r in decision.rounds] == ["champion changed", "rejected"]


def test_champion_that_keeps_moving_gives_up_without_writing() -> None:
    registry = MemoryRegistry("1", {})
    registry.on_read = lambda reads: setattr(registry, "current", str(reads))
    with pytest.raises(ChampionKeptChanging):
        decide(registry, "m", "2", _evaluator(registry, 0.97), max_rounds=3)
    assert not registry.writes


def test_prepare_runs_before_the_compare_and_set_read() -> None:
    registry = MemoryRegistry(None, {})
    seen: list[tuple[str | None, int]] = []
    decide(
        registry, "m", "1", _evaluator(registry, 0.95), prepare=lambda c, g: seen.append((c, registry.reads))
    )
    assert seen == [(None, 1)]  # after the first read, before the re-read


def test_version_already_champion_is_not_written_again() -> None:
    registry = MemoryRegistry("3", {"3": 0.97})
    decision = decide(registry, "m", "3", _evaluator(registry, 0.97))
    assert isinstance(decision, Decision) and decision.outcome == "promoted"
    assert not registry.writes


def test_input_schema_gate_compares_with_the_contract_serving_encodes() -> None:
    from functions.promote.gates import input_schema_gate
    from shared.contracts import get_contract

    contract = get_contract("ai4i")
    expected = list(contract.encoded_features)
    meta = {"contract": contract.ref, "features": expected}
    assert input_schema_gate(meta, contract, len(expected))["passed"]
    assert not input_schema_gate(None, contract, None)["passed"]
    reordered = input_schema_gate({**meta, "features": expected[::-1]}, contract, len(expected))
    assert not reordered["passed"] and "different order" in reordered["detail"]
    missing = input_schema_gate({**meta, "features": expected[:-1]}, contract, len(expected) - 1)
    assert (
        not missing["passed"] and expected[-1] in missing["detail"] and "booster takes" in missing["detail"]
    )
    other = input_schema_gate({**meta, "contract": "ai4i@0"}, contract, len(expected))
    assert not other["passed"] and "ai4i@0" in other["detail"]


# --------------------------------------------------------------------------- integration helpers

TRAIN_SMALL_MODEL = r"""
import json, sys, warnings
warnings.filterwarnings("ignore")
from shared import modelling
from shared.contracts import get_contract
from functions.train.fit import train_final
contract = get_contract("ai4i")
frame = modelling.frame_from_csv(contract, sys.argv[1])
train, holdout = modelling.split_holdout(contract, frame, seed=42)
model = train_final(contract, train, holdout, {"max_depth": 4, "learning_rate": 0.2}, best_iteration=49, seed=42)
out = sys.argv[2]
open(f"{out}/model.json", "wb").write(bytes(model.booster.save_raw("json")))
open(f"{out}/reference.csv", "wb").write(model.reference.to_csv(index=False).encode())
print(json.dumps({"metrics": model.metrics, "threshold": model.threshold}))
"""


@pytest.fixture(scope="module")
def small_model() -> dict[str, Any]:
    """A real XGBoost model + drift reference trained on the AI4I file (train venv, ~10 s)."""
    if not TRAIN_PYTHON.exists() or not AI4I_CSV.exists():
        pytest.skip("needs the train venv and the AI4I CSV")
    out = tempfile.mkdtemp(prefix="promote-test-")
    result = subprocess.run(
        [str(TRAIN_PYTHON), "-c", TRAIN_SMALL_MODEL, str(AI4I_CSV), out],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=600,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    info = json.loads(result.stdout.strip().splitlines()[-1])
    info["model_json"] = Path(out, "model.json").read_bytes()
    info["reference_csv"] = Path(out, "reference.csv").read_bytes()
    return info


@pytest.fixture(scope="module")
def mlflow_client(stack):  # type: ignore[no-untyped-def]
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=stack.config.url("mlflow"))


def _put(s3: Any, key: str, data: bytes, content_type: str) -> None:
    import io

    from shared import layout

    s3.put_object(layout.MODELS, key, io.BytesIO(data), len(data), content_type=content_type)


def register_version(
    stack: Any,
    client: Any,
    model: dict[str, Any],
    name: str,
    *,
    roc_auc: float,
    features: list[str] | None = None,
) -> str:
    """Register a version of ``name`` with the given holdout ROC-AUC and its serving artefacts."""
    from mlflow.exceptions import MlflowException

    from shared import layout
    from shared.contracts import get_contract

    contract = get_contract("ai4i")
    experiment = client.get_experiment_by_name("faaspipe-promotion-tests")
    experiment_id = (
        experiment.experiment_id if experiment else client.create_experiment("faaspipe-promotion-tests")
    )
    run = client.create_run(experiment_id, run_name=f"{name} roc={roc_auc}")
    client.log_text(run.info.run_id, model["model_json"].decode(), "model/model.json")
    client.set_terminated(run.info.run_id)
    try:
        client.create_registered_model(name)
    except MlflowException as exc:
        if "RESOURCE_ALREADY_EXISTS" not in str(exc) and "already exists" not in str(exc).lower():
            raise
    version = str(
        client.create_model_version(
            name,
            f"runs:/{run.info.run_id}/model",
            run.info.run_id,
            tags={"faaspipe.holdout_roc_auc": f"{roc_auc:.6f}", "faaspipe.test": "promotion"},
        ).version
    )
    metrics = {**model["metrics"], "roc_auc": roc_auc}
    meta = {
        "model_name": name,
        "version": version,
        "contract": contract.ref,
        "features": features if features is not None else list(contract.encoded_features),
        "raw_inputs": list(contract.raw_inputs),
        "threshold": model["threshold"],
        "metrics": metrics,
        "run_id": run.info.run_id,
        "study_id": "promotion-test",
        "dataset_version": "test",
        "trained_at": "2026-01-01T00:00:00+00:00",
    }
    s3 = stack.s3()
    _put(s3, layout.serving_model(name, version, "model.json"), model["model_json"], "application/json")
    _put(s3, layout.serving_model(name, version, "reference.csv"), model["reference_csv"], "text/csv")
    _put(s3, layout.serving_model(name, version, "meta.json"), json.dumps(meta).encode(), "application/json")
    return version


def registered_event(
    name: str, version: str, model: dict[str, Any], roc_auc: float, event_id: str | None = None
):  # type: ignore[no-untyped-def]
    from events import ModelRegistered

    metrics = {k: float(model["metrics"][k]) for k in ("pr_auc", "f1", "threshold", "brier")}
    return ModelRegistered(
        model_name=name,
        version=version,
        run_id="promotion-test",
        model_uri=f"models:/{name}/{version}",
        study_id="promotion-test",
        dataset_checksum="0" * 64,
        feature_view="ai4i_readings",
        metrics={**metrics, "roc_auc": roc_auc},
    ).to_event(source="/tests/test_promotion", subject=f"{name}/{version}", id=event_id or str(uuid.uuid4()))


def ml_records(stack: Any, trigger: str, subject: str) -> list[dict[str, Any]]:
    import urllib3

    url = stack.config.function_url("ml-recorder") + "records"
    resp = urllib3.request("GET", url, fields={"trigger": trigger, "subject": subject}, timeout=10)
    assert resp.status == 200, resp.data
    return json.loads(resp.data)


def decision_of(stack: Any, name: str, version: str, count: int = 1) -> list[dict[str, Any]]:
    from tests.conftest import wait_until

    return wait_until(
        lambda: (
            (rows := ml_records(stack, "mlrec-model-decided", f"{name}/{version}"))
            and len(rows) >= count
            and rows
        ),
        timeout=DECISION_TIMEOUT_S,
        interval=0.5,
        what=f"the promotion decision on {name} v{version}",
    )


def audit_record(stack: Any, name: str, version: str) -> dict[str, Any]:
    from shared import layout

    resp = stack.s3().get_object(layout.MODELS, layout.audit_record(name, version))
    try:
        return json.loads(resp.read())
    finally:
        resp.close()
        resp.release_conn()


# --------------------------------------------------------------------------- integration: events


@pytest.fixture(scope="module")
def model_name() -> str:
    return f"ai4i-promotion-test-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def first_model(stack, mlflow_client, small_model, model_name) -> str:  # type: ignore[no-untyped-def]
    version = register_version(stack, mlflow_client, small_model, model_name, roc_auc=0.97)
    response = stack.post_event(registered_event(model_name, version, small_model, 0.97))
    assert response.status == 202, response.data
    return version


@integration
def test_first_model_is_promoted(stack, mlflow_client, first_model, model_name) -> None:  # type: ignore[no-untyped-def]
    [reply] = decision_of(stack, model_name, first_model)
    assert reply["type"] == "dev.faaspipe.model.promoted.v1", reply
    data = reply["data"]
    assert data["previous_version"] is None and data["alias"] == "champion"
    assert [g["name"] for g in data["gates"]] == ["roc_auc", "latency", "input_schema"]
    assert all(g["passed"] for g in data["gates"]), data["gates"]
    assert data["decided_by"].startswith("promote@")
    assert mlflow_client.get_model_version_by_alias(model_name, "champion").version == first_model

    record = audit_record(stack, model_name, first_model)
    assert record["status"] == "final" and record["decision"] == "promoted"
    assert record["champion_before"] is None and record["champion_after"] == first_model
    assert record["gates"] == data["gates"] and record["decided_at"] == data["decided_at"]
    tag = json.loads(mlflow_client.get_model_version(model_name, first_model).tags["faaspipe.decision"])
    assert tag["decision"] == "promoted" and tag["gates"] == {
        "roc_auc": True,
        "latency": True,
        "input_schema": True,
    }
    assert tag["audit"].endswith(f"audit/{model_name}/{first_model}.json")


@integration
def test_worse_model_is_rejected_on_roc_auc(
    stack, mlflow_client, small_model, first_model, model_name
) -> None:  # type: ignore[no-untyped-def]
    decision_of(stack, model_name, first_model)  # v1 is champion
    worse = register_version(stack, mlflow_client, small_model, model_name, roc_auc=0.95)
    assert stack.post_event(registered_event(model_name, worse, small_model, 0.95)).status == 202
    [reply] = decision_of(stack, model_name, worse)
    assert reply["type"] == "dev.faaspipe.model.rejected.v1", reply
    data = reply["data"]
    gates = {g["name"]: g for g in data["gates"]}
    assert not gates["roc_auc"]["passed"]
    assert gates["roc_auc"]["value"] == pytest.approx(0.95)
    assert gates["roc_auc"]["threshold"] == pytest.approx(0.97 - 0.005)
    assert gates["latency"]["passed"] and gates["input_schema"]["passed"]
    assert data["champion_version"] == first_model
    assert any(r.startswith("roc_auc:") for r in data["reasons"])
    assert mlflow_client.get_model_version_by_alias(model_name, "champion").version == first_model
    record = audit_record(stack, model_name, worse)
    assert record["decision"] == "rejected" and record["champion_after"] == first_model

    # the same registration delivered again (new event id, so the runtime does not drop it):
    # answered from the audit record, not decided again
    assert stack.post_event(registered_event(model_name, worse, small_model, 0.95)).status == 202
    first, second = decision_of(stack, model_name, worse, count=2)[:2]
    assert second["id"] == first["id"] and second["data"] == first["data"]
    assert audit_record(stack, model_name, worse) == record


@integration
def test_model_with_other_inputs_is_rejected_on_input_schema(
    stack, mlflow_client, small_model, model_name
) -> None:  # type: ignore[no-untyped-def]
    from shared.contracts import get_contract

    features = list(reversed(get_contract("ai4i").encoded_features))
    version = register_version(stack, mlflow_client, small_model, model_name, roc_auc=0.99, features=features)
    assert stack.post_event(registered_event(model_name, version, small_model, 0.99)).status == 202
    [reply] = decision_of(stack, model_name, version)
    assert reply["type"] == "dev.faaspipe.model.rejected.v1"
    gates = {g["name"]: g for g in reply["data"]["gates"]}
    assert gates["roc_auc"]["passed"] and not gates["input_schema"]["passed"]
    assert "different order" in gates["input_schema"]["detail"]


# --------------------------------------------------------------------------- integration: compare-and-set


@integration
def test_compare_and_set_against_the_real_registry(stack, mlflow_client, small_model) -> None:  # type: ignore[no-untyped-def]
    """The champion moves between the decision's read and its write → evaluated again, never overwritten."""
    from functions.promote.registry import MlflowRegistry

    name = f"ai4i-cas-test-{uuid.uuid4().hex[:8]}"
    weak, candidate, strong = (
        register_version(stack, mlflow_client, small_model, name, roc_auc=auc) for auc in (0.93, 0.975, 0.99)
    )
    registry = MlflowRegistry(mlflow_client)
    registry.set_champion(name, weak)

    def evaluate(champion: str | None) -> list[dict[str, Any]]:
        score = registry.roc_auc(name, champion) if champion else None
        return [roc_auc_gate(0.975, champion, score, tolerance=0.005, floor=0.9)]

    def move_alias_once(to: str) -> Callable[[str | None, list[dict[str, Any]]], None]:
        moved: list[str] = []

        def prepare(champion: str | None, gates: list[dict[str, Any]]) -> None:
            if not moved:  # another decider promotes ``to`` right after our read
                mlflow_client.set_registered_model_alias(name, "champion", to)
                moved.append(to)

        return prepare

    # vs the weak champion the candidate would win; the strong one arrives meanwhile and stays
    decision = decide(registry, name, candidate, evaluate, prepare=move_alias_once(strong))
    assert decision.outcome == "rejected"
    assert [r["outcome"] for r in decision.rounds] == ["champion changed", "rejected"]
    assert decision.rounds[0]["champion"] == weak and decision.rounds[0]["reread"] == strong
    assert registry.champion(name) == strong

    # the other way round: a weaker champion arrives meanwhile → promoted over that one
    decision = decide(registry, name, candidate, evaluate, prepare=move_alias_once(weak))
    assert decision.outcome == "promoted"
    assert decision.champion_before == weak and decision.champion_after == candidate
    assert registry.champion(name) == candidate
