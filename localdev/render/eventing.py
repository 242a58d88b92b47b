"""Topology filters and delivery → Knative Eventing's ``spec.filters`` and ``DeliverySpec``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from localdev.render.settings import DLQ_SINK
from shared.topology import Delivery


def knative_filters(filters: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Topology filters → Knative ``spec.filters``.

    Knative's webhook takes one attribute per ``exact``/``prefix``/``suffix`` map, so a map of
    several becomes one filter per attribute (all must hold, as before; inside ``not`` they
    are wrapped in ``all``). The legacy top-level ``attributes`` becomes ``exact`` filters,
    leaving out its empty values, which match any value."""
    out: list[dict[str, Any]] = []
    for flt in filters:
        ((dialect, arg),) = flt.items()
        if dialect in ("all", "any"):
            out.append({dialect: knative_filters(arg)})
        elif dialect == "not":
            inner = knative_filters([arg])
            out.append({"not": inner[0] if len(inner) == 1 else {"all": inner}})
        elif dialect == "cesql":
            out.append({"cesql": arg})
        else:
            name = "exact" if dialect == "attributes" else dialect
            pairs = [(str(k), str(v)) for k, v in arg.items() if not (dialect == "attributes" and v == "")]
            out.extend({name: {k: v}} for k, v in pairs)
    return out


def dlq_ref() -> dict[str, str]:
    return {"apiVersion": "eventing.knative.dev/v1alpha1", "kind": "KafkaSink", "name": DLQ_SINK}


def knative_delivery(delivery: Delivery) -> dict[str, Any]:
    """Topology ``Delivery`` → Knative ``DeliverySpec`` (``timeout`` is Knative's delivery-timeout)."""
    spec: dict[str, Any] = {
        "retry": delivery.retry,
        "backoffPolicy": delivery.backoff_policy,
        "backoffDelay": delivery.backoff_delay,
        "timeout": delivery.timeout,
    }
    if delivery.dead_letter_sink:
        spec["deadLetterSink"] = {"ref": dlq_ref()}
    if delivery.retry_after_max is not None:
        spec["retryAfterMax"] = delivery.retry_after_max  # Knative feature delivery-retryafter
    if delivery.format is not None:
        spec["format"] = delivery.format
    return spec
