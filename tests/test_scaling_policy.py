"""Knative KPA decisions (pure logic); KEDA's are in tests/test_keda_port.py."""

from __future__ import annotations

from localdev.scaling_policy import ScaleState, kpa_desired
from shared.topology import Scaling

POLICY = Scaling(
    min_replicas=0,
    max_replicas=5,
    cooldown_period_s=30,
    scale_down_stabilization_s=10,
    concurrency_target=4,
)


def test_kpa_concurrency_and_scale_to_zero() -> None:
    state = ScaleState()
    assert kpa_desired(9.0, 2.0, 0.0, 0, POLICY, state, 0)[0] == 3  # ceil(9/4)
    assert kpa_desired(0.0, 12.0, 0.0, 1, POLICY, state, 1)[0] == 3  # panic window wins
    assert kpa_desired(0.0, 0.0, 5.0, 1, POLICY, state, 40)[0] == 1  # idle less than the grace period
    assert kpa_desired(0.0, 0.0, 31.0, 1, POLICY, state, 80)[0] == 0
