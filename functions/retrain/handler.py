"""retrain-controller: drift → at most one retrain request per model at a time.

* ``dev.faaspipe.drift.detected.v1`` → ``dev.faaspipe.retrain.requested.v1`` (reply) when the
  drifted version is the model's champion (MLflow alias, read per event; drift of any other
  version is ignored), no retrain is in flight for the model and the cooldown after the last
  completed one is over (``FAASPIPE_RETRAIN_COOLDOWN_SECONDS``, default 600); see ``policy.py``.
* ``dev.faaspipe.model.promoted.v1`` / ``model.rejected.v1`` of that model, decided after the
  request → the retrain completed: in-flight cleared, cooldown starts.

State per model: ``layout.retrain_state(model)`` in the models bucket (JSON, see
``RetrainState``). Replicas share it through optimistic read-modify-write
(``shared.concurrency.update``: a conditional PUT on the object's ETag; a lost race re-reads
and decides again), so of two replicas deciding on two drifts at once exactly one sends the
retrain request and the other sees it in flight.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

from minio import Minio
from prometheus_client import Counter

from events import DriftDetected, ModelPromoted, ModelRejected, RetrainRequested
from functions.retrain.policy import PolicyConfig, RetrainState, on_decision, on_drift
from shared import concurrency, layout, settings
from shared.cloudevents_io import CloudEvent
from shared.errors import EventRejected
from shared.registry_alias import RegistryClient

log = logging.getLogger("faaspipe.retrain")


NAME = "retrain-controller"
SOURCE = f"/faaspipe/functions/{NAME}"
DECISIONS = Counter("faaspipe_retrain_decisions_total", "Retrain controller decisions", ["model", "action"])


T = TypeVar("T")


class StateStore:
    """The retrain state of each model, as JSON objects in the models bucket."""

    def __init__(self, s3: Minio) -> None:
        self.store = concurrency.S3VersionedStore(s3, layout.MODELS)

    def load(self, model_name: str) -> RetrainState:
        current = self.store.read(layout.retrain_state(model_name))
        return RetrainState(model_name) if current is None else RetrainState.from_dict(current.doc)

    def update(
        self, model_name: str, decide: Callable[[RetrainState], tuple[T, RetrainState]]
    ) -> tuple[T, RetrainState]:
        """``decide(state) -> (result, new state)`` applied with a conditional write (again on a
        lost race, with the state that won); written only when the state changed."""

        def change(doc: Any) -> tuple[dict[str, Any] | None, tuple[T, RetrainState]]:
            state = RetrainState(model_name) if doc is None else RetrainState.from_dict(doc)
            result, new_state = decide(state)
            return (new_state.to_dict() if new_state != state else None), (result, new_state)

        return concurrency.update(self.store, layout.retrain_state(model_name), change).result


_store: StateStore | None = None
_registry: RegistryClient | None = None
_config = PolicyConfig()


def init() -> None:
    global _store, _config, _registry
    _store = StateStore(settings.s3_client())
    tracking_uri = os.environ.get("MLFLOW_TRACKING_URI")
    _registry = RegistryClient(tracking_uri) if tracking_uri else None
    if _registry is None:
        log.warning("MLFLOW_TRACKING_URI is not set: drift of any model version is judged")
    _config = PolicyConfig.from_env()
    log.info(
        "retrain controller: cooldown %.0fs after a completed retrain, in-flight limit %.0fs",
        _config.cooldown_s,
        _config.max_in_flight_s,
    )


def _reason(drift: DriftDetected) -> str:
    if drift.kind == "performance" and drift.metric:
        what = f"{drift.metric['name']} {drift.metric['value']:.3f} vs {drift.metric['reference']:.3f}"
    else:
        what = ", ".join(drift.drifted_features) or "features"
    return f"{drift.kind} drift on {drift.model_name} v{drift.model_version} ({drift.detector}): {what}"


def _on_drift(event: CloudEvent, store: StateStore) -> CloudEvent | None:
    drift = DriftDetected.from_event(event)
    champion = _registry.alias_version(drift.model_name) if _registry is not None else None
    now = datetime.now(UTC)
    decision, _ = store.update(
        drift.model_name,
        lambda state: on_drift(
            state,
            event.get_id(),
            now,
            _config,
            drift_version=drift.model_version,
            champion_version=champion,
        ),
    )
    DECISIONS.labels(drift.model_name, decision.action).inc()
    log.info(
        "drift %s on %s v%s: %s (%s)",
        event.get_id(),
        drift.model_name,
        drift.model_version,
        decision.action,
        decision.reason,
    )
    if not decision.sends_request:
        return None
    return RetrainRequested(
        model_name=drift.model_name, reason=_reason(drift), requested_by=NAME, drift_event_id=event.get_id()
    ).to_event(source=SOURCE, subject=drift.model_name, id=decision.request_id)


def _on_decision(event: CloudEvent, store: StateStore) -> None:
    if event.get_type() == ModelPromoted.TYPE:
        promoted = ModelPromoted.from_event(event)
        model_name, version, decided_at, outcome = (
            promoted.model_name,
            promoted.version,
            promoted.decided_at,
            "promoted",
        )
    else:
        rejected = ModelRejected.from_event(event)
        model_name, version, decided_at, outcome = (
            rejected.model_name,
            rejected.version,
            rejected.decided_at,
            "rejected",
        )
    decided = datetime.fromisoformat(decided_at.replace("Z", "+00:00"))
    changed, _ = store.update(
        model_name, lambda state: on_decision(state, outcome, version, decided, datetime.now(UTC))
    )
    DECISIONS.labels(model_name, f"completed_{outcome}" if changed else f"ignored_{outcome}").inc()
    if changed:
        log.info(
            "%s v%s %s: retrain of %s completed; cooldown starts", model_name, version, outcome, model_name
        )
    else:
        log.info("%s v%s %s: no retrain in flight before it; state unchanged", model_name, version, outcome)


def handle(event: CloudEvent) -> CloudEvent | None:
    if _store is None:
        raise RuntimeError("retrain controller is not initialised")
    if event.get_type() == DriftDetected.TYPE:
        return _on_drift(event, _store)
    if event.get_type() in (ModelPromoted.TYPE, ModelRejected.TYPE):
        _on_decision(event, _store)
        return None
    raise EventRejected(f"{NAME} does not handle {event.get_type()}")
