"""Unit tests of the modelling code: ``shared/modelling.py``, the tuner's study logic and search
space, the final fit. No stack needed.

The test process runs in the platform venv (no xgboost / scikit-learn / scikit-optimize): the
pure parts (study state logic) are tested here directly; the parts that need the train stack run
once in the train venv (``.venvs/train/bin/python``, a subprocess) which reports what it observed
as JSON, and the tests assert on that report. They are skipped when the train venv is missing.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from functions.tune import study
from tests.fixtures_model import dataset_csv

REPO = Path(__file__).resolve().parent.parent
TRAIN_PYTHON = REPO / ".venvs" / "train" / "bin" / "python"
AI4I_CSV = dataset_csv()  # the real file ($FAASPIPE_AI4I_CSV or ../shared), else a generated one
needs_train_env = pytest.mark.skipif(
    not TRAIN_PYTHON.exists() or not AI4I_CSV.exists(),
    reason="needs the train venv (.venvs/train) and the AI4I CSV",
)


def run_in_train_env(code: str, timeout: float = 600) -> Any:
    """Run ``code`` with the train venv's Python; its last stdout line is JSON, returned decoded."""
    result = subprocess.run(
        [str(TRAIN_PYTHON), "-c", code],
        cwd=REPO,
        env={
            **os.environ,
            "PYTHONPATH": str(REPO),
            "OMP_NUM_THREADS": "1",
            "FAASPIPE_AI4I_CSV": str(AI4I_CSV),
        },
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, f"train-env code failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    return json.loads(result.stdout.strip().splitlines()[-1])


# Everything that needs xgboost/scikit-learn, observed in one train-venv process.
TRAIN_ENV_PROBE = r"""
import json, os, warnings
warnings.filterwarnings("ignore")
import numpy as np
from shared import modelling
from shared.contracts import get_contract
from functions.tune.space import XGBOOST_DEFAULTS, XGBOOST_SPACE, initial_design, params_of, suggest
from functions.train.fit import REFERENCE_ROWS, train_final

out = {}
contract = get_contract("ai4i")
frame = modelling.frame_from_csv(contract, os.environ["FAASPIPE_AI4I_CSV"])
out["frame_columns"] = list(frame.columns)
out["frame_rows"] = len(frame)
out["frame_sorted"] = bool(frame[contract.entity_key].is_monotonic_increasing)

# vectorised encoding == contract.encode, row by row
matrix = modelling.encode_frame(contract, frame)
rows = frame.sample(200, random_state=0)
out["encode_equal"] = all(
    np.allclose(matrix[i], np.asarray(contract.encode(frame.iloc[i].to_dict()), dtype=np.float32))
    for i in rows.index
)
out["encode_shape"] = list(matrix.shape)
out["encode_dtype"] = str(matrix.dtype)

# stratified, deterministic holdout
train, holdout = modelling.split_holdout(contract, frame, fraction=0.25, seed=42)
train2, holdout2 = modelling.split_holdout(contract, frame, fraction=0.25, seed=42)
_, holdout3 = modelling.split_holdout(contract, frame, fraction=0.25, seed=7)
key = contract.entity_key
out["split_sizes"] = [len(train), len(holdout)]
out["split_rates"] = [float(frame[contract.label].mean()), float(train[contract.label].mean()),
                      float(holdout[contract.label].mean())]
out["split_disjoint"] = not set(train[key]) & set(holdout[key])
out["split_covers"] = set(train[key]) | set(holdout[key]) == set(frame[key])
out["split_deterministic"] = list(holdout[key]) == list(holdout2[key]) and list(train[key]) == list(train2[key])
out["split_seed_matters"] = set(holdout[key]) != set(holdout3[key])

# checksum: row order does not matter, content does
checksum = modelling.frame_checksum(contract, frame)
shuffled = frame.sample(frac=1.0, random_state=1)
changed = frame.copy()
changed.loc[0, "torque_nm"] = changed.loc[0, "torque_nm"] + 1.0
out["checksum"] = checksum
out["checksum_order_free"] = modelling.frame_checksum(contract, shuffled) == checksum
out["checksum_content"] = modelling.frame_checksum(contract, changed) != checksum

# cross-validation: deterministic, sane, one best iteration for all folds
small = train.sample(3000, random_state=0).reset_index(drop=True)
x, y = modelling.encode_frame(contract, small), modelling.labels(contract, small)
params = {"learning_rate": 0.1, "max_depth": 4}
cv1 = modelling.cross_validate(x, y, params, seed=42, max_rounds=300, early_stopping_rounds=20)
cv2 = modelling.cross_validate(x, y, params, seed=42, max_rounds=300, early_stopping_rounds=20)
out["cv"] = {"score": cv1.score, "std": cv1.score_std, "best": cv1.best_iteration, "rounds": cv1.rounds,
             "folds": len(cv1.fold_scores), "n_rounds": cv1.n_rounds}
out["cv_deterministic"] = cv1 == cv2
out["booster_params"] = modelling.booster_params({"max_depth": 4.0, "nthread": 8}, seed=3)

# checkpoints: the best mean score so far every report_every rounds; True from the callback prunes
seen = []
cv3 = modelling.cross_validate(x, y, params, seed=42, max_rounds=300, early_stopping_rounds=20,
                               report_every=10, on_checkpoint=lambda step, score: seen.append((step, score)) or False)
out["checkpoints"] = {"seen": seen, "same_result": cv3 == cv1}
try:
    modelling.cross_validate(x, y, params, seed=42, max_rounds=300, early_stopping_rounds=20,
                             report_every=10, on_checkpoint=lambda step, score: step >= 20)
    out["pruned"] = None
except modelling.TrialPruned as exc:
    out["pruned"] = {"step": exc.step, "score": exc.score, "rounds": exc.rounds}

# out-of-fold predictions cover every row, deterministically
oof1 = modelling.out_of_fold_predictions(x, y, params, n_rounds=30, seed=42)
oof2 = modelling.out_of_fold_predictions(x, y, params, n_rounds=30, seed=42)
out["oof_complete"] = bool(np.isfinite(oof1).all() and ((oof1 >= 0) & (oof1 <= 1)).all())
out["oof_deterministic"] = bool(np.array_equal(oof1, oof2))

# F1-optimal threshold == brute force over the observed probabilities
rng = np.random.default_rng(0)
toy_y = rng.integers(0, 2, 300)
toy_p = np.clip(toy_y * 0.3 + rng.random(300) * 0.7, 0, 1)
threshold, f1 = modelling.best_f1_threshold(toy_y, toy_p)
def f1_at(t):
    pred = toy_p >= t
    tp = int((pred & (toy_y == 1)).sum()); fp = int((pred & (toy_y == 0)).sum()); fn = int((~pred & (toy_y == 1)).sum())
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)
out["threshold"] = [threshold, f1, max(f1_at(t) for t in np.unique(toy_p)), f1_at(threshold)]
out["metrics"] = modelling.classification_metrics(toy_y, toy_p, threshold)

# search space: defaults first, deterministic design, suggestions in bounds and deterministic
design = initial_design(XGBOOST_SPACE, 6, seed=42)
out["design_first"] = params_of(XGBOOST_SPACE, design[0])
out["design_defaults"] = XGBOOST_DEFAULTS
out["design_deterministic"] = design == initial_design(XGBOOST_SPACE, 6, seed=42)
out["design_distinct"] = len({tuple(p) for p in design}) == len(design)
finished = [(p, 0.95 + 0.005 * i) for i, p in enumerate(design[:5])]
s1 = suggest(XGBOOST_SPACE, finished, [design[5]], seed=47)
s2 = suggest(XGBOOST_SPACE, finished, [design[5]], seed=47)
def inside(point):
    return all(d.low <= v <= d.high and (d.kind == "real" or float(v).is_integer())
               for d, v in zip(XGBOOST_SPACE, point))
out["suggest_deterministic"] = s1 == s2
out["suggest_inside"] = inside(s1) and all(inside(p) for p in design)
out["suggest_new"] = s1 not in design
out["suggest_without_results"] = inside(suggest(XGBOOST_SPACE, [], [design[0]], seed=1))

# final fit: threshold from OOF (train part), holdout metrics, drift reference
model = train_final(contract, small, holdout.sample(1000, random_state=0), params, best_iteration=29, seed=42)
raw = bytes(model.booster.save_raw("json"))
import xgboost as xgb
reloaded = xgb.Booster(model_file=bytearray(raw))
hx = modelling.encode_frame(contract, holdout.head(50))
out["final"] = {
    "n_rounds": model.n_rounds,
    "threshold": model.threshold,
    "metrics": model.metrics,
    "reference_rows": len(model.reference),
    "reference_columns": list(model.reference.columns),
    "reference_types": sorted(set(model.reference["type"])),
    "booster_features": model.booster.feature_names,
    "reload_equal": bool(np.allclose(modelling.predict(model.booster, hx), modelling.predict(reloaded, hx))),
    "json_model": json.loads(raw).get("learner") is not None,
    "reference_cap": REFERENCE_ROWS,
}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def probe() -> dict[str, Any]:
    return run_in_train_env(TRAIN_ENV_PROBE)


def ai4i():  # type: ignore[no-untyped-def]
    from shared.contracts import get_contract

    return get_contract("ai4i")


# --------------------------------------------------------------------------- train env


@needs_train_env
def test_training_frame_has_entity_time_label_and_model_features(probe: dict[str, Any]) -> None:
    contract = ai4i()
    assert probe["frame_columns"] == [
        contract.entity_key,
        "event_timestamp",
        contract.label,
        *contract.model_features,
    ]
    assert probe["frame_rows"] == 10_000
    assert probe["frame_sorted"]


@needs_train_env
def test_vectorised_encoding_equals_contract_encode(probe: dict[str, Any]) -> None:
    assert probe["encode_equal"]
    assert probe["encode_shape"] == [10_000, len(ai4i().encoded_features)]
    assert probe["encode_dtype"] == "float32"


@needs_train_env
def test_holdout_is_stratified_disjoint_and_deterministic(probe: dict[str, Any]) -> None:
    assert probe["split_sizes"] == [7500, 2500]
    overall, train_rate, holdout_rate = probe["split_rates"]
    assert abs(train_rate - overall) < 0.001 and abs(holdout_rate - overall) < 0.001
    assert probe["split_disjoint"] and probe["split_covers"]
    assert probe["split_deterministic"]
    assert probe["split_seed_matters"]


@needs_train_env
def test_checksum_depends_on_content_not_row_order(probe: dict[str, Any]) -> None:
    assert len(probe["checksum"]) == 64
    assert probe["checksum_order_free"]
    assert probe["checksum_content"]


@needs_train_env
def test_cross_validation_is_deterministic_with_one_best_iteration(probe: dict[str, Any]) -> None:
    cv = probe["cv"]
    assert probe["cv_deterministic"]
    assert 0.85 < cv["score"] <= 1.0
    assert 0 <= cv["std"] < 0.1
    assert cv["folds"] == 5
    assert cv["n_rounds"] == cv["best"] + 1
    assert cv["best"] < cv["rounds"] <= cv["best"] + 21  # stopped 20 rounds after the best (or at the cap)


@needs_train_env
def test_cross_validation_reports_checkpoints_and_can_be_pruned(probe: dict[str, Any]) -> None:
    seen, cv = probe["checkpoints"]["seen"], probe["cv"]
    assert probe["checkpoints"]["same_result"]  # reporting changes nothing
    assert [step for step, _ in seen] == list(range(10, cv["rounds"] + 1, 10))[: len(seen)]
    assert len(seen) == cv["rounds"] // 10 or len(seen) == (cv["rounds"] - 1) // 10  # none after the stop
    scores = [score for _, score in seen]
    assert scores == sorted(scores)  # the best so far never decreases
    assert scores[-1] <= cv["score"] + 1e-12
    assert probe["pruned"] == {"step": 20, "score": seen[1][1], "rounds": 20}


@needs_train_env
def test_booster_params_force_one_thread_and_integer_depth(probe: dict[str, Any]) -> None:
    params = probe["booster_params"]
    assert params["nthread"] == 1
    assert params["max_depth"] == 4 and isinstance(params["max_depth"], int)
    assert params["objective"] == "binary:logistic" and params["tree_method"] == "hist"
    assert params["seed"] == 3


@needs_train_env
def test_out_of_fold_predictions_cover_every_row(probe: dict[str, Any]) -> None:
    assert probe["oof_complete"]
    assert probe["oof_deterministic"]


@needs_train_env
def test_threshold_maximises_f1(probe: dict[str, Any]) -> None:
    threshold, f1, brute_force_best, f1_at_threshold = probe["threshold"]
    assert 0.0 <= threshold <= 1.0
    assert f1 == pytest.approx(brute_force_best)
    assert f1_at_threshold == pytest.approx(brute_force_best)
    metrics = probe["metrics"]
    assert set(metrics) == {"roc_auc", "pr_auc", "f1", "threshold", "brier"}
    assert all(0.0 <= v <= 1.0 for v in metrics.values())


@needs_train_env
def test_search_space_design_and_suggestions(probe: dict[str, Any]) -> None:
    assert probe["design_first"] == probe["design_defaults"]
    assert probe["design_deterministic"] and probe["design_distinct"]
    assert probe["suggest_deterministic"]
    assert probe["suggest_inside"] and probe["suggest_new"]
    assert probe["suggest_without_results"]


@needs_train_env
def test_final_fit_artefacts(probe: dict[str, Any]) -> None:
    contract = ai4i()
    final = probe["final"]
    assert final["n_rounds"] == 30
    assert 0.0 < final["threshold"] < 1.0
    assert final["metrics"]["roc_auc"] > 0.85
    assert set(final["metrics"]) == {"roc_auc", "pr_auc", "f1", "threshold", "brier"}
    assert final["reference_rows"] == min(final["reference_cap"], 3000)
    assert final["reference_columns"] == list(contract.model_features)
    assert final["reference_types"] == ["H", "L", "M"]
    assert final["booster_features"] == list(contract.encoded_features)
    assert final["reload_equal"] and final["json_model"]


# --------------------------------------------------------------------------- study logic (pure)


def _state(**config: Any) -> dict[str, Any]:
    cfg = study.StudyConfig(
        **{"n_trials": 6, "parallelism": 2, "patience": 2, "n_initial_points": 2, **config}
    )
    return study.new_state(
        study_id="s-1",
        model_name="m",
        contract="ai4i@1",
        dataset="ai4i",
        dataset_version="v1",
        feature_view="fv",
        trigger={"type": "t", "source": "/s", "id": "1"},
        config=cfg,
        space=[],
        initial_points=[[0.1], [0.2]],
        data={},
        mlflow={"experiment_id": "1", "parent_run_id": "p"},
        created_at="2020-01-01T00:00:00Z",
        now=1000.0,
    )


def _request(state: dict[str, Any]) -> list[int]:
    numbers = study.numbers_to_request(state)
    for n in numbers:
        study.add_request(state, [n / 10], {"p": n / 10}, at="t")
    return numbers


def _finish(state: dict[str, Any], number: int, score: float | None, status: str = "ok") -> bool:
    result = {
        "trial_number": number,
        "status": status,
        "score": score,
        "duration_s": 1.0,
        "best_iteration": 9,
    }
    return study.record_result(state, result, at="t")


def test_config_from_env() -> None:
    cfg = study.StudyConfig.from_env(
        {
            "FAASPIPE_TUNE_TRIALS": "4",
            "FAASPIPE_TUNE_PARALLELISM": "3",
            "FAASPIPE_TUNE_MAX_SECONDS": "60",
            "FAASPIPE_TUNE_PATIENCE": "0",
        }
    )
    assert (cfg.n_trials, cfg.parallelism, cfg.max_seconds, cfg.patience) == (4, 3, 60.0, 0)
    assert cfg.n_initial_points == 4  # never more than the budget, never fewer than the parallelism
    assert study.StudyConfig.from_env({}) == study.StudyConfig()
    assert study.StudyConfig.from_doc(cfg.to_doc()) == cfg
    assert (cfg.pruner, cfg.pruner_report_every) == ("none", 20)
    pruning = study.StudyConfig.from_env(
        {"FAASPIPE_TUNE_PRUNER": "median", "FAASPIPE_TUNE_PRUNER_REPORT_EVERY": "10"}
    )
    assert (pruning.pruner, pruning.pruner_report_every) == ("median", 10)
    assert pruning.with_pruner(None) == pruning
    assert pruning.with_pruner("successive_halving").pruner == "successive_halving"
    with pytest.raises(ValueError):
        study.StudyConfig.from_env({"FAASPIPE_TUNE_PRUNER": "hyperband"})


def test_pruned_trials_count_as_finished_but_never_best() -> None:
    state = _state(n_trials=3, patience=0)
    _request(state)
    _finish(state, 0, 0.90)
    result = {"trial_number": 1, "status": "pruned", "score": 0.97, "duration_s": 1.0, "pruned_step": 40}
    assert study.record_result(state, result, at="t")
    entry = study.trial(state, 1)
    assert (entry["status"], entry["score"], entry["pruned_step"], entry["error"]) == (
        "pruned",
        0.97,
        40,
        None,
    )
    assert [t["number"] for t in study.finished(state)] == [0, 1]
    assert study.best_trial(state)["number"] == 0  # a partial score never wins the study
    _request(state)
    _finish(state, 2, 0.85)
    assert study.stop_reason(state, 1001.0) == "budget_trials"
    completion = study.complete(state, "budget_trials", by={}, at="t")
    assert (completion["n_trials"], completion["n_pruned"], completion["best_trial"]) == (3, 1, 0)


def test_study_id_is_derived_from_the_triggering_event() -> None:
    a = study.study_id_for("ai4i", "abc123", "/src", "id-1")
    assert a == study.study_id_for("ai4i", "abc123", "/src", "id-1")
    assert a.startswith("ai4i-abc123-") and len(a.rsplit("-", 1)[1]) == 8
    assert a != study.study_id_for("ai4i", "abc123", "/src", "id-2")
    assert a != study.study_id_for("ai4i", "abc123", "/other", "id-1")
    assert "/" not in study.study_id_for("ai4i", "v/1 x", "/s", "1")


def test_requests_keep_parallelism_within_the_budget() -> None:
    state = _state(n_trials=3)
    assert _request(state) == [0, 1]
    assert _request(state) == []  # two running already
    assert [t["number"] for t in study.unemitted(state)] == [0, 1]
    _finish(state, 0, 0.9)
    assert _request(state) == [2]
    _finish(state, 1, 0.91)
    assert _request(state) == []  # budget of 3 asked


def test_a_result_is_recorded_once() -> None:
    state = _state()
    _request(state)
    assert _finish(state, 0, 0.9)
    assert not _finish(state, 0, 0.99)  # redelivered (or a second run): ignored
    assert study.trial(state, 0)["score"] == 0.9
    assert study.trial(state, 0)["repeats"] == 1
    assert state["finish_count"] == 1
    with pytest.raises(study.UnknownTrial):
        _finish(state, 5, 0.9)


def test_failed_and_non_finite_results_count_as_failed() -> None:
    state = _state()
    _request(state)
    _finish(state, 0, None, status="failed")
    _finish(state, 1, float("nan"))
    assert [t["status"] for t in study.finished(state)] == ["failed", "failed"]
    assert study.best_trial(state) is None


def test_stops_when_the_trial_budget_is_spent() -> None:
    state = _state(n_trials=2, patience=0)
    _request(state)
    _finish(state, 0, 0.9)
    assert study.stop_reason(state, 1001.0) is None
    _finish(state, 1, 0.8)
    assert study.stop_reason(state, 1001.0) == "budget_trials"


def test_stops_on_wall_time() -> None:
    state = _state(max_seconds=60.0)
    _request(state)
    _finish(state, 0, 0.9)
    assert study.stop_reason(state, 1059.0) is None
    assert study.stop_reason(state, 1060.0) == "budget_time"


def test_early_stop_counts_only_model_guided_trials() -> None:
    state = _state(n_trials=10, patience=2, n_initial_points=2, parallelism=1)
    for number, score in [(0, 0.95), (1, 0.90), (2, 0.94)]:
        _request(state)
        _finish(state, number, score)
    assert study.trials_since_improvement(state) == 1  # trial 1 is the initial design
    assert study.stop_reason(state, 1001.0) is None
    _request(state)
    _finish(state, 3, 0.95 + 1e-5)  # not better by more than min_delta
    assert study.stop_reason(state, 1001.0) == "early_stop"


def test_completion_is_recorded_once_and_late_results_do_not_change_it() -> None:
    state = _state()
    _request(state)
    _finish(state, 0, 0.9)
    by = {"source": "/trial", "id": "x"}
    completion = study.complete(state, "budget_time", by=by, at="t")
    assert completion["best_trial"] == 0 and completion["best_score"] == 0.9
    assert completion["pending_at_completion"] == [1]
    assert study.complete(state, "early_stop", by={"source": "/o", "id": "y"}, at="t2") is completion
    _finish(state, 1, 0.99)  # arrives after completion
    assert study.trial(state, 1)["late"]
    assert study.best_trial(state)["number"] == 0
    assert study.is_closed(state)


def test_a_study_without_any_successful_trial_fails() -> None:
    state = _state()
    _request(state)
    _finish(state, 0, None, status="failed")
    with pytest.raises(ValueError):
        study.complete(state, "budget_trials", by={}, at="t")
    failure = study.fail(state, "budget_trials", by={}, at="t")
    assert failure["error"] == "no trial succeeded"
    assert study.is_closed(state)


def test_retrain_finds_the_contract_of_a_model() -> None:
    from functions.tune.handler import contract_for_model

    contract = ai4i()
    assert contract_for_model(contract.model_name) is contract
    with pytest.raises(ValueError):  # EventRejected: dead-lettered, not retried
        contract_for_model("no-such-model")


def test_a_stopping_study_asks_nothing_more_and_keeps_its_reason() -> None:
    state = _state(n_trials=10, parallelism=2, patience=1, n_initial_points=1)
    assert _request(state) == [0, 1]
    _finish(state, 0, 0.95)
    assert study.decide_stop(state, 1001.0) is None
    assert _request(state) == [2]
    _finish(state, 1, 0.90)  # a model-guided trial without improvement: patience 1 spent
    assert study.decide_stop(state, 1001.0) == "early_stop"
    assert state["stopping"]["waiting_for"] == [2]
    assert _request(state) == []  # stopping: trial 2 may finish, nothing new is asked
    _finish(state, 2, 0.99)  # improves, yet the decision stands
    assert study.stop_reason(state, 1001.0) is None
    assert study.decide_stop(state, 1001.0) == "early_stop"
    assert not study.pending(state)
    completion = study.complete(state, "early_stop", by={}, at="t")
    assert completion["best_trial"] == 2 and completion["n_trials"] == 3
