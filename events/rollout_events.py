"""Typed constructors: progressive rollouts (canary or shadow) of a challenger that passed the
offline gates, and the decision that ends one (``shared/rollout.py`` has the mechanism)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from events.catalogue import register
from events.envelope import EventData
from events.model_events import Gate

__all__ = ["RolloutDecided", "RolloutStarted"]


@register
@dataclass(frozen=True, kw_only=True, slots=True)
class RolloutStarted(EventData):
    """A challenger passed the offline gates and now takes live traffic beside the champion
    (promote → predict replicas, audit)."""

    TYPE: ClassVar[str] = "dev.faaspipe.rollout.started.v1"
    model_name: str
    rollout_id: str
    mode: Literal["canary", "shadow"]
    share: float
    candidate_version: str
    champion_version: str
    window_s: float
    min_requests: int
    gates: list[Gate]
    started_by: str
    started_at: str


@register
@dataclass(frozen=True, kw_only=True, slots=True)
class RolloutDecided(EventData):
    """A rollout is decided on live signals, by the monitor or by a person (→ promote, which
    moves the champion alias or drops the canary)."""

    TYPE: ClassVar[str] = "dev.faaspipe.rollout.decided.v1"
    model_name: str
    rollout_id: str
    candidate_version: str
    champion_version: str
    decision: Literal["promote", "rollback"]
    checks: list[Gate]
    evidence: dict[str, Any]
    decided_by: str
    decided_at: str
