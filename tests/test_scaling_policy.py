"""Knative KPA decisions (pure logic); KEDA's are in tests/test_keda_port.py."""

from __future__ import annotations

from dataclasses import replace

import pytest

from localdev.scaling_policy import TARGET_MIN, ScaleState, kpa_desired, kpa_target
from shared.topology import Scaling

POLICY = Scaling(
    min_replicas=0,
    max_replicas=5,
    cooldown_period_s=30,
    scale_down_stabilization_s=10,
    concurrency_target=4,
    target_utilization_percentage=100,
)


def test_kpa_concurrency_and_scale_to_zero() -> None:
    state = ScaleState()
    assert kpa_desired(9.0, 2.0, 0.0, 0, POLICY, state, 0)[0] == 3  # ceil(9/4)
    assert kpa_desired(0.0, 12.0, 0.0, 1, POLICY, state, 1)[0] == 3  # panic window wins
    assert kpa_desired(0.0, 0.0, 5.0, 1, POLICY, state, 40)[0] == 1  # idle less than the grace period
    assert kpa_desired(0.0, 0.0, 31.0, 1, POLICY, state, 80)[0] == 0


def test_kpa_aims_at_the_utilised_target() -> None:
    """Knative's default 70 %: one event in flight on a concurrency-1 function wants 2 replicas
    (why our concurrency-1 functions declare targetUtilizationPercentage: 100)."""
    seventy = replace(POLICY, target_utilization_percentage=70)
    assert kpa_desired(1.0, 1.0, 0.0, 1, seventy, ScaleState(), 0, container_concurrency=1)[0] == 2
    assert kpa_desired(1.0, 1.0, 0.0, 1, POLICY, ScaleState(), 0, container_concurrency=1)[0] == 1
    assert kpa_desired(8.0, 8.0, 0.0, 1, seventy, ScaleState(), 0)[0] == 3  # ceil(8 / 2.8)


# knative/serving pkg/reconciler/autoscaling/resources/target_test.go, TestResolveMetricTarget:
# the concurrency cases with a target annotation (faaspipe always renders one). Knative's
# config-level utilisation becomes our targetUtilizationPercentage (rendered as the
# annotation, which overrides the config).
KNATIVE_TARGET_CASES = [
    # (case name, target annotation, containerConcurrency, utilisation %, want target)
    ("with target annotation 1", 1, 0, 100, 1.0),
    ("with target annotation 1 and TU=0.1%", 1, 0, 0.1, TARGET_MIN),
    ("with target annotation 1 and TU=75%", 1, 0, 75, 0.75),
    ("with target annotation 10 and TU=75%", 10, 0, 75, 7.5),
    ("with container concurrency greater than target annotation (ok)", 1, 10, 100, 1.0),
    ("with target annotation greater than default (ok)", 500, 0, 100, 500.0),
    ("with target annotation greater than container concurrency (ignore annotation)", 10, 1, 100, 1.0),
    ("with container concurrency 12 and TU annotation 75% (target above it)", 100, 12, 75, 9.0),
    ("with container concurrency 1 and TU=80% (target above it)", 100, 1, 80, 0.8),
]


@pytest.mark.parametrize(
    ("case", "target", "cc", "tu", "want"), [pytest.param(*c, id=c[0]) for c in KNATIVE_TARGET_CASES]
)
def test_knative_resolve_metric_target(case: str, target: int, cc: int, tu: float, want: float) -> None:
    policy = replace(POLICY, concurrency_target=target, target_utilization_percentage=tu)
    assert kpa_target(policy, cc) == pytest.approx(want), case


# --- zero by default (issue 13) ------------------------------------------------------------


def test_every_product_function_is_at_zero_unless_its_function_yaml_says_why() -> None:
    from shared.topology import load_topology

    functions = load_topology().functions.values()
    warm = {fn.name: fn.scaling.min_reason for fn in functions if fn.scaling.min_replicas > 0}
    assert all(warm.values()), f"minReplicaCount > 0 without minReplicaReason: {warm}"
    assert set(warm) == {"stream-features", "object-events"}  # every other function scales to zero
    assert Scaling().min_replicas == 0  # and a function.yaml that says nothing is at zero too


@pytest.mark.parametrize("reason", ["", "  ", 3])
def test_an_empty_min_replica_reason_is_refused_naming_the_field(tmp_path, reason) -> None:  # type: ignore[no-untyped-def]
    import yaml

    from shared.topology import TopologyError, load_function

    path = tmp_path / "function.yaml"
    doc = {"name": "x", "module": "m", "scaling": {"minReplicaCount": 1, "minReplicaReason": reason}}
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(TopologyError, match="minReplicaReason"):
        load_function(path)
