"""Replica-count decisions for request traffic, as Knative's KPA makes them. Pure logic.

Knative KPA (every function: http requests and the dispatchers' pushes alike):
desired = ceil(concurrency / target) over the stable window (or the panic window when that
is higher), between min and max; to zero after the scale-to-zero grace period without
requests. The activator holds requests meanwhile. The target is Knative's
(knative/serving ``pkg/reconciler/autoscaling/resources/target.go``, ``ResolveMetricTarget``):
the ``target`` annotation, lowered to ``containerConcurrency`` when that is set, times the
target utilisation (70 % unless ``targetUtilizationPercentage`` says otherwise), at least 0.01.
Lag scaling is KEDA's, ported in ``localdev/keda/``: it decides a trigger's consumers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from shared.topology import Scaling


@dataclass
class ScaleState:
    """What a policy remembers between decisions for one function."""

    last_active: float = -math.inf  # last time there was work
    lower_since: float | None = None  # since when the desired count is below the current one
    last_event: str = ""  # last scale decision, for `faaspipe status`
    last_event_at: float = 0.0
    history: list[tuple[float, int, str]] = field(default_factory=list)


TARGET_MIN = 0.01  # knative/serving pkg/apis/autoscaling: TargetMin


def kpa_target(policy: Scaling, container_concurrency: int) -> float:
    """The concurrency per replica the KPA aims at (``ResolveMetricTarget``, concurrency metric)."""
    total = float(policy.concurrency_target)
    if container_concurrency > 0:
        total = min(total, float(container_concurrency))
    return max(TARGET_MIN, total * policy.target_utilization_percentage / 100.0)


def kpa_desired(
    concurrency_stable: float,
    concurrency_panic: float,
    idle_s: float,
    current: int,
    policy: Scaling,
    state: ScaleState,
    now: float,
    container_concurrency: int = 0,
) -> tuple[int, str]:
    """Replica count for observed request concurrency (averages over the two windows)."""
    target_per_replica = kpa_target(policy, container_concurrency)
    observed = max(concurrency_stable, concurrency_panic)
    if observed > 0 or idle_s < policy.cooldown_period_s:
        if observed > 0:
            state.last_active = now
        want = math.ceil(observed / target_per_replica)
        target = min(
            max(want, 1 if (observed > 0 or current > 0) else 0, policy.min_replicas), policy.max_replicas
        )
        reason = f"concurrency {observed:.2f} / target {target_per_replica:g} -> {want}"
        if observed == 0:
            reason = f"no requests for {idle_s:.0f}s (grace {policy.cooldown_period_s:.0f}s)"
    else:
        target = policy.min_replicas
        reason = f"no requests for {idle_s:.0f}s: scale to {target}"
    return _stabilised(target, current, policy, state, now, reason)


def _stabilised(
    target: int, current: int, policy: Scaling, state: ScaleState, now: float, reason: str
) -> tuple[int, str]:
    if target >= current or target == 0:
        state.lower_since = None
        return target, reason
    if state.lower_since is None:
        state.lower_since = now
    if now - state.lower_since >= policy.scale_down_stabilization_s:
        state.lower_since = None
        return target, reason
    return current, f"{reason}; holding {current} for scale-down stabilisation"
