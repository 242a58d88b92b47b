"""The replica decision KEDA and its HPA make together for one ScaledObject. Pure logic.

Sources (kedacore/keda and kubernetes):
- KEDA's scale executor, ``pkg/scaling/executor/scale_scaledobjects.go`` ``RequestScale``:
  the ScaledObject is active when any trigger is; an active target at 0 is set to
  ``max(minReplicaCount, 1)`` (``scaleFromZeroOrIdle``); an inactive one with
  ``minReplicaCount`` 0 goes to 0 only once ``cooldownPeriod`` has passed since the last
  active poll, or at once if it was never active (``scaleToZeroOrIdle``); an inactive one
  below ``minReplicaCount`` is raised to it. Everything between 1 and max is the HPA's.
- The HPA KEDA creates (``minReplicas`` = max(minReplicaCount, 1)): one External metric
  per trigger with an ``AverageValue`` target of ``lagThreshold``; desired =
  ceil(metric / lagThreshold) per metric, the max over metrics, unchanged within the 10 %
  tolerance, clamped to [minReplicas, maxReplicaCount]. Behaviour: scale-down takes the
  highest recommendation of the last ``scaleDownStabilization`` seconds (the topology's
  ``advanced.horizontalPodAutoscalerConfig.behavior.scaleDown.stabilizationWindowSeconds``);
  scale-up is immediate but limited to max(+4 pods, +100 %) per 15 s (the HPA's default
  scale-up policies).

Every decision names its rule: ``activation``, ``threshold``, ``cap``, ``cooldown``,
``stabilisation`` or ``min``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from localdev.keda.lag import TriggerLag, is_active
from shared.keda_metadata import KafkaScalerMetadata

__all__ = ["Bounds", "Decision", "HpaState", "decide"]

HPA_TOLERANCE = 0.1  # kube-controller-manager --horizontal-pod-autoscaler-tolerance
SCALE_UP_PERIOD_S = 15.0  # the HPA's default scale-up policies: 4 pods or 100 % per 15 s
SCALE_UP_PODS = 4


@dataclass(frozen=True)
class Bounds:
    """The ScaledObject fields a decision needs."""

    min_replicas: int
    max_replicas: int
    cooldown_period_s: float
    scale_down_stabilization_s: float


@dataclass
class HpaState:
    """What KEDA (``lastActiveTime``) and the HPA (recommendations, scale-up events) keep."""

    last_active: float | None = None
    recommendations: list[tuple[float, int]] = field(default_factory=list)
    scale_ups: list[tuple[float, int]] = field(default_factory=list)


@dataclass(frozen=True)
class Decision:
    replicas: int
    rule: str
    reason: str


def decide(
    triggers: list[tuple[TriggerLag, KafkaScalerMetadata]],
    current: int,
    bounds: Bounds,
    state: HpaState,
    now: float,
) -> Decision:
    """The replica count for this poll. ``triggers`` pairs each trigger's lag with its options."""
    active = [(lag, meta) for lag, meta in triggers if is_active(lag, meta)]
    if active:
        state.last_active = now
        if current == 0:
            lag, meta = active[0]
            target = max(bounds.min_replicas, 1)
            state.recommendations.clear()
            return Decision(
                target,
                "activation",
                f"lag {lag.with_persistent} > activationLagThreshold {meta.activation_lag_threshold}: "
                f"activate to {target}",
            )
        return _hpa(triggers, current, bounds, state, now)
    if current > 0 and bounds.min_replicas == 0:
        idle = None if state.last_active is None else now - state.last_active
        if idle is None or idle > bounds.cooldown_period_s:
            state.recommendations.clear()
            since = "never active" if idle is None else f"inactive for {idle:.0f}s"
            return Decision(
                0, "cooldown", f"{since} > cooldownPeriod {bounds.cooldown_period_s:g}s: scale to 0"
            )
        hpa = _hpa(triggers, current, bounds, state, now)
        return Decision(
            hpa.replicas,
            hpa.rule if hpa.replicas != current else "cooldown",
            f"inactive, cooling down ({idle:.0f}s of {bounds.cooldown_period_s:g}s); {hpa.reason}",
        )
    if current < bounds.min_replicas:
        return Decision(
            bounds.min_replicas, "min", f"inactive: raise to minReplicaCount {bounds.min_replicas}"
        )
    if current == 0:
        return Decision(0, "activation", _inactive_reason(triggers))
    return _hpa(triggers, current, bounds, state, now)


def _inactive_reason(triggers: list[tuple[TriggerLag, KafkaScalerMetadata]]) -> str:
    if not triggers:
        return "no triggers"
    lag, meta = max(triggers, key=lambda t: t[0].with_persistent)
    return f"lag {lag.with_persistent} <= activationLagThreshold {meta.activation_lag_threshold}: stay at 0"


def _hpa(
    triggers: list[tuple[TriggerLag, KafkaScalerMetadata]],
    current: int,
    bounds: Bounds,
    state: HpaState,
    now: float,
) -> Decision:
    low, high = max(1, bounds.min_replicas), bounds.max_replicas
    desired, rule, reason = low, "min", f"no lag: minReplicas {low}"
    for lag, meta in triggers:
        want = _metric_replicas(lag.metric, meta.lag_threshold, current)
        if want >= desired:
            desired = want
            rule = "cap" if lag.capped_at is not None else "threshold"
            reason = f"lag {lag.metric} / lagThreshold {meta.lag_threshold} -> {want}"
            if lag.capped_at is not None:
                reason = (
                    f"lag {lag.raw} capped to {lag.metric} ({lag.capped_at} partitions"
                    f"{' with lag' if meta.limit_to_partitions_with_lag else ''}) -> {want}"
                )
            if want == current and lag.metric != meta.lag_threshold * current:
                reason += " (within the HPA's 10% tolerance)"
    if desired > high:
        desired, rule, reason = high, "cap", f"{reason}, capped at maxReplicaCount {high}"
    elif desired < low:
        desired = low
    return _stabilise(desired, rule, reason, current, bounds, state, now)


def _metric_replicas(metric: int, threshold: int, current: int) -> int:
    """The HPA's replica count for one External metric with an AverageValue target."""
    ratio = metric / (threshold * current)
    if abs(ratio - 1.0) <= HPA_TOLERANCE:
        return current
    return math.ceil(metric / threshold)


def _stabilise(
    desired: int, rule: str, reason: str, current: int, bounds: Bounds, state: HpaState, now: float
) -> Decision:
    """The HPA's behaviour: scale-down stabilisation window, default scale-up rate limit."""
    window = bounds.scale_down_stabilization_s
    state.recommendations = [(t, r) for t, r in state.recommendations if t > now - window]
    state.recommendations.append((now, desired))
    state.scale_ups = [(t, n) for t, n in state.scale_ups if t > now - SCALE_UP_PERIOD_S]
    if desired > current:
        base = current - sum(n for _t, n in state.scale_ups)
        limit = max(base + SCALE_UP_PODS, 2 * base)
        if desired > limit:
            desired, rule = limit, "stabilisation"
            reason += f"; scale-up limited to {limit} (HPA: +4 pods or +100% per 15s)"
        state.scale_ups.append((now, desired - current))
        return Decision(desired, rule, reason)
    down = max(r for _t, r in state.recommendations)
    if down < current:
        return Decision(down, rule if down == desired else "stabilisation", reason)
    if desired < current:
        return Decision(
            current, "stabilisation", f"{reason}; holding {current} for scaleDownStabilization {window:g}s"
        )
    return Decision(current, rule, reason)
