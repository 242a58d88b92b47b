"""Replica-count decisions, as KEDA's kafka scaler and Knative's KPA make them. Pure logic.

KEDA (event functions, per trigger consumer group):
- active when lag > ``activationLagThreshold`` (or already running and lag > 0);
- desired = ceil(lag / ``lagThreshold``), capped at the topic's partitions (KEDA's default
  without ``allowIdleConsumers``: more consumers than partitions would idle) and at
  ``maxReplicaCount``, at least max(1, ``minReplicaCount``) while active;
- back to ``minReplicaCount`` (may be 0) only after ``cooldownPeriod`` with no activity;
- a step down (N → M ≥ 1) waits ``scaleDownStabilization`` seconds (HPA behaviour).
Lag is the true number of undelivered events (see shared/kafka_offsets.py); a group that has
never committed counts 0 (faaspipe initialises offsets before a trigger is ready), so the
invalid-offset cases that make KEDA scale to max (keda#2612) cannot arise.

Knative KPA (http functions): desired = ceil(concurrency / target) over the stable window
(or the panic window when that is higher), between min and max; to zero after the
scale-to-zero grace period without requests. The activator holds requests meanwhile.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from localdev.topology import Scaling


@dataclass
class ScaleState:
    """What a policy remembers between decisions for one function."""

    last_active: float = -math.inf  # last time there was work
    lower_since: float | None = None  # since when the desired count is below the current one
    last_event: str = ""  # last scale decision, for `faaspipe status`
    last_event_at: float = 0.0
    history: list[tuple[float, int, str]] = field(default_factory=list)


def keda_desired(
    lag: int, partitions: int, current: int, policy: Scaling, state: ScaleState, now: float
) -> tuple[int, str]:
    """Replica count for a consumer lag, with the reason."""
    active = lag > policy.activation_lag_threshold or (current > 0 and lag > 0)
    if active:
        state.last_active = now
        want = math.ceil(lag / max(1, policy.lag_threshold))
        capped = min(want, max(1, partitions), policy.max_replicas)
        target = max(capped, 1, policy.min_replicas)
        reason = f"lag {lag} / threshold {policy.lag_threshold} -> {want}"
        if capped < want:
            reason += f", capped at {capped} (partitions {partitions}, max {policy.max_replicas})"
    elif current > policy.min_replicas and now - state.last_active < policy.cooldown_period_s:
        return (
            current,
            f"idle, cooling down ({now - state.last_active:.0f}s of {policy.cooldown_period_s:.0f}s)",
        )
    else:
        target = policy.min_replicas
        reason = f"lag {lag} <= activation threshold {policy.activation_lag_threshold}, cooldown over"
    return _stabilised(target, current, policy, state, now, reason)


def kpa_desired(
    concurrency_stable: float,
    concurrency_panic: float,
    idle_s: float,
    current: int,
    policy: Scaling,
    state: ScaleState,
    now: float,
) -> tuple[int, str]:
    """Replica count for observed request concurrency (averages over the two windows)."""
    target_per_replica = max(1, policy.concurrency_target)
    observed = max(concurrency_stable, concurrency_panic)
    if observed > 0 or idle_s < policy.cooldown_period_s:
        if observed > 0:
            state.last_active = now
        want = math.ceil(observed / target_per_replica)
        target = min(
            max(want, 1 if (observed > 0 or current > 0) else 0, policy.min_replicas), policy.max_replicas
        )
        reason = f"concurrency {observed:.2f} / target {target_per_replica} -> {want}"
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
