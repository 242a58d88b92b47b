"""Promote: gate a registered model and move the ``champion`` alias (``model.registered`` →
``model.promoted`` | ``model.rejected``).

Gates, each reported: ``roc_auc`` (holdout ROC-AUC ≥ champion's − tolerance, or ≥ a floor for the
first model; a retrain's challenger with a time-based holdout and the champion are both scored
on that same recent holdout, ``holdout.py``, ``same_holdout`` in the audit record), ``latency`` (single-row p99 of the S3 model.json Booster, nthread=1, within a
budget) and ``input_schema`` (meta.json features = the contract's encoded features, which the
serving function sends). The alias moves with compare-and-set (``decision.decide``).

Progressive rollout: when the contract declares ``rollout:`` (canary or shadow) and a champion
exists, a challenger that passes the gates takes the ``canary`` alias instead, and the reply is
``rollout.started``; ``dev.faaspipe.rollout.decided.v1`` (from the monitor, or a person) then
promotes it with compare-and-set or rolls it back (``rollouts.py``), replying ``model.promoted``
or ``model.rejected``; the audit record holds the offline gates and the live checks.

Every decision is an audit record — who, what, why, when: gates, champion before/after — kept
with the version: the full record at ``layout.audit_record(name, version)`` (models bucket) and a
short JSON in the version tag ``faaspipe.decision``. The record is written as *pending* before
the alias moves and *final* after; a redelivered event finds the final record and answers the
same reply again without deciding twice.

Replicas: decisions about one model are serialised across replicas by a fenced lease in the
models bucket (``shared.concurrency.Lease``, conditional writes), because MLflow has no
compare-and-set on aliases: :func:`decision.decide`'s read-evaluate-reread-set is only
optimistic. Every registry and audit write goes through :class:`FencedRegistry` /
:func:`_put_record`, which first renew the lease with a conditional write: a replica whose lease
expired and was taken over (a long pause) stops before writing (``LeaseLost``; the event is
retried and answered from the record). Decisions about different models run in parallel.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from typing import Any

from events import ModelPromoted, ModelRegistered, ModelRejected, RolloutDecided, RolloutStarted, rfc3339
from functions.promote import gates as artefact_gates
from functions.promote import holdout as same_holdout
from functions.promote import rollouts
from functions.promote.decision import Decision, decide, roc_auc_gate
from functions.promote.registry import CHAMPION, MlflowRegistry
from shared import concurrency, layout, modelling
from shared.cloudevents_io import CloudEvent
from shared.contracts import Contract, contract_for_model, get_contract
from shared.rollout import CANARY

log = logging.getLogger("faaspipe.promote")

SOURCE = "/faaspipe/functions/promote"
DECISION_TAG = "faaspipe.decision"
LEASE_TTL_S = 90.0  # a decision renews it at every write; longer than any gate evaluation
LEASE_WAIT_S = 60.0  # then 409-like failure: the broker retries (trigger timeout PT2M)


def _setting(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


def init() -> None:
    import mlflow  # noqa: F401
    import numpy  # noqa: F401
    import pandas  # noqa: F401
    import xgboost  # noqa: F401

    modelling.warm_up_mlflow()


def decided_by() -> str:
    return f"promote@{socket.gethostname()}/{os.getpid()}"


def lease_key(model_name: str) -> str:
    """Where the lease serialising decisions about ``model_name`` lives (models bucket)."""
    return f"locks/promote/{model_name}.json"


@contextmanager
def decision_lease(model_name: str) -> Iterator[concurrency.Lease]:
    """Hold the model's decision lease (every replica, every thread) for the block."""
    store = concurrency.S3VersionedStore(modelling.s3(), layout.MODELS)
    lease = concurrency.Lease(
        store, lease_key(model_name), f"{decided_by()}/{uuid.uuid4().hex[:8]}", LEASE_TTL_S
    )
    lease.acquire(LEASE_WAIT_S)
    try:
        yield lease
    finally:
        lease.release()


