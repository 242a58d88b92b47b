"""One function's manifests: its Knative Service (KPA annotations), SinkBinding, one Trigger per
topology trigger and one KafkaSource per Kafka source, both with KEDA annotations."""

from __future__ import annotations

import math
from typing import Any

from localdev.render.auth import token_volume
from localdev.render.eventing import knative_delivery, knative_filters
from localdev.render.meta import object_labels, object_meta
from localdev.render.settings import (
    BASE_RESOURCES,
    BROKER,
    GRPC_METRICS_PORT,
    PLATFORM,
    PORT,
    ClusterSettings,
    resources_for,
)
from shared.auth.identity import function_service_account
from shared.function_runtime import function_args, function_env
from shared.topology import Function, TopologyError, Trigger


def _seconds(value: float) -> str:
    """Go duration for Knative annotations: 60.0 → '60s', 0.5 → '0.5s'."""
    return f"{int(value)}s" if float(value).is_integer() else f"{value:g}s"


def function_service(fn: Function, settings: ClusterSettings) -> dict[str, Any]:
    s = fn.scaling
    annotations = {
        "autoscaling.knative.dev/class": "kpa.autoscaling.knative.dev",
        "autoscaling.knative.dev/metric": "concurrency",
        "autoscaling.knative.dev/target": str(s.concurrency_target),
        "autoscaling.knative.dev/target-utilization-percentage": f"{s.target_utilization_percentage:g}",
        "autoscaling.knative.dev/min-scale": str(s.min_replicas),
        "autoscaling.knative.dev/max-scale": str(s.max_replicas),
        # The stable window: the last replica goes after a whole window without requests.
        "autoscaling.knative.dev/window": _seconds(s.window_s),
        # Only used when min-scale is 0: how long the last replica stays after going idle.
        "autoscaling.knative.dev/scale-to-zero-pod-retention-period": _seconds(s.cooldown_period_s),
    }
    stabilization = getattr(s, "scale_down_stabilization_s", None)
    if stabilization is not None:
        annotations["autoscaling.knative.dev/scale-down-delay"] = _seconds(stabilization)
    labels = {"faaspipe.dev/kind": fn.kind, "faaspipe.dev/environment": fn.environment}
    service_labels = dict(labels)
    if fn.kind not in ("http", "grpc"):  # events arrive from the broker / in-cluster notifiers only
        service_labels["networking.knative.dev/visibility"] = "cluster-local"
    timeouts = [t.delivery.timeout_s for t in fn.subscriptions]
    container: dict[str, Any] = {
        "name": "function",
        "image": settings.image(fn.environment),
        "command": ["python", "-m", "shared.runtime"],
        "args": function_args(
            fn, host="0.0.0.0", port=PORT, metrics_port=GRPC_METRICS_PORT if fn.kind == "grpc" else None
        ),
        "ports": [{"name": "http1", "containerPort": PORT}],
        "envFrom": [{"configMapRef": {"name": PLATFORM}}, {"secretRef": {"name": PLATFORM}}],
        "readinessProbe": {"httpGet": {"path": "/health/readiness"}},
        "livenessProbe": {
            "httpGet": {"path": "/health/liveness"},
            "initialDelaySeconds": 5,
            "periodSeconds": 10,
            "failureThreshold": 3,
        },
        "resources": resources_for(BASE_RESOURCES, fn.environment),
    }
    if fn.kind == "grpc":
        _serve_grpc(container)
    container["env"] = [{"name": k, "value": v} for k, v in sorted(function_env(fn).items())]
    volume, mount = token_volume(fn)
    container["volumeMounts"] = [mount]
    meta = object_meta(
        fn.name, "function", {"faaspipe.dev/description": fn.description} if fn.description else None
    )
    meta["labels"].update(service_labels)
    return {
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": meta,
        "spec": {
            "template": {
                "metadata": {
                    "labels": object_labels(fn.name, "function", **labels),
                    "annotations": annotations,
                },
                "spec": {
                    "serviceAccountName": function_service_account(fn),  # its identity (render/auth.py)
                    "containerConcurrency": fn.concurrency,
                    "timeoutSeconds": max(300, math.ceil(max(timeouts, default=0))),
                    "enableServiceLinks": False,
                    "containers": [container],
                    "volumes": [volume],
                },
            }
        },
    }


def _serve_grpc(container: dict[str, Any]) -> None:
    """A gRPC function: its one port named h2c (Knative then speaks HTTP/2 cleartext to it),
    TCP probes (the port opens once the replica is set up, shared/grpc_server.py), and
    Prometheus metrics on a second, unrouted port."""
    container["ports"] = [{"name": "h2c", "containerPort": PORT}]
    container["readinessProbe"] = {"tcpSocket": {"port": PORT}}
    container["livenessProbe"] = {**container["livenessProbe"], "tcpSocket": {"port": PORT}}
    del container["livenessProbe"]["httpGet"]


