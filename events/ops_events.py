"""Typed constructors: monitoring, retraining and sample events."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal, TypedDict

from events.catalogue import register
from events.envelope import EventData

__all__ = ["DriftDetected", "DriftMetric", "DriftWindow", "RetrainRequested", "SamplePing", "SamplePong"]


class DriftMetric(TypedDict):
    name: str
    value: float
    reference: float


class DriftWindow(TypedDict):
    start: str
    end: str
    size: int


@register
@dataclass(frozen=True, kw_only=True, slots=True)
class DriftDetected(EventData):
    """Feature drift or performance degradation (monitor -> retrain-controller)."""

    TYPE: ClassVar[str] = "dev.faaspipe.drift.detected.v1"
    kind: Literal["feature", "performance"]
    detector: str
    model_name: str
    model_version: str
    p_values: dict[str, float]
    threshold: float
    drifted_features: list[str]
    metric: DriftMetric | None = None
    window: DriftWindow


@register
@dataclass(frozen=True, kw_only=True, slots=True)
class RetrainRequested(EventData):
    """Retraining requested (retrain-controller -> tune)."""

    TYPE: ClassVar[str] = "dev.faaspipe.retrain.requested.v1"
    model_name: str
    reason: str
    requested_by: str
    drift_event_id: str | None = None
    pruner: Literal["none", "median", "successive_halving"] | None = None


@register
@dataclass(frozen=True, kw_only=True, slots=True)
class SamplePing(EventData):
    """Sample request (user/tests -> sample); the handler fails ``fail_times`` times first."""

    TYPE: ClassVar[str] = "dev.faaspipe.sample.ping.v1"
    message: str
    fail_times: int = 0


@register
@dataclass(frozen=True, kw_only=True, slots=True)
class SamplePong(EventData):
    """Reply to a ping (sample -> tests)."""

    TYPE: ClassVar[str] = "dev.faaspipe.sample.pong.v1"
    message: str
    handled_by: str
    attempt: int