class FencedRegistry:
    """The registry, with the lease checked (renewed conditionally) before every write."""

    def __init__(self, registry: MlflowRegistry, lease: concurrency.Lease) -> None:
        self._registry, self._lease = registry, lease

    def __getattr__(self, name: str) -> Any:  # reads pass through
        return getattr(self._registry, name)

    def set_champion(self, model_name: str, version: str) -> None:
        self._lease.check()
        self._registry.set_champion(model_name, version)

    def set_alias(self, model_name: str, alias: str, version: str) -> None:
        self._lease.check()
        self._registry.set_alias(model_name, alias, version)

    def delete_alias(self, model_name: str, alias: str) -> None:
        self._lease.check()
        self._registry.delete_alias(model_name, alias)

    def set_model_tag(self, model_name: str, key: str, value: str) -> None:
        self._lease.check()
        self._registry.set_model_tag(model_name, key, value)

    def delete_model_tag(self, model_name: str, key: str) -> None:
        self._lease.check()
        self._registry.delete_model_tag(model_name, key)

    def tag(self, model_name: str, version: str, key: str, value: str) -> None:
        self._lease.check()
        self._registry.tag(model_name, version, key, value)


def _put_record(lease: concurrency.Lease, record: dict[str, Any]) -> None:
    """Write an audit record, fenced like the registry writes."""
    lease.check()
    modelling.put_json(layout.MODELS, layout.audit_record(record["model_name"], record["version"]), record)


def handle(event: CloudEvent) -> CloudEvent | None:
    if event.get_type() == RolloutDecided.TYPE:
        return _on_rollout_decided(RolloutDecided.from_event(event), event)
    registered = ModelRegistered.from_event(event)
    name, version = registered.model_name, registered.version
    with decision_lease(name) as lease:
        record = modelling.get_json(layout.MODELS, layout.audit_record(name, version))
        if record is not None and record.get("status") == "final":
            log.info(
                "%s v%s was decided already (%s at %s); answering again",
                name,
                version,
                record["decision"],
                record["decided_at"],
            )
            return reply_of(record)
        registry = FencedRegistry(MlflowRegistry(), lease)
        if record is not None and registry.champion(name) == version:
            log.info(
                "%s v%s: pending decision found with the alias already moved; finishing it", name, version
            )
            decision = Decision(
                "promoted",
                record["gates"],
                record["champion_before"],
                version,
                [*record.get("rounds", []), {"outcome": "finished after a restart"}],
            )
        else:
            decision = _decide(registry, registered, event, lease)
        record = _audit_record(registered, event, decision, status="final")
        _put_record(lease, record)
        registry.tag(name, version, DECISION_TAG, _short(record))
    log.info(
        "%s v%s %s (champion %s → %s): %s",
        name,
        version,
        decision.outcome,
        decision.champion_before,
        decision.champion_after,
        "; ".join(f"{g['name']}={'pass' if g['passed'] else 'FAIL'}" for g in decision.gates),
    )
    return reply_of(record)


