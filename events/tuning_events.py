"""Typed constructors: hyper-parameter tuning events."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal, TypedDict

from events.catalogue import register
from events.envelope import EventData

__all__ = [
    "Params",
    "Pruner",
    "SampleClass",
    "SampleRuleDoc",
    "StudyCompleted",
    "TrainingSample",
    "TrialFinished",
    "TrialProgress",
    "TrialRequested",
]

Params = dict[str, float | int | str | bool]
Pruner = Literal["none", "median", "successive_halving"]


class SampleRuleDoc(TypedDict):
    max_rows: int
    stratify: str
    min_per_class: int
    seed: int


class SampleClass(TypedDict):
    rows_in: int
    rows_out: int


class TrainingSample(TypedDict):
    """The rows of the reference version a model trained on (``shared.training_sample.Sample.lineage``)."""

    dataset_version: str
    rule: SampleRuleDoc
    sampled: bool
    rows_in: int
    rows_out: int
    classes: dict[str, SampleClass]
    positions_sha256: str


@register
@dataclass(frozen=True, kw_only=True, slots=True)
class TrialRequested(EventData):
    """The tuner asks for one trial (tune -> trial)."""

    TYPE: ClassVar[str] = "dev.faaspipe.tuning.trial.requested.v1"
    study_id: str
    trial_number: int
    params: Params
    dataset_version: str
    feature_view: str
    seed: int
    pruner: Pruner = "none"
    report_every: int = 20


@register
@dataclass(frozen=True, kw_only=True, slots=True)
class TrialProgress(EventData):
    """A trial's intermediate score at a checkpoint, and the pruner's decision (trial -> observers)."""

    TYPE: ClassVar[str] = "dev.faaspipe.tuning.trial.progress.v1"
    study_id: str
    trial_number: int
    step: int
    score: float
    pruner: Pruner
    pruned: bool = False


@register
@dataclass(frozen=True, kw_only=True, slots=True)
class TrialFinished(EventData):
    """One trial finished, ok or failed (trial -> tune)."""

    TYPE: ClassVar[str] = "dev.faaspipe.tuning.trial.finished.v1"
    study_id: str
    trial_number: int
    params: Params
    status: Literal["ok", "failed", "pruned"]
    score: float | None
    score_std: float | None = None
    best_iteration: int | None = None
    run_id: str | None = None
    duration_s: float
    error: str | None = None
    pruned_step: int | None = None


@register
@dataclass(frozen=True, kw_only=True, slots=True)
class StudyCompleted(EventData):
    """A study stopped with its best parameters (tune -> train)."""

    TYPE: ClassVar[str] = "dev.faaspipe.tuning.study.completed.v1"
    study_id: str
    parent_run_id: str
    dataset_version: str
    feature_view: str
    best_params: Params
    best_score: float
    n_trials: int
    stop_reason: Literal["budget_trials", "budget_time", "early_stop"]
    n_pruned: int = 0
    dataset_versions: list[str] = field(default_factory=list)  # every dataset version trained on
    training_sample: TrainingSample | None = None  # the reference version's rows (None: not recorded)
