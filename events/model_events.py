"""Typed constructors: model registry and serving events."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal, NotRequired, TypedDict

from events.catalogue import register
from events.envelope import EventData
from events.tuning_events import TrainingSample

__all__ = [
    "Gate",
    "Label",
    "LabelRecorded",
    "ModelMetrics",
    "ModelPromoted",
    "ModelRegistered",
    "ModelRejected",
    "PredictionLogged",
    "PredictionOutput",
    "RolloutTag",
]


class ModelMetrics(TypedDict):
    roc_auc: float
    pr_auc: float
    f1: float
    threshold: float
    brier: NotRequired[float]


class Gate(TypedDict):
    name: str
    passed: bool
    value: float | str | None
    threshold: float | str | None
    detail: str


class RolloutTag(TypedDict):
    """Which side of a running rollout a logged prediction comes from."""

    id: str
    variant: Literal["champion", "candidate", "shadow"]
    candidate_version: str
    candidate_error: NotRequired[bool]


class Label(TypedDict):
    request_id: str
    truth: int


class PredictionOutput(TypedDict):
    probability: float
    label: Literal[0, 1]


@register
@dataclass(frozen=True, kw_only=True, slots=True)
class ModelRegistered(EventData):
    """A trained model was registered (train -> promote)."""

    TYPE: ClassVar[str] = "dev.faaspipe.model.registered.v1"
    model_name: str
    version: str
    run_id: str
    model_uri: str
    study_id: str
    dataset_checksum: str
    feature_view: str
    metrics: ModelMetrics
    dataset_versions: list[str] = field(default_factory=list)  # every dataset version trained on
    training_sample: TrainingSample | None = None  # the reference version's rows (None: not recorded)


@register
@dataclass(frozen=True, kw_only=True, slots=True)
class ModelPromoted(EventData):
    """A model version passed its gates and got the alias (promote -> predict)."""

    TYPE: ClassVar[str] = "dev.faaspipe.model.promoted.v1"
    model_name: str
    version: str
    alias: str = "champion"
    previous_version: str | None = None
    gates: list[Gate]
    decided_by: str
    decided_at: str


@register
@dataclass(frozen=True, kw_only=True, slots=True)
class ModelRejected(EventData):
    """A model version failed its gates (promote -> audit)."""

    TYPE: ClassVar[str] = "dev.faaspipe.model.rejected.v1"
    model_name: str
    version: str
    champion_version: str | None = None
    gates: list[Gate]
    reasons: list[str]
    decided_by: str
    decided_at: str


@register
@dataclass(frozen=True, kw_only=True, slots=True)
class PredictionLogged(EventData):
    """One served prediction (predict -> monitor)."""

    TYPE: ClassVar[str] = "dev.faaspipe.prediction.logged.v1"
    request_id: str
    model_name: str
    model_version: str
    route: Literal["json", "v2", "grpc"]
    entity_id: str | int | None = None
    inputs: dict[str, float | int | str]
    output: PredictionOutput
    latency_ms: float
    rollout: RolloutTag | None = None


@register
@dataclass(frozen=True, kw_only=True, slots=True)
class LabelRecorded(EventData):
    """Ground truth for served predictions, joined by request id (labeller -> monitor)."""

    TYPE: ClassVar[str] = "dev.faaspipe.label.recorded.v1"
    labels: list[Label]
