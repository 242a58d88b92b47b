"""The platform's manifests: Namespace, ServiceAccount and ``faaspipe-platform`` ConfigMap, the
Kafka Brokers (one per broker of the topology) with their ConfigMap and DLQ KafkaSink, MLflow."""

from __future__ import annotations

from typing import Any

from localdev.config import StackConfig
from localdev.render.auth import TOKEN_MOUNT
from localdev.render.eventing import knative_delivery
from localdev.render.meta import object_labels, object_meta
from localdev.render.settings import (
    BASE_RESOURCES,
    DLQ_SINK,
    MLFLOW_SECRET,
    PLATFORM,
    SERVICE_ACCOUNT,
    ClusterSettings,
    broker_topic,
)
from shared.function_runtime import Services
from shared.function_runtime import platform_env as runtime_platform_env
from shared.topology import Broker, Topology


def namespace_doc() -> dict[str, Any]:
    meta = object_meta("faaspipe", "namespace")
    meta["labels"]["bindings.knative.dev/include"] = "true"  # SinkBinding in inclusion mode
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": meta}


def service_account_doc() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": object_meta(SERVICE_ACCOUNT, "platform"),
        "automountServiceAccountToken": False,  # nothing here talks to the Kubernetes API
    }


def cluster_services(settings: ClusterSettings, namespace: str = "faaspipe") -> Services:
    """Where a function finds the platform on the cluster (what ``StackConfig.services`` is locally)."""
    return Services(
        kafka_bootstrap=settings.kafka_bootstrap,
        s3_endpoint=settings.s3_endpoint,
        mlflow_tracking_uri="http://mlflow",
        broker_topic=broker_topic(namespace),
        idempotency_url=f"redis://{settings.redis_host}/0",
        function_url_template=function_url_template(namespace),
        state_dir="/tmp/faaspipe",
        feast_redis=f"{settings.redis_host},db=1",
        token_dir=TOKEN_MOUNT,  # the projected ServiceAccount token (render/auth.py)
    )


def function_url_template(namespace: str) -> str:
    """A function's in-cluster URL: its Knative Service's cluster-local address."""
    return f"http://{{name}}.{namespace}.svc.cluster.local/"


def platform_env(settings: ClusterSettings, namespace: str = "faaspipe") -> dict[str, str]:
    """The ``faaspipe-platform`` ConfigMap: ``shared/function_runtime.py``'s platform settings
    with cluster addresses (the Secret holds the rest)."""
    return runtime_platform_env(cluster_services(settings, namespace))


def platform_docs(settings: ClusterSettings) -> list[dict[str, Any]]:
    return [
        service_account_doc(),
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": object_meta(PLATFORM, "platform"),
            "data": platform_env(settings),
        },
    ]


def broker_doc(broker: Broker) -> dict[str, Any]:
    """A Kafka Broker: its ``spec.delivery`` is the broker's delivery defaults (the platform's,
    overridden by its declaration); each Broker gets its own topic on the cluster."""
    return {
        "apiVersion": "eventing.knative.dev/v1",
        "kind": "Broker",
        "metadata": object_meta(broker.name, "broker", {"eventing.knative.dev/broker.class": "Kafka"}),
        "spec": {
            "config": {"apiVersion": "v1", "kind": "ConfigMap", "name": "kafka-broker-config"},
            "delivery": knative_delivery(broker.delivery),
        },
    }


def broker_docs(settings: ClusterSettings, topology: Topology) -> list[dict[str, Any]]:
    return [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": object_meta("kafka-broker-config", "broker"),
            "data": {
                "bootstrap.servers": settings.kafka_bootstrap,
                "default.topic.partitions": str(settings.partitions),
                "default.topic.replication.factor": str(settings.replication),
            },
        },
        *(broker_doc(b) for b in topology.brokers.values()),
        {
            "apiVersion": "eventing.knative.dev/v1alpha1",
            "kind": "KafkaSink",
            "metadata": object_meta(DLQ_SINK, "broker"),
            "spec": {
                "topic": StackConfig.dlq_topic,
                "bootstrapServers": [settings.kafka_bootstrap],
                "numPartitions": settings.partitions,
                "replicationFactor": settings.replication,
                "contentMode": "binary",
            },
        },
    ]


def mlflow_docs(settings: ClusterSettings) -> list[dict[str, Any]]:
    labels = object_labels("mlflow", "mlflow")
    selector = {"app.kubernetes.io/name": "mlflow", "app.kubernetes.io/part-of": "faaspipe"}
    container = {
        "name": "mlflow",
        # The platform image (pyproject group "platform": mlflow + psycopg2 + boto3); the
        # upstream ghcr.io/mlflow/mlflow image has neither the Postgres driver nor boto3.
        "image": settings.image("platform"),
        "command": ["mlflow"],
        "args": [
            "server",
            "--host",
            "0.0.0.0",
            "--port",
            "5000",
            "--backend-store-uri",
            "$(MLFLOW_BACKEND_STORE_URI)",
            "--artifacts-destination",
            "s3://mlflow/artifacts",
            "--allowed-hosts",
            "mlflow,mlflow.*,localhost:*,127.0.0.1:*",
            "--workers",
            "2",
        ],
        "env": [
            {
                "name": "MLFLOW_BACKEND_STORE_URI",
                "valueFrom": {"secretKeyRef": {"name": MLFLOW_SECRET, "key": "backend-store-uri"}},
            },
            {"name": "MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "value": "false"},
        ],
        "envFrom": [{"configMapRef": {"name": PLATFORM}}, {"secretRef": {"name": PLATFORM}}],
        "ports": [{"name": "http", "containerPort": 5000}],
        "readinessProbe": {"httpGet": {"path": "/health", "port": "http"}, "periodSeconds": 5},
        "livenessProbe": {
            "httpGet": {"path": "/health", "port": "http"},
            "initialDelaySeconds": 30,
            "periodSeconds": 20,
        },
        "resources": BASE_RESOURCES["mlflow"],
    }
    return [
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": object_meta("mlflow", "mlflow"),
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": selector},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "serviceAccountName": SERVICE_ACCOUNT,
                        "containers": [container],  # stateless: PostgreSQL and S3 hold its state
                    },
                },
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": object_meta("mlflow", "mlflow"),
            "spec": {
                "selector": selector,
                "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}],
            },
        },
    ]
