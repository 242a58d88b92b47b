"""Progressive rollouts on the promote side: start one for a challenger that passed the gates,
and carry out the decision that ends it (``shared/rollout.py`` has the policy and the tag).

Start: the ``canary`` alias goes to the challenger, then the registered model's tag
``faaspipe.rollout`` (the :class:`Rollout`) is set; predict replicas read the tag and route.
A newer challenger that passes the gates while a rollout runs replaces it (the tag is
overwritten; the older candidate keeps no alias).

Decide (``dev.faaspipe.rollout.decided.v1``, from the monitor or a person): *promote* moves the
champion alias to the candidate with compare-and-set against the champion the rollout started
from (moved meanwhile → the candidate is rejected, never promoted over an unseen champion);
*rollback* keeps the champion. Either way the canary alias and then the tag go. A decision for
a rollout that is no longer the running one is answered from the candidate's audit record, or
ignored.

History: each rollout is one object, ``layout.rollout_history(model, id)`` in the models bucket,
written when it starts and again when it ends: the versions, the share each answered, the
times, the outcome and who decided (``faaspipe rollout status`` lists them).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import Any, Protocol

from events import RolloutDecided, rfc3339
from shared import layout, modelling
from shared.rollout import CANARY, ROLLOUT_TAG, Rollout, RolloutPolicy

log = logging.getLogger("faaspipe.promote.rollouts")


History = Callable[[Rollout, "dict[str, Any] | None"], None]  # writes a rollout's history object


class RolloutRegistry(Protocol):
    def champion(self, model_name: str) -> str | None: ...

    def set_champion(self, model_name: str, version: str) -> None: ...

    def alias_version(self, model_name: str, alias: str) -> str | None: ...

    def set_alias(self, model_name: str, alias: str, version: str) -> None: ...

    def delete_alias(self, model_name: str, alias: str) -> None: ...

    def model_tag(self, model_name: str, key: str) -> str | None: ...

    def set_model_tag(self, model_name: str, key: str, value: str) -> None: ...

    def delete_model_tag(self, model_name: str, key: str) -> None: ...


def running(registry: RolloutRegistry, model_name: str) -> Rollout | None:
    """The rollout in progress for ``model_name`` (its tag), if any."""
    text = registry.model_tag(model_name, ROLLOUT_TAG)
    return Rollout.from_json(text) if text else None


def start(
    registry: RolloutRegistry,
    model_name: str,
    candidate: str,
    champion: str,
    policy: RolloutPolicy,
    started_by: str,
    *,
    history: History | None = None,
) -> Rollout:
    """Give ``candidate`` the canary alias and publish the rollout tag (in that order: a replica
    that sees the tag finds the alias)."""
    previous = running(registry, model_name)
    rollout = Rollout(
        id=f"{model_name}-v{candidate}-{uuid.uuid4().hex[:8]}",
        model_name=model_name,
        candidate=candidate,
        champion=champion,
        started_at=rfc3339(),
        started_by=started_by,
        policy=policy,
    )
    (history or record_history)(rollout, None)
    registry.set_alias(model_name, CANARY, candidate)
    registry.set_model_tag(model_name, ROLLOUT_TAG, rollout.to_json())
    if previous is not None and previous.candidate != candidate:
        log.warning(
            "%s: rollout %s (v%s) replaced by %s", model_name, previous.id, previous.candidate, rollout.id
        )
    log.info(
        "%s v%s: %s rollout %s against champion v%s (share %g, window %gs, at least %d requests)",
        model_name,
        candidate,
        policy.mode,
        rollout.id,
        champion,
        policy.share if policy.mode == "canary" else 0.0,
        policy.window_s,
        policy.min_requests,
    )
    return rollout


def finish(
    registry: RolloutRegistry, rollout: Rollout, decided: RolloutDecided, *, history: History | None = None
) -> dict[str, Any]:
    """Carry out ``decided`` for the running ``rollout``; the outcome for the audit record:
    ``{"decision": "promoted"|"rejected", "champion_before", "champion_after", "reasons"}``."""
    name, candidate = rollout.model_name, rollout.candidate
    current = registry.champion(name)
    reasons = [f"{c['name']}: {c['detail']}" for c in decided.checks if not c["passed"]]
    if decided.decision == "promote" and current == candidate:
        outcome = "promoted"  # finished before a restart
    elif decided.decision == "promote" and current != rollout.champion:
        outcome = "rejected"
        reasons = [f"champion moved from v{rollout.champion} to v{current} during the rollout; not promoted"]
    elif decided.decision == "promote":
        registry.set_champion(name, candidate)
        outcome = "promoted"
    else:
        outcome = "rejected"
        reasons = reasons or [f"rolled back by {decided.decided_by}"]
    after = registry.champion(name)
    if registry.alias_version(name, CANARY) == candidate:
        registry.delete_alias(name, CANARY)
    still = running(registry, name)
    if still is not None and still.id == rollout.id:
        registry.delete_model_tag(name, ROLLOUT_TAG)
    log.info(
        "%s v%s: rollout %s %s (champion v%s → v%s)", name, candidate, rollout.id, outcome, current, after
    )
    ended = {
        "outcome": outcome,
        "decision": decided.decision,
        "decided_by": decided.decided_by,
        "reasons": reasons,
    }
    (history or record_history)(rollout, ended)
    return {"decision": outcome, "champion_before": current, "champion_after": after, "reasons": reasons}


def record_history(rollout: Rollout, ended: dict[str, Any] | None) -> None:
    """Write the rollout's history object: shares while it ran, and its end once it has one."""
    modelling.put_json(
        layout.MODELS,
        layout.rollout_history(rollout.model_name, rollout.id),
        {
            "id": rollout.id,
            "model_name": rollout.model_name,
            "mode": rollout.mode,
            "candidate": rollout.candidate,
            "champion": rollout.champion,
            "shares": rollout.shares(),
            "started_at": rollout.started_at,
            "started_by": rollout.started_by,
            "ended_at": rfc3339() if ended else None,
            **(ended or {}),
        },
    )
