"""Where each broker's events live on this machine: one Kafka topic per broker of the topology.

The default broker keeps ``StackConfig.broker_topic`` (``faaspipe.broker``); another broker
``<name>`` gets ``faaspipe.broker.<name>``, as the Kafka broker on the cluster gives each
Broker its own topic (``knative-broker-<namespace>-<name>``). A Kafka source reads its own
topic. The ingress, the dispatchers, the supervisor (topic creation, lag) and dead-letter
replay all ask here.
"""

from __future__ import annotations

from localdev.config import StackConfig
from shared.topology import Broker, Topology, Trigger


def broker_topic(config: StackConfig, broker: Broker) -> str:
    return config.broker_topic if broker.is_default else f"{config.broker_topic}.{broker.name}"


def subscription_topic(config: StackConfig, topology: Topology, subscription: Trigger) -> str:
    """The topic a trigger (its broker's) or a Kafka source (its own) reads."""
    return subscription.topic or broker_topic(config, topology.broker_of(subscription))


def subscription_topics(config: StackConfig, topology: Topology) -> dict[str, str]:
    """Every trigger's and Kafka source's topic, by name (what the autoscaler reads lag on)."""
    return {s.name: subscription_topic(config, topology, s) for s in topology.subscriptions}


def ingress_routes(config: StackConfig, topology: Topology) -> dict[tuple[str, str], str]:
    """``(namespace, name)`` of each broker → its topic: the ingress's ``/<namespace>/<name>``."""
    return {(b.namespace, b.name): broker_topic(config, b) for b in topology.brokers.values()}


def broker_ingress_url(config: StackConfig, broker: Broker) -> str:
    """Where events (and replies) for ``broker`` are posted: ``/`` is the default broker."""
    return config.ingress_url + ("" if broker.is_default else broker.ref)
