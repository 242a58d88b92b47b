"""A tuning study's durable state and the decisions taken from it (pure: no I/O, no optimiser).

The state is one JSON document (``layout.study_state(study_id)`` in the models bucket): the
configuration, the search space, the initial design, where the data and the MLflow parent run
are, every trial (requested → ok | failed, with its point, score and run) and the completion.
Everything the tuner decides is a function of this document, so a restarted tuner carries on
where the dead one stopped and a redelivered event changes nothing.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from shared.pruning import PRUNERS

STATE_SCHEMA = 1
STOP_REASONS = ("budget_trials", "budget_time", "early_stop")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


class UnknownTrial(LookupError):
    """A trial result for a trial the study never requested."""


@dataclass(frozen=True)
class StudyConfig:
    n_trials: int = 24
    parallelism: int = 2
    max_seconds: float = 600.0
    patience: int = 8  # model-guided trials without improvement before stopping; 0 = never
    min_delta: float = 1e-4  # a score must beat the best by more than this to count as better
    n_initial_points: int = 8  # fixed design (XGBoost defaults + Latin hypercube) before the GP
    acq_func: str = "EI"
    seed: int = 42
    holdout_fraction: float = 0.25
    cv_folds: int = 5
    max_rounds: int = 1000
    early_stopping_rounds: int = 50
    pruner: str = "none"  # none | median | successive_halving (shared.pruning)
    pruner_report_every: int = 20  # boosting rounds between a trial's intermediate scores

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> StudyConfig:
        """Budgets from ``FAASPIPE_TUNE_*`` (set in function.yaml ``env``); the rest are defaults."""
        env = os.environ if env is None else env
        base = cls()
        n_trials = max(1, int(env.get("FAASPIPE_TUNE_TRIALS", base.n_trials)))
        parallelism = max(1, int(env.get("FAASPIPE_TUNE_PARALLELISM", base.parallelism)))
        return cls(
            n_trials=n_trials,
            parallelism=parallelism,
            max_seconds=float(env.get("FAASPIPE_TUNE_MAX_SECONDS", base.max_seconds)),
            patience=max(0, int(env.get("FAASPIPE_TUNE_PATIENCE", base.patience))),
            min_delta=float(env.get("FAASPIPE_TUNE_MIN_DELTA", base.min_delta)),
            n_initial_points=min(n_trials, max(parallelism, base.n_initial_points)),
            pruner=pruner_of(env.get("FAASPIPE_TUNE_PRUNER", base.pruner)),
            pruner_report_every=max(
                1, int(env.get("FAASPIPE_TUNE_PRUNER_REPORT_EVERY", base.pruner_report_every))
            ),
        )

    def with_pruner(self, pruner: str | None) -> StudyConfig:
        """This configuration with the study's own pruner (a ``retrain.requested`` may ask for one)."""
        return self if pruner is None else replace(self, pruner=pruner_of(pruner))

    def to_doc(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> StudyConfig:
        return cls(**doc)


def pruner_of(name: str) -> str:
    if name not in PRUNERS:
        raise ValueError(f"unknown pruner {name!r}: one of {', '.join(PRUNERS)}")
    return name


def study_id_for(dataset: str, version: str, source: str, event_id: str) -> str:
    """``<dataset>-<version>-<sha256(source, id)[:8]>``: one study per triggering event, ever."""
    digest = hashlib.sha256(f"{len(source)}:{source}:{event_id}".encode()).hexdigest()[:8]
    return _UNSAFE.sub("_", f"{dataset}-{version}")[:80] + f"-{digest}"


def new_state(
    *,
    study_id: str,
    model_name: str,
    contract: str,
    dataset: str,
    dataset_version: str,
    feature_view: str,
    trigger: Mapping[str, str],
    config: StudyConfig,
    space: Sequence[Mapping[str, Any]],
    initial_points: Sequence[Sequence[float | int]],
    data: Mapping[str, Any],
    mlflow: Mapping[str, str],
    created_at: str,
    now: float,
) -> dict[str, Any]:
    return {
        "schema": STATE_SCHEMA,
        "study_id": study_id,
        "model_name": model_name,
        "contract": contract,
        "dataset": dataset,
        "dataset_version": dataset_version,
        "feature_view": feature_view,
        "trigger": dict(trigger),
        "config": config.to_doc(),
        "space": [dict(d) for d in space],
        "initial_points": [list(p) for p in initial_points],
        "data": dict(data),
        "mlflow": dict(mlflow),
        "created_at": created_at,
        "created_ts": now,
        "trials": [],
        "finish_count": 0,
        "stopping": None,
        "completion": None,
        "failure": None,
    }


def config_of(state: Mapping[str, Any]) -> StudyConfig:
    return StudyConfig.from_doc(state["config"])


def trial(state: Mapping[str, Any], number: int) -> dict[str, Any]:
    trials = state["trials"]
    if not 0 <= number < len(trials):
        raise UnknownTrial(f"study {state['study_id']} has no trial {number} (it requested {len(trials)})")
    return trials[number]


def finished(state: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Finished trials (ok, failed or pruned) in the order they finished."""
    done = [t for t in state["trials"] if t["status"] in ("ok", "failed", "pruned")]
    return sorted(done, key=lambda t: t["finish_seq"])


def pending(state: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Requested trials without a result yet."""
    return [t for t in state["trials"] if t["status"] == "requested"]


def add_request(
    state: dict[str, Any], x: Sequence[float | int], params: Mapping[str, Any], *, at: str
) -> dict[str, Any]:
    """Append the next trial (status requested, not yet emitted)."""
    entry = {
        "number": len(state["trials"]),
        "x": list(x),
        "params": dict(params),
        "status": "requested",
        "emitted": False,
        "requested_at": at,
    }
    state["trials"].append(entry)
    return entry


def record_result(state: dict[str, Any], result: Mapping[str, Any], *, at: str) -> bool:
    """Record a trial.finished result; False if that trial already has one (only counted as a repeat)."""
    entry = trial(state, int(result["trial_number"]))
    if entry["status"] != "requested":
        entry["repeats"] = int(entry.get("repeats", 0)) + 1
        return False
    scored = result.get("score") is not None and math.isfinite(result["score"])
    ok = result["status"] in ("ok", "pruned") and scored
    state["finish_count"] = int(state.get("finish_count", 0)) + 1
    entry.update(
        status=str(result["status"]) if ok else "failed",
        score=float(result["score"]) if ok else None,
        pruned_step=result.get("pruned_step"),
        score_std=result.get("score_std"),
        best_iteration=result.get("best_iteration"),
        run_id=result.get("run_id"),
        duration_s=result.get("duration_s"),
        error=None if ok else (result.get("error") or "trial reported no usable score"),
        finished_at=at,
        finish_seq=state["finish_count"],
        late=state.get("completion") is not None,
    )
    return True


def best_trial(state: Mapping[str, Any]) -> dict[str, Any] | None:
    """The ok trial with the highest score (the earliest-numbered one on ties)."""
    scored = [t for t in state["trials"] if t["status"] == "ok" and not t.get("late")]
    return max(scored, key=lambda t: (t["score"], -t["number"])) if scored else None


def trials_since_improvement(state: Mapping[str, Any]) -> int:
    """Model-guided trials (after the initial design) finished since the best score last improved."""
    config = config_of(state)
    best = -math.inf
    since = 0
    for entry in finished(state):
        if entry.get("late"):
            continue
        if entry["status"] == "ok" and entry["score"] > best + config.min_delta:
            best = entry["score"]
            since = 0
        elif entry["number"] >= config.n_initial_points:
            since += 1
    return since


def stop_reason(state: Mapping[str, Any], now: float) -> str | None:
    """Why the study should stop now, or None to go on."""
    config = config_of(state)
    if len(finished(state)) >= config.n_trials:
        return "budget_trials"
    if config.patience and trials_since_improvement(state) >= config.patience:
        return "early_stop"
    if now - float(state["created_ts"]) >= config.max_seconds:
        return "budget_time"
    return None


def decide_stop(state: dict[str, Any], now: float) -> str | None:
    """The reason the study stops, or None to go on. Sticky: once decided it is kept (a trial
    still running may improve the best score afterwards; the decision stands). A stopping study
    requests no more trials and completes when its running trials have reported."""
    if state.get("stopping"):
        return str(state["stopping"]["reason"])
    reason = stop_reason(state, now)
    if reason is not None:
        state["stopping"] = {
            "reason": reason,
            "finished": len(finished(state)),
            "waiting_for": [t["number"] for t in pending(state)],
        }
    return reason


def numbers_to_request(state: Mapping[str, Any]) -> list[int]:
    """Trial numbers to request now so that ``parallelism`` trials run, within the trial budget."""
    if state.get("stopping"):
        return []
    config = config_of(state)
    asked = len(state["trials"])
    room = min(config.parallelism - len(pending(state)), config.n_trials - asked)
    return list(range(asked, asked + max(0, room)))


def unemitted(state: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [t for t in state["trials"] if t["status"] == "requested" and not t.get("emitted")]


def complete(state: dict[str, Any], reason: str, *, by: Mapping[str, str], at: str) -> dict[str, Any]:
    """Mark the study completed (once); returns the completion record."""
    if state.get("completion"):
        return state["completion"]
    if reason not in STOP_REASONS:
        raise ValueError(f"unknown stop reason {reason!r}")
    best = best_trial(state)
    if best is None:
        raise ValueError(f"study {state['study_id']} has no successful trial to complete with")
    state["completion"] = {
        "stop_reason": reason,
        "best_trial": best["number"],
        "best_params": dict(best["params"]),
        "best_score": best["score"],
        "best_iteration": best.get("best_iteration"),
        "n_trials": len(finished(state)),
        "n_failed": sum(1 for t in finished(state) if t["status"] == "failed"),
        "n_pruned": sum(1 for t in finished(state) if t["status"] == "pruned"),
        "pending_at_completion": [t["number"] for t in pending(state)],
        "completed_at": at,
        "by": dict(by),
    }
    return state["completion"]


def fail(state: dict[str, Any], reason: str, *, by: Mapping[str, str], at: str) -> dict[str, Any]:
    """Mark the study failed (it stopped without any successful trial)."""
    if not state.get("failure"):
        state["failure"] = {
            "stop_reason": reason,
            "error": "no trial succeeded",
            "errors": sorted({t.get("error") or "" for t in finished(state)})[:5],
            "failed_at": at,
            "by": dict(by),
        }
    return state["failure"]


def is_closed(state: Mapping[str, Any]) -> bool:
    return bool(state.get("completion") or state.get("failure"))
