"""One topology, one set of decisions: what ``render`` writes for the cluster, read back as
KEDA and Knative read it, decides exactly as localdev does on the same backlog (KEDA, a
trigger's consumers) and the same pushed concurrency (the KPA's target, a function's replicas)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from localdev.keda.executor import Bounds, HpaState, decide
from localdev.keda.lag import PartitionOffsets, total_lag
from localdev.render import CLUSTER_KEDA_OPTIONS, ClusterSettings, function_service, keda_annotations
from localdev.scaling_policy import TARGET_MIN, kpa_target
from shared.keda_metadata import KafkaScalerMetadata
from shared.topology import REPO_ROOT, Function, TopologyError, load_function, load_topology

PREFIX = "autoscaling.eventing.knative.dev/"
# A backlog over time (per poll): a burst, its drain, then idle.
BACKLOG = [0, 40, 38, 30, 20, 9, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0]


def _event_functions() -> list[Function]:
    functions = [f for f in load_topology().functions.values() if f.subscriptions]
    return [*functions, load_function(REPO_ROOT / "tests" / "functions" / "slow" / "function.yaml")]


def _from_cluster(fn: Function) -> tuple[KafkaScalerMetadata, Bounds]:
    """The ScaledObject eventing-kafka-broker builds from the rendered annotations."""
    annotations = keda_annotations(fn)
    options = {name: annotations[key] for name, key in CLUSTER_KEDA_OPTIONS.items() if key in annotations}
    service = function_service(fn, ClusterSettings())
    delay = service["spec"]["template"]["metadata"]["annotations"]["autoscaling.knative.dev/scale-down-delay"]
    bounds = Bounds(
        int(annotations[PREFIX + "min-scale"]),
        int(annotations[PREFIX + "max-scale"]),
        float(annotations[PREFIX + "cooldown-period"]),
        float(delay.removesuffix("s")),
    )
    return KafkaScalerMetadata.parse(options), bounds


def _decisions(meta: KafkaScalerMetadata, bounds: Bounds, polling_s: float) -> list[tuple[int, str]]:
    state, current, out = HpaState(), 0, []
    for i, backlog in enumerate(BACKLOG * 3):
        parts = [PartitionOffsets("t", 0, 0, backlog)] + [PartitionOffsets("t", p, 0, 0) for p in (1, 2, 3)]
        d = decide([(total_lag(parts, meta, {}, topic="t"), meta)], current, bounds, state, i * polling_s)
        current = d.replicas
        out.append((d.replicas, d.rule))
    return out


@pytest.mark.parametrize("fn", _event_functions(), ids=lambda f: f.name)
def test_rendered_keda_settings_decide_as_localdev(fn: Function) -> None:
    meta, bounds = _from_cluster(fn)
    s = fn.scaling
    assert meta == s.keda
    local = Bounds(s.min_replicas, s.max_replicas, s.cooldown_period_s, s.scale_down_stabilization_s)
    # KEDA's pollingInterval and cooldownPeriod are whole seconds: render rounds up, and
    # localdev's sub-second values (tests only) are the one deliberate difference here.
    assert bounds == replace(local, cooldown_period_s=float(int(-(-s.cooldown_period_s // 1))))
    polling = max(1.0, s.polling_interval_s)
    assert _decisions(meta, bounds, polling) == _decisions(
        s.keda, replace(local, cooldown_period_s=bounds.cooldown_period_s), polling
    )


def test_render_refuses_an_option_the_cluster_would_ignore() -> None:
    fn = load_function(REPO_ROOT / "tests" / "functions" / "slow" / "function.yaml")
    fn = replace(fn, scaling=replace(fn.scaling, keda=replace(fn.scaling.keda, allow_idle_consumers=True)))
    with pytest.raises(TopologyError, match=r"scaling\.allowIdleConsumers"):
        keda_annotations(fn)


def _knative_target(service: dict) -> float:  # type: ignore[type-arg]
    """knative/serving ``ResolveMetricTarget`` (concurrency metric, target annotation set) over
    the rendered Service, as the PodAutoscaler would see it."""
    template = service["spec"]["template"]
    annotations = template["metadata"]["annotations"]
    total = float(annotations["autoscaling.knative.dev/target"])
    cc = int(template["spec"].get("containerConcurrency", 0))
    if cc:
        total = min(total, float(cc))
    utilisation = float(annotations.get("autoscaling.knative.dev/target-utilization-percentage", "70")) / 100
    return max(TARGET_MIN, total * utilisation)


@pytest.mark.parametrize("fn", list(load_topology().functions.values()), ids=lambda f: f.name)
def test_rendered_kpa_target_is_localdevs(fn: Function) -> None:
    service = function_service(fn, ClusterSettings())
    assert (
        service["spec"]["template"]["metadata"]["annotations"]["autoscaling.knative.dev/metric"]
        == "concurrency"
    )
    assert _knative_target(service) == pytest.approx(kpa_target(fn.scaling, fn.concurrency))
