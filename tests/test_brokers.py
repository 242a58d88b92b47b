"""Several brokers: declaration and validation (shared/brokers.py), the trigger/broker delivery
merge, the local topics and the rendered Brokers and Triggers.

The merge is eventing-kafka-broker's (the broker the manifests render):
``control-plane/pkg/reconciler/trigger/trigger.go`` merges the trigger's egress config over the
broker's, "prioritizing the Trigger configuration", with ``MergeEgressConfig``
(``control-plane/pkg/core/config/utils.go``), which takes a field from the broker where the
trigger's is unset (0 or empty). On the real stack: tests/test_broker_conformance.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from localdev.broker.topics import (
    broker_ingress_url,
    broker_topic,
    ingress_routes,
    subscription_topic,
    subscription_topics,
)
from localdev.config import StackConfig
from localdev.render.output import render_files
from shared.topology import (
    DEFAULT_BROKER,
    Broker,
    Delivery,
    TopologyError,
    load_topology,
    merge_delivery,
    parse_delivery,
)

MERGE = "eventing-kafka-broker trigger.go / utils.go MergeEgressConfig"
PLATFORM = Delivery()  # retry 3, exponential, PT0.2S, PT30S, dlq


def _broker(doc: dict[str, Any]) -> Delivery:
    return merge_delivery(parse_delivery(doc, "b"), PLATFORM)


# (trigger delivery, broker delivery, expected effective fields, source)
MERGES: list[tuple[dict[str, Any], dict[str, Any], dict[str, Any], str]] = [
    ({}, {}, {"retry": 3, "backoff_delay": "PT0.2S", "dead_letter_sink": "dlq"}, "platform defaults"),
    ({}, {"retry": 5, "backoffPolicy": "linear"}, {"retry": 5, "backoff_policy": "linear"}, f"{MERGE}: nil"),
    ({"retry": 1}, {"retry": 5, "timeout": "PT1M"}, {"retry": 1, "timeout": "PT1M"}, f"{MERGE}: per field"),
    (
        {"timeout": "PT5S"},
        {"backoffDelay": "PT1S", "deadLetterSink": None},
        {"timeout": "PT5S", "backoff_delay": "PT1S", "dead_letter_sink": None},
        f"{MERGE}: the broker's sink (none)",
    ),
    ({"retry": 3}, {"retry": 7}, {"retry": 3}, f"{MERGE}: a trigger's value equal to the default wins"),
    (
        {"format": "json"},
        {"retryAfterMax": "PT5S"},
        {"format": "json", "retry_after_max": "PT5S"},
        "faaspipe",
    ),
]


@pytest.mark.parametrize(("trigger", "broker", "expected", "source"), MERGES, ids=[m[3] for m in MERGES])
def test_a_trigger_delivery_is_merged_over_its_brokers(
    trigger: dict[str, Any], broker: dict[str, Any], expected: dict[str, Any], source: str
) -> None:
    merged = merge_delivery(parse_delivery(trigger, "t"), _broker(broker))
    assert {k: getattr(merged, k) for k in expected} == expected


def _write(root: Path, brokers: Any = None, trigger: dict[str, Any] | None = None) -> Path:
    if brokers is not None:
        (root / "brokers.yaml").write_text(yaml.safe_dump(brokers))
    fn = root / "f"
    fn.mkdir(parents=True, exist_ok=True)
    doc = {"name": "f", "module": "m", "triggers": [{"name": "t", **(trigger or {})}]}
    (fn / "function.yaml").write_text(yaml.safe_dump(doc))
    return root


ORDERS = {"brokers": [{"name": "orders", "delivery": {"retry": 5}}]}
# (brokers.yaml, trigger, error naming the field or None, source)
CASES: list[tuple[Any, dict[str, Any], str | None, str]] = [
    (None, {}, None, "no brokers.yaml: the default broker only"),
    (ORDERS, {"broker": "orders"}, None, "Trigger spec.broker names a declared broker"),
    (None, {"broker": "orders"}, r"triggers\[0\]\.broker: unknown broker 'orders'", "unknown broker"),
    (None, {"broker": "Orders"}, r"triggers\[0\]\.broker", "spec.broker is a DNS label"),
    ({"brokers": [{"name": "Orders"}]}, {}, r"brokers\[0\]\.name", "Broker name is a DNS label"),
    ({"brokers": [{"name": "o", "namespace": "x"}]}, {}, r"brokers\[0\]\.namespace", "one namespace"),
    ({"brokers": [{"name": "o", "color": 1}]}, {}, "unknown field", "unknown broker field"),
    ({"brokers": [{"name": "o"}, {"name": "o"}]}, {}, "declared twice", "a broker declared twice"),
    (
        {"brokers": [{"name": "o", "delivery": {"retry": -1}}]},
        {},
        r"brokers\[0\]\.delivery\.retry",
        "delivery_types.go DeliverySpec.Validate on the Broker",
    ),
    ({"items": []}, {}, "one key, brokers", "the file's shape"),
    (None, {"delivery": {"retry": 0}}, r"triggers\[0\]\.delivery\.retry", f"{MERGE}: retry 0 is unset"),
    (None, {"delivery": {"backoffDelay": "PT0S"}}, r"delivery\.backoffDelay", f"{MERGE}: delay 0 is unset"),
    (None, {"delivery": {"deadLetterSink": None}}, r"delivery\.deadLetterSink", f"{MERGE}: empty is unset"),
    (
        {"brokers": [{"name": "o", "delivery": {"retry": 0, "deadLetterSink": None}}]},
        {"broker": "o", "delivery": {"retry": 0, "deadLetterSink": None}},
        None,
        "0 and no sink under a broker with the same",
    ),
]


@pytest.mark.parametrize(("brokers", "trigger", "error", "source"), CASES, ids=[c[3] for c in CASES])
def test_brokers_are_checked_at_load(
    tmp_path: Path, brokers: Any, trigger: dict[str, Any], error: str | None, source: str
) -> None:
    root = _write(tmp_path, brokers, trigger)
    if error is None:
        load_topology([root])
    else:
        with pytest.raises(TopologyError, match=error):
            load_topology([root])


def test_the_default_broker_is_always_there_and_a_declared_one_has_its_defaults(tmp_path: Path) -> None:
    topology = load_topology(
        [_write(tmp_path, ORDERS, {"broker": "orders", "delivery": {"timeout": "PT9S"}})]
    )
    assert list(topology.brokers) == [DEFAULT_BROKER, "orders"]
    assert topology.brokers[DEFAULT_BROKER].delivery == PLATFORM
    (trigger,) = topology.triggers
    assert topology.broker_of(trigger).ref == "faaspipe/orders"
    assert (trigger.delivery.retry, trigger.delivery.timeout, trigger.delivery.backoff_delay) == (
        5,
        "PT9S",
        "PT0.2S",
    )


def test_the_repos_topology_keeps_one_default_broker() -> None:
    """functions/brokers.yaml lists the default broker only, with the platform's defaults."""
    assert load_topology().brokers == {DEFAULT_BROKER: Broker()}


