"""KEDA kafka-scaler and Knative KPA decisions (pure logic)."""

from __future__ import annotations

from localdev.scaling_policy import ScaleState, keda_desired, kpa_desired
from localdev.topology import Scaling

POLICY = Scaling(
    min_replicas=0,
    max_replicas=5,
    lag_threshold=10,
    activation_lag_threshold=2,
    cooldown_period_s=30,
    scale_down_stabilization_s=10,
    concurrency_target=4,
)


def test_lag_scales_to_ceil_of_lag_over_threshold() -> None:
    assert keda_desired(25, 8, 0, POLICY, ScaleState(), 0)[0] == 3


def test_capped_at_partitions_and_max() -> None:
    count, reason = keda_desired(1000, 4, 0, POLICY, ScaleState(), 0)
    assert count == 4 and "capped" in reason
    assert keda_desired(1000, 16, 0, POLICY, ScaleState(), 0)[0] == 5


def test_activation_threshold_keeps_zero() -> None:
    assert keda_desired(2, 4, 0, POLICY, ScaleState(), 0)[0] == 0
    assert keda_desired(3, 4, 0, POLICY, ScaleState(), 0)[0] == 1


def test_running_replica_keeps_working_below_activation() -> None:
    assert keda_desired(1, 4, 1, POLICY, ScaleState(), 0)[0] == 1


def test_zero_only_after_cooldown() -> None:
    state = ScaleState()
    keda_desired(20, 4, 0, POLICY, state, now=100)
    assert keda_desired(0, 4, 2, POLICY, state, now=120)[0] == 2  # cooling down
    assert keda_desired(0, 4, 2, POLICY, state, now=131)[0] == 0


def test_step_down_waits_for_stabilisation() -> None:
    state = ScaleState()
    assert keda_desired(40, 8, 0, POLICY, state, now=0)[0] == 4
    assert keda_desired(10, 8, 4, POLICY, state, now=1)[0] == 4
    assert keda_desired(10, 8, 4, POLICY, state, now=12)[0] == 1


def test_min_replicas_respected() -> None:
    policy = Scaling(
        min_replicas=2, max_replicas=5, lag_threshold=10, cooldown_period_s=0, scale_down_stabilization_s=0
    )
    assert keda_desired(0, 4, 3, policy, ScaleState(), 100)[0] == 2


def test_kpa_concurrency_and_scale_to_zero() -> None:
    state = ScaleState()
    assert kpa_desired(9.0, 2.0, 0.0, 0, POLICY, state, 0)[0] == 3  # ceil(9/4)
    assert kpa_desired(0.0, 12.0, 0.0, 1, POLICY, state, 1)[0] == 3  # panic window wins
    assert kpa_desired(0.0, 0.0, 5.0, 1, POLICY, state, 40)[0] == 1  # idle less than the grace period
    assert kpa_desired(0.0, 0.0, 31.0, 1, POLICY, state, 80)[0] == 0