def function_sink_binding(fn: Function) -> dict[str, Any]:
    return {
        "apiVersion": "sources.knative.dev/v1",
        "kind": "SinkBinding",
        "metadata": object_meta(fn.name, "function"),
        "spec": {
            "subject": {"apiVersion": "serving.knative.dev/v1", "kind": "Service", "name": fn.name},
            "sink": {"ref": {"apiVersion": "eventing.knative.dev/v1", "kind": "Broker", "name": BROKER}},
        },
    }


# The KEDA kafka options eventing-kafka-broker's KEDA autoscaler copies from a Trigger's or
# KafkaSource's annotations into the ScaledObject it creates (control-plane/pkg/autoscaler/keda).
CLUSTER_KEDA_OPTIONS = {
    "lagThreshold": "autoscaling.eventing.knative.dev/lag-threshold",
    "activationLagThreshold": "autoscaling.eventing.knative.dev/activation-lag-threshold",
}


def keda_annotations(fn: Function) -> dict[str, str]:
    """KEDA scaling of a Trigger's or KafkaSource's consumer group (eventing-kafka-broker).

    A KEDA option the cluster's autoscaler would not apply is refused, naming the field,
    rather than rendered and silently ignored."""
    s = fn.scaling
    annotations = {
        "autoscaling.eventing.knative.dev/class": "keda.autoscaling.knative.dev",
        "autoscaling.eventing.knative.dev/min-scale": str(s.min_replicas),
        "autoscaling.eventing.knative.dev/max-scale": str(s.max_replicas),
        "autoscaling.eventing.knative.dev/polling-interval": str(max(1, math.ceil(s.polling_interval_s))),
        "autoscaling.eventing.knative.dev/cooldown-period": str(math.ceil(s.cooldown_period_s)),
    }
    for name, value in s.keda.as_trigger_metadata().items():
        if name not in CLUSTER_KEDA_OPTIONS:
            raise TopologyError(
                f"{fn.directory / 'function.yaml'}: scaling.{name}: eventing-kafka-broker's KEDA "
                "autoscaler, which scales this function's consumers on the cluster, does not apply "
                "it, so the cluster would scale differently from localdev; remove it to render"
            )
        annotations[CLUSTER_KEDA_OPTIONS[name]] = value
    return annotations


def trigger_annotations(fn: Function) -> dict[str, str]:
    # localdev dispatches concurrently and commits the contiguous prefix: unordered.
    return {**keda_annotations(fn), "kafka.eventing.knative.dev/delivery.order": "unordered"}


def knative_trigger(fn: Function, trigger: Trigger) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "broker": trigger.broker,
        "subscriber": {"ref": {"apiVersion": "serving.knative.dev/v1", "kind": "Service", "name": fn.name}},
        "delivery": knative_delivery(trigger.delivery),
    }
    if trigger.filters:
        spec["filters"] = knative_filters(trigger.filters)
    if trigger.path:  # Knative resolves a relative uri against the ref's address
        spec["subscriber"]["uri"] = trigger.path
    return {
        "apiVersion": "eventing.knative.dev/v1",
        "kind": "Trigger",
        "metadata": object_meta(
            trigger.name, "trigger", trigger_annotations(fn), **{"faaspipe.dev/function": fn.name}
        ),
        "spec": spec,
    }


def kafka_source(fn: Function, source: Trigger, settings: ClusterSettings) -> dict[str, Any]:
    """A KafkaSource reading ``source.topic`` into the function (eventing-kafka-broker).

    Unordered delivery and the same consumer group and KEDA scaling as localdev; the sink's
    replies are dropped by KafkaSource, as by localdev's Kafka-source dispatcher."""
    return {
        "apiVersion": "sources.knative.dev/v1beta1",
        "kind": "KafkaSource",
        "metadata": object_meta(
            source.name, "kafka-source", keda_annotations(fn), **{"faaspipe.dev/function": fn.name}
        ),
        "spec": {
            "bootstrapServers": [settings.kafka_bootstrap],
            "topics": [source.topic],
            "consumerGroup": source.consumer_group,
            "initialOffset": "latest",
            "ordering": "unordered",
            "delivery": knative_delivery(source.delivery),
            "sink": {"ref": {"apiVersion": "serving.knative.dev/v1", "kind": "Service", "name": fn.name}},
        },
    }


def function_docs(fn: Function, settings: ClusterSettings) -> list[dict[str, Any]]:
    return [
        function_service(fn, settings),
        function_sink_binding(fn),
        *(knative_trigger(fn, t) for t in fn.triggers),
        *(kafka_source(fn, k, settings) for k in fn.kafka_sources),
    ]