def test_each_broker_has_its_topic_route_and_reply_address(tmp_path: Path) -> None:
    config = StackConfig(state_dir=tmp_path / "state")
    topology = load_topology([_write(tmp_path, ORDERS, {"broker": "orders"})])
    default, orders = topology.brokers[DEFAULT_BROKER], topology.brokers["orders"]
    assert broker_topic(config, default) == config.broker_topic == "faaspipe.broker"
    assert broker_topic(config, orders) == "faaspipe.broker.orders"
    assert subscription_topic(config, topology, topology.triggers[0]) == "faaspipe.broker.orders"
    assert ingress_routes(config, topology) == {
        ("faaspipe", "faaspipe"): "faaspipe.broker",
        ("faaspipe", "orders"): "faaspipe.broker.orders",
    }
    assert broker_ingress_url(config, default) == config.ingress_url
    assert broker_ingress_url(config, orders) == config.ingress_url + "faaspipe/orders"
    # the autoscaler reads each trigger's lag on its broker's topic
    assert subscription_topics(config, topology) == {topology.triggers[0].name: "faaspipe.broker.orders"}


def test_render_gives_one_broker_each_and_triggers_their_broker(tmp_path: Path) -> None:
    files = render_files(load_topology([_write(tmp_path, ORDERS, {"broker": "orders"})]))
    docs = list(yaml.safe_load_all(files["base/broker.yaml"]))
    brokers = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Broker"}
    assert sorted(brokers) == ["faaspipe", "orders"]
    assert brokers["orders"]["spec"]["delivery"]["retry"] == 5
    assert brokers["faaspipe"]["spec"]["delivery"]["retry"] == 3
    assert all(
        b["metadata"]["annotations"]["eventing.knative.dev/broker.class"] == "Kafka" for b in brokers.values()
    )
    (trigger,) = [d for d in yaml.safe_load_all(files["base/functions/f.yaml"]) if d["kind"] == "Trigger"]
    assert trigger["spec"]["broker"] == "orders" and trigger["spec"]["delivery"]["retry"] == 5
