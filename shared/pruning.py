"""Pruning rules of a tuning study, as pure functions over recorded intermediate values.

A trial reports an intermediate score at some steps (boosting rounds); the rules below decide,
from its own values and the values every other trial of the study recorded, whether it should
stop now. They are ports of Optuna's pruners (optuna/pruners/_percentile.py for the median rule,
optuna/pruners/_successive_halving.py for asynchronous successive halving, ASHA), written over
plain data so that the state can live in a shared store (S3) rather than in an Optuna study
object: any replica decides the same from the same records.

Deliberate differences from Optuna:

- no study object: the caller passes the trial's values and the other trials' records; "the
  completed trials" of Optuna are the records whose ``state`` is ``complete``;
- successive halving returns the rung values it recorded (Optuna writes them into the trial's
  system attributes as a side effect); the caller stores them with the trial's record;
- ``min_resource`` is always given (no ``"auto"``): the study knows its first checkpoint;
- the competing values of a rung are the *other* trials' values plus this one (Optuna reads the
  trial list before writing the current value, which amounts to the same).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

Direction = Literal["maximize", "minimize"]
PRUNERS = ("none", "median", "successive_halving")


@dataclass(frozen=True)
class TrialRecord:
    """What one trial recorded: its state, its intermediate values by step, its completed rungs."""

    number: int
    state: Literal["running", "complete", "pruned", "failed"] = "running"
    values: Mapping[int, float] = field(default_factory=dict)
    rungs: Mapping[int, float] = field(default_factory=dict)

    @property
    def last_step(self) -> int | None:
        return max(self.values) if self.values else None


# --------------------------------------------------------------------------- median rule


@dataclass(frozen=True)
class MedianRule:
    """Optuna's ``MedianPruner`` (a ``PercentilePruner`` at 50): prune when the trial's best value
    so far is worse than the median of the completed trials' values at the same step."""

    n_startup_trials: int = 5
    n_warmup_steps: int = 0
    interval_steps: int = 1
    n_min_trials: int = 1
    percentile: float = 50.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.percentile <= 100.0:
            raise ValueError(f"percentile must be in [0, 100], got {self.percentile}")
        if self.n_startup_trials < 0 or self.n_warmup_steps < 0:
            raise ValueError("n_startup_trials and n_warmup_steps must be >= 0")
        if self.interval_steps < 1 or self.n_min_trials < 1:
            raise ValueError("interval_steps and n_min_trials must be >= 1")


def median_should_prune(
    values: Mapping[int, float],
    others: Sequence[TrialRecord],
    rule: MedianRule = MedianRule(),
    direction: Direction = "maximize",
) -> bool:
    """Should a trial with intermediate ``values`` stop at its last step? (Optuna's
    ``PercentilePruner.prune``; ``others`` are the other trials of the study.)"""
    completed = [t for t in others if t.state == "complete"]
    if not completed or len(completed) < rule.n_startup_trials:
        return False
    if not values:
        return False
    step = max(values)
    if step < rule.n_warmup_steps:
        return False
    if not _is_first_in_interval_step(step, values.keys(), rule.n_warmup_steps, rule.interval_steps):
        return False
    reported = np.asarray(list(values.values()), dtype=float)
    if np.isnan(reported).all():
        return True
    best = float(np.nanmax(reported) if direction == "maximize" else np.nanmin(reported))
    at_step = [t.values[step] for t in completed if step in t.values]
    if len(at_step) < rule.n_min_trials:
        return False
    percentile = 100.0 - rule.percentile if direction == "maximize" else rule.percentile
    with np.errstate(all="ignore"):
        array = np.asarray(at_step, dtype=float)
        if np.isnan(array).all():
            return False
        p = float(np.nanpercentile(array, percentile))
    if math.isnan(p):
        return False
    return best < p if direction == "maximize" else best > p


def _is_first_in_interval_step(
    step: int, steps: Sequence[int] | Mapping[int, float] | object, n_warmup_steps: int, interval_steps: int
) -> bool:
    nearest_lower_pruning_step = (step - n_warmup_steps) // interval_steps * interval_steps + n_warmup_steps
    second_last_step = max((s for s in steps if s != step), default=-1)  # type: ignore[attr-defined]
    return bool(second_last_step < nearest_lower_pruning_step)


# --------------------------------------------------------------------------- successive halving


@dataclass(frozen=True)
class HalvingRule:
    """Optuna's ``SuccessiveHalvingPruner`` (ASHA) with a fixed ``min_resource``."""

    min_resource: int = 1
    reduction_factor: int = 4
    min_early_stopping_rate: int = 0
    bootstrap_count: int = 0

    def __post_init__(self) -> None:
        if self.min_resource < 1:
            raise ValueError(f"min_resource must be >= 1, got {self.min_resource}")
        if self.reduction_factor < 2:
            raise ValueError(f"reduction_factor must be >= 2, got {self.reduction_factor}")
        if self.min_early_stopping_rate < 0:
            raise ValueError(f"min_early_stopping_rate must be >= 0, got {self.min_early_stopping_rate}")
        if self.bootstrap_count < 0:
            raise ValueError(f"bootstrap_count must be >= 0, got {self.bootstrap_count}")


def halving_should_prune(
    values: Mapping[int, float],
    rungs: Mapping[int, float],
    others: Sequence[TrialRecord],
    rule: HalvingRule = HalvingRule(),
    direction: Direction = "maximize",
) -> tuple[bool, dict[int, float]]:
    """Should a trial with intermediate ``values`` and completed ``rungs`` stop at its last step?

    Returns the decision and the trial's rungs afterwards (the rungs this step completed added:
    the caller records them, the other trials compete against them)."""
    recorded = dict(rungs)
    if not values:
        return False, recorded
    step = max(values)
    value = float(values[step])
    rung = 0
    while rung in recorded:
        rung += 1
    while True:
        promotion_step = rule.min_resource * rule.reduction_factor ** (rule.min_early_stopping_rate + rung)
        if step < promotion_step:
            return False, recorded
        if math.isnan(value):
            return True, recorded
        recorded[rung] = value
        competing = [float(t.rungs[rung]) for t in others if rung in t.rungs]
        competing.append(value)
        if len(competing) <= rule.bootstrap_count:
            return True, recorded
        if not _promotable(value, competing, rule.reduction_factor, direction):
            return True, recorded
        rung += 1


def _promotable(value: float, competing: list[float], reduction_factor: int, direction: Direction) -> bool:
    index = max(len(competing) // reduction_factor - 1, 0)
    competing = sorted(competing)
    if direction == "maximize":
        return value >= competing[-(index + 1)]
    return value <= competing[index]


# --------------------------------------------------------------------------- one entry point


def should_prune(
    pruner: str,
    values: Mapping[int, float],
    rungs: Mapping[int, float],
    others: Sequence[TrialRecord],
    *,
    report_every: int,
    direction: Direction = "maximize",
) -> tuple[bool, dict[int, float]]:
    """The study's pruner (``none`` | ``median`` | ``successive_halving``) on a trial's last step.

    The median rule runs with Optuna's defaults (5 startup trials, no warm-up, every report);
    successive halving with Optuna's reduction factor 4 and the first checkpoint as the minimum
    resource."""
    if pruner == "none":
        return False, dict(rungs)
    if pruner == "median":
        return median_should_prune(values, others, MedianRule(), direction), dict(rungs)
    if pruner == "successive_halving":
        return halving_should_prune(values, rungs, others, HalvingRule(min_resource=report_every), direction)
    raise ValueError(f"unknown pruner {pruner!r} (one of {', '.join(PRUNERS)})")