def _decide(
    registry: FencedRegistry, registered: ModelRegistered, event: CloudEvent, lease: concurrency.Lease
) -> Decision:
    name, version = registered.model_name, registered.version
    meta = modelling.get_json(layout.MODELS, layout.serving_model(name, version, "meta.json"))
    contract = _serving_contract(name, meta)
    model_json = modelling.get_bytes_or_none(layout.MODELS, layout.serving_model(name, version, "model.json"))
    booster = artefact_gates.load_booster(model_json) if model_json else None
    reference = modelling.get_bytes_or_none(
        layout.MODELS, layout.serving_model(name, version, "reference.csv")
    )
    fixed_gates = [
        artefact_gates.latency_gate(
            booster,
            artefact_gates.example_row(
                contract, reference, booster.num_features() if booster is not None else None
            ),
            budget_ms=_setting("FAASPIPE_PROMOTE_LATENCY_BUDGET_MS", 5.0),
            calls=int(_setting("FAASPIPE_PROMOTE_LATENCY_CALLS", 200)),
        ),
        artefact_gates.input_schema_gate(
            meta, contract, booster.num_features() if booster is not None else None
        ),
    ]
    challenger = ((meta or {}).get("metrics") or {}).get("roc_auc", registered.metrics["roc_auc"])
    tolerance = _setting("FAASPIPE_PROMOTE_TOLERANCE", 0.005)
    floor = _setting("FAASPIPE_PROMOTE_FLOOR", 0.90)

    recent = same_holdout.recent_holdout(meta)
    comparisons: dict[str | None, dict[str, Any]] = {}

    def evaluate(champion: str | None) -> list[dict[str, Any]]:
        scores = None
        if champion is not None and recent is not None:
            scores = same_holdout.score_both(contract, recent, booster, name, champion)
        if scores is None:
            champion_auc = registry.roc_auc(name, champion) if champion is not None else None
            comparisons[champion] = {"same_holdout": False, "champion_version": champion}
            roc = roc_auc_gate(float(challenger), champion, champion_auc, tolerance=tolerance, floor=floor)
        else:
            comparisons[champion] = scores.to_doc()
            roc = roc_auc_gate(
                scores.challenger_roc_auc, champion, scores.champion_roc_auc, tolerance=tolerance, floor=floor
            )
            roc["detail"] += f" on the same recent holdout ({scores.rows} rows, {scores.positives} positive)"
        return [roc, *fixed_gates]

    if contract.rollout.mode != "off":
        champion = registry.champion(name)
        if champion is not None and champion != version:
            gates = evaluate(champion)
            if not all(g["passed"] for g in gates):
                rejected = Decision("rejected", gates, champion, champion, [{"champion": champion}])
                rejected.comparison = comparisons.get(champion)
                return rejected
            rollout = rollouts.start(registry, name, version, champion, contract.rollout, decided_by())
            rounds = [{"champion": champion, "outcome": f"{contract.rollout.mode} rollout {rollout.id}"}]
            return Decision(
                "canary",
                gates,
                champion,
                champion,
                rounds,
                rollout=asdict(rollout),
                comparison=comparisons.get(champion),
            )

    def write_pending(champion: str | None, gates: list[dict[str, Any]]) -> None:
        if all(g["passed"] for g in gates):
            pending = Decision("promoted", gates, champion, None)
            _put_record(lease, _audit_record(registered, event, pending, status="pending"))

    decision = decide(registry, name, version, evaluate, prepare=write_pending)
    decision.comparison = comparisons.get(decision.champion_before)
    return decision


def _serving_contract(model_name: str, meta: dict[str, Any] | None) -> Contract:
    """The contract the serving function encodes for this model (declared by its model_name)."""
    contract = contract_for_model(model_name)
    if contract is not None:
        return contract
    if meta and meta.get("contract"):
        return get_contract(str(meta["contract"]).split("@")[0])
    raise modelling.rejection(
        f"no data contract serves model {model_name!r} and the version has no meta.json"
    )


# --------------------------------------------------------------------------- audit and replies


def _audit_record(
    registered: ModelRegistered, event: CloudEvent, decision: Decision, *, status: str
) -> dict[str, Any]:
    return {
        "status": status,
        "model_name": registered.model_name,
        "version": registered.version,
        "decision": decision.outcome,
        "alias": CANARY if decision.outcome == "canary" else CHAMPION,
        "champion_before": decision.champion_before,
        "champion_after": decision.champion_after,
        "gates": decision.gates,
        "reasons": decision.reasons,
        "rounds": decision.rounds,
        "rollout": decision.rollout,
        "same_holdout": bool((decision.comparison or {}).get("same_holdout")),
        "comparison": decision.comparison,
        "decided_by": decided_by(),
        "decided_at": rfc3339(),
        "trigger": {"type": event.get_type(), "source": str(event.get_source()), "id": str(event.get_id())},
        "challenger": {
            "run_id": registered.run_id,
            "study_id": registered.study_id,
            "model_uri": registered.model_uri,
            "dataset_checksum": registered.dataset_checksum,
            "dataset_versions": list(registered.dataset_versions),
            "feature_view": registered.feature_view,
            "metrics": dict(registered.metrics),
        },
    }


