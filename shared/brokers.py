"""The brokers of the topology: the default broker plus those each function directory declares
in its ``brokers.yaml``, and the binding of every trigger to its broker.

``brokers.yaml`` (beside the ``*/function.yaml`` of a directory)::

    brokers:
      - name: orders               # a Knative Broker (class Kafka) of the platform namespace
        delivery: {retry: 5, backoffPolicy: linear}   # its spec.delivery

A trigger names its broker with ``broker:`` (Knative ``spec.broker``), the default broker
(``faaspipe``) if it names none. Knative's rules, checked at load (``up``, ``render``):

- each broker has its own topic, triggers and ingress path ``/<namespace>/<name>``;
- a broker's ``delivery`` fields override the platform's defaults (``Delivery()``), and a
  trigger's override its broker's, field by field: a field the trigger does not set is the
  broker's (eventing-kafka-broker's ``MergeEgressConfig``, see
  :func:`shared.topology.merge_delivery`);
- that merge reads a trigger's ``retry: 0``, ``backoffDelay: PT0S`` or absent dead-letter
  sink as *unset*: on the cluster such a trigger would get its broker's value. A trigger
  setting one of them under a broker that sets it otherwise is refused here, naming the
  field, rather than behaving differently here and there.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from shared.topology import (
    DEFAULT_BROKER,
    DEFAULT_NAMESPACE,
    DNS_LABEL,
    Broker,
    Delivery,
    Function,
    TopologyError,
    merge_delivery,
    parse_delivery,
    parse_duration,
)

BROKERS_FILE = "brokers.yaml"


def load_brokers(dirs: Iterable[Path]) -> dict[str, Broker]:
    """The default broker, then every broker declared in ``<dir>/brokers.yaml`` (by name)."""
    declared: dict[str, Broker] = {}
    for directory in dirs:
        path = Path(directory) / BROKERS_FILE
        if path.is_file():
            for broker in parse_brokers(yaml.safe_load(path.read_text()) or {}, str(path)):
                if broker.name in declared:
                    raise TopologyError(f"{path}: broker {broker.ref!r} is declared twice")
                declared[broker.name] = broker
    default = declared.pop(DEFAULT_BROKER, Broker())
    return {DEFAULT_BROKER: default, **dict(sorted(declared.items()))}


def parse_brokers(doc: Any, where: str) -> list[Broker]:
    """The ``brokers:`` list of one file, each checked; errors name the field."""
    if not isinstance(doc, dict) or set(doc) - {"brokers"}:
        raise TopologyError(f"{where}: expected a mapping with one key, brokers")
    entries = doc.get("brokers") or []
    if not isinstance(entries, list):
        raise TopologyError(f"{where}: brokers must be a list, got {entries!r}")
    return [_broker(entry, f"{where}: brokers[{i}]") for i, entry in enumerate(entries)]


def _broker(entry: Any, where: str) -> Broker:
    if not isinstance(entry, dict):
        raise TopologyError(f"{where}: expected a mapping with name, namespace and delivery, got {entry!r}")
    unknown = set(entry) - {"name", "namespace", "delivery"}
    if unknown:
        raise TopologyError(f"{where}: unknown field(s) {sorted(unknown)}; known: delivery, name, namespace")
    name = entry.get("name")
    if not isinstance(name, str) or not DNS_LABEL.match(name):
        raise TopologyError(
            f"{where}.name must be a DNS label (lowercase letters, digits, '-'), got {name!r}"
        )
    namespace = entry.get("namespace", DEFAULT_NAMESPACE)
    if namespace != DEFAULT_NAMESPACE:
        raise TopologyError(
            f"{where}.namespace must be {DEFAULT_NAMESPACE!r}, the platform's namespace (the overlays "
            f"rename it on the cluster), got {namespace!r}: a trigger lives in its broker's namespace "
            "and its subscriber, the function's Service, lives there"
        )
    own = parse_delivery(entry.get("delivery") or {}, where)
    return Broker(name, namespace, merge_delivery(own, Delivery()))


def _is_zero(attribute: str, value: Any) -> bool:
    """A value eventing-kafka-broker's merge takes for "unset" (0, an empty duration, no sink)."""
    if attribute == "backoff_delay":
        return parse_duration(value) == 0
    return value in (0, None)


def _check_override(own: Delivery, broker: Broker, where: str) -> None:
    """Refuse a trigger's zero value the cluster would replace with its broker's."""
    for key, attribute in (
        ("retry", "retry"),
        ("backoffDelay", "backoff_delay"),
        ("deadLetterSink", "dead_letter_sink"),
    ):
        mine, theirs = getattr(own, attribute), getattr(broker.delivery, attribute)
        if attribute in own.explicit and _is_zero(attribute, mine) and not _is_zero(attribute, theirs):
            raise TopologyError(
                f"{where}.delivery.{key}: {mine!r} under broker {broker.ref!r} whose delivery has "
                f"{key} {theirs!r}: Knative's Kafka broker takes a trigger's {mine!r} for unset and "
                f"would use the broker's; set {key} on the broker (brokers.yaml) or use another broker"
            )


def bind_triggers(functions: dict[str, Function], brokers: dict[str, Broker]) -> dict[str, Function]:
    """Each trigger checked against its broker, its delivery merged over the broker's."""
    bound: dict[str, Function] = {}
    for name, fn in functions.items():
        triggers = []
        for i, trigger in enumerate(fn.triggers):
            where = f"{fn.directory / 'function.yaml'}: triggers[{i}]"
            broker = brokers.get(trigger.broker)
            if broker is None:
                raise TopologyError(
                    f"{where}.broker: unknown broker {trigger.broker!r}; declared: {sorted(brokers)} "
                    f"(declare it in a {BROKERS_FILE} of a function directory)"
                )
            _check_override(trigger.delivery, broker, where)
            triggers.append(replace(trigger, delivery=merge_delivery(trigger.delivery, broker.delivery)))
        bound[name] = replace(fn, triggers=tuple(triggers)) if triggers else fn
    return bound
