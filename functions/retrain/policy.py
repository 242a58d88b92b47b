"""When does drift start a retrain? Pure decision logic over a model's retrain state.

* One retrain in flight per model: drift while one is in flight changes nothing.
* The cooldown runs from when a retrain *completed* (its model was promoted or rejected),
  not from when it was requested: a fresh champion gets time to show how it does.
* A request in flight for longer than ``max_in_flight_s`` is presumed lost (the trainer
  crashed, the event went to a dead letter) and no longer blocks a new one.
* The same drift event again (a redelivery) gets the same request again, never a second one.
* Only drift of the version serving now (the ``champion`` alias) counts: a window of an
  older version (a replica that had not swapped yet, predictions still in flight when the
  champion moved, leftovers flushed by time) says nothing about the model served now, so it
  neither starts a retrain nor blocks (in flight) the champion's own drift. With no champion
  known (no alias yet) every drift of the model counts.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import asdict, dataclass, fields, replace
from datetime import datetime
from typing import Any, Literal

NAMESPACE = uuid.UUID("0c9e8a5d-3b1f-4e27-9f6a-2d8b4c7e1a93")

Action = Literal["request", "repeat", "in_flight", "cooldown", "seen", "not_champion"]


@dataclass(frozen=True)
class PolicyConfig:
    cooldown_s: float = 600.0
    max_in_flight_s: float = 7200.0

    @classmethod
    def from_env(cls) -> PolicyConfig:
        return cls(
            cooldown_s=float(os.environ.get("FAASPIPE_RETRAIN_COOLDOWN_SECONDS", "600")),
            max_in_flight_s=float(os.environ.get("FAASPIPE_RETRAIN_MAX_IN_FLIGHT_SECONDS", "7200")),
        )


@dataclass(frozen=True)
class RetrainState:
    """What ``layout.retrain_state(model)`` holds (times are ISO 8601 with offset)."""

    model_name: str
    in_flight_since: str | None = None
    in_flight_request_id: str | None = None
    last_drift_event_id: str | None = None
    last_requested_at: str | None = None
    last_completed_at: str | None = None
    last_outcome: str | None = None  # "promoted" | "rejected"
    last_outcome_version: str | None = None
    requests: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> RetrainState:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in doc.items() if k in known})


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str
    request_id: str | None = None  # id of the retrain.requested event to send, if any

    @property
    def sends_request(self) -> bool:
        return self.action in ("request", "repeat")


def request_id_for(drift_event_id: str) -> str:
    """Deterministic id of the retrain request a drift event starts."""
    return str(uuid.uuid5(NAMESPACE, drift_event_id))


def _age_s(since: str | None, now: datetime) -> float | None:
    return None if since is None else (now - datetime.fromisoformat(since)).total_seconds()


def on_drift(
    state: RetrainState,
    drift_event_id: str,
    now: datetime,
    config: PolicyConfig,
    *,
    drift_version: str | None = None,
    champion_version: str | None = None,
) -> tuple[Decision, RetrainState]:
    """Decide about a drift event of model version ``drift_version`` while ``champion_version``
    serves (``None``: not known); returns the decision and the state to store."""
    if state.last_drift_event_id == drift_event_id:
        if state.in_flight_since is not None:
            return Decision(
                "repeat", "redelivered drift event: repeating its request", state.in_flight_request_id
            ), state
        return Decision("seen", "redelivered drift event of a finished retrain"), state
    if champion_version is not None and drift_version is not None and drift_version != champion_version:
        return Decision(
            "not_champion", f"drift of version {drift_version}, but version {champion_version} is champion"
        ), state
    in_flight_age = _age_s(state.in_flight_since, now)
    if in_flight_age is not None and in_flight_age < config.max_in_flight_s:
        return Decision(
            "in_flight", f"a retrain is in flight since {state.in_flight_since} ({in_flight_age:.0f}s)"
        ), state
    completed_age = _age_s(state.last_completed_at, now)
    if completed_age is not None and completed_age < config.cooldown_s:
        return Decision(
            "cooldown",
            f"last retrain completed {completed_age:.0f}s ago ({state.last_outcome}); cooldown is {config.cooldown_s:.0f}s",
        ), state
    request_id = request_id_for(drift_event_id)
    reason = "no retrain in flight, cooldown over"
    if in_flight_age is not None:
        reason = f"previous request {state.in_flight_request_id} presumed lost after {in_flight_age:.0f}s"
    new_state = replace(
        state,
        in_flight_since=now.isoformat(),
        in_flight_request_id=request_id,
        last_drift_event_id=drift_event_id,
        last_requested_at=now.isoformat(),
        requests=state.requests + 1,
    )
    return Decision("request", reason, request_id), new_state


def on_decision(
    state: RetrainState, outcome: str, version: str, decided_at: datetime, now: datetime
) -> tuple[bool, RetrainState]:
    """A promote decision (``promoted``/``rejected``) for the model: completes the retrain in
    flight if it was made after the request. Returns (changed, state)."""
    if state.in_flight_since is None or decided_at < datetime.fromisoformat(state.in_flight_since):
        return False, state
    return True, replace(
        state,
        in_flight_since=None,
        in_flight_request_id=None,
        last_completed_at=now.isoformat(),
        last_outcome=outcome,
        last_outcome_version=version,
    )