def _short(record: dict[str, Any]) -> str:
    return json.dumps(
        {
            "decision": record["decision"],
            "champion_before": record["champion_before"],
            "gates": {g["name"]: g["passed"] for g in record["gates"]},
            "by": record["decided_by"],
            "at": record["decided_at"],
            "audit": f"s3://{layout.MODELS}/{layout.audit_record(record['model_name'], record['version'])}",
        },
        separators=(",", ":"),
    )


def reply_of(record: dict[str, Any]) -> CloudEvent:
    """The decision's event, rebuilt from its audit record (same id on every redelivery)."""
    name, version = record["model_name"], record["version"]
    attributes = {"source": SOURCE, "subject": f"{name}/{version}", "id": f"{name}/{version}.decision"}
    if record["decision"] == "canary":
        rollout = record["rollout"]
        policy = rollout["policy"]
        return RolloutStarted(
            model_name=name,
            rollout_id=rollout["id"],
            mode=policy["mode"],
            share=policy["share"] if policy["mode"] == "canary" else 0.0,
            candidate_version=version,
            champion_version=rollout["champion"],
            window_s=policy["window_s"],
            min_requests=policy["min_requests"],
            gates=record["gates"],
            started_by=rollout["started_by"],
            started_at=rollout["started_at"],
        ).to_event(**{**attributes, "id": f"{name}/{version}.rollout"})
    if record["decision"] == "promoted":
        return ModelPromoted(
            model_name=name,
            version=version,
            alias=record["alias"],
            previous_version=record["champion_before"] if record["champion_before"] != version else None,
            gates=record["gates"],
            decided_by=record["decided_by"],
            decided_at=record["decided_at"],
        ).to_event(**attributes)
    return ModelRejected(
        model_name=name,
        version=version,
        champion_version=record["champion_before"],
        gates=record["gates"],
        reasons=record["reasons"] or ["rejected"],
        decided_by=record["decided_by"],
        decided_at=record["decided_at"],
    ).to_event(**attributes)


def _on_rollout_decided(decided: RolloutDecided, event: CloudEvent) -> CloudEvent | None:
    """Promote or roll back the running rollout; the candidate's audit record becomes final."""
    name, version = decided.model_name, decided.candidate_version
    with decision_lease(name) as lease:
        registry = FencedRegistry(MlflowRegistry(), lease)
        current = rollouts.running(registry, name)
        record = modelling.get_json(layout.MODELS, layout.audit_record(name, version))
        if current is None or current.id != decided.rollout_id:
            ended = record is not None and (record.get("rollout") or {}).get("id") == decided.rollout_id
            if ended and record is not None and record["decision"] in ("promoted", "rejected"):
                log.info(
                    "rollout %s was decided already (%s); answering again",
                    decided.rollout_id,
                    record["decision"],
                )
                return reply_of(record)
            log.warning("ignoring a decision for rollout %s: it is not the running one", decided.rollout_id)
            return None
        outcome = rollouts.finish(registry, current, decided)
        record = {
            **(record or {"model_name": name, "version": version, "gates": [], "rounds": []}),
            "status": "final",
            "decision": outcome["decision"],
            "alias": CHAMPION,
            "champion_before": outcome["champion_before"],
            "champion_after": outcome["champion_after"],
            "gates": [*(record or {}).get("gates", []), *decided.checks],
            "reasons": outcome["reasons"],
            "rollout": {
                **asdict(current),
                "decision": decided.decision,
                "decided_by": decided.decided_by,
                "evidence": decided.evidence,
            },
            "decided_by": decided.decided_by,
            "decided_at": rfc3339(),
            "trigger": {
                "type": event.get_type(),
                "source": str(event.get_source()),
                "id": str(event.get_id()),
            },
        }
        _put_record(lease, record)
        registry.tag(name, version, DECISION_TAG, _short(record))
    return reply_of(record)
