"""What the manifests are rendered with: cluster addresses, names, image names, resources and
the overlays (dev, prod)."""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field

from localdev.config import StackConfig
from shared.function_runtime import SECRET_NAMES
from shared.topology import DEFAULT_BROKER, REPO_ROOT

PORT = 8080
GRPC_METRICS_PORT = 9091  # a gRPC replica's /metrics (its one Knative port speaks h2c)
BROKER = DEFAULT_BROKER  # the default broker: K_SINK, EventPolicies, the platform topic
DLQ_SINK = "faaspipe-dlq"
PLATFORM = "faaspipe-platform"  # ConfigMap (addresses) and Secret (S3 keys) of that name
MLFLOW_SECRET = "mlflow-backend"
SERVICE_ACCOUNT = "faaspipe"

# Env of localdev's function processes that has no cluster counterpart in faaspipe-platform:
# Given to a local replica, from elsewhere on the cluster: K_SINK from the SinkBinding,
# PYTHONPATH from the image.
LOCAL_ONLY_ENV = frozenset({"K_SINK", "PYTHONPATH"})
SECRET_ENV = frozenset(SECRET_NAMES)

Resources = dict[str, dict[str, str]]


def _res(req_cpu: str, req_mem: str, lim_cpu: str, lim_mem: str) -> Resources:
    return {"requests": {"cpu": req_cpu, "memory": req_mem}, "limits": {"cpu": lim_cpu, "memory": lim_mem}}


# Container resources per function environment (= image); "mlflow" is the tracking server.
BASE_RESOURCES: dict[str, Resources] = {
    "serving": _res("100m", "256Mi", "1", "512Mi"),
    "train": _res("500m", "1Gi", "2", "4Gi"),
    "drift": _res("250m", "512Mi", "1", "2Gi"),
    "mlflow": _res("100m", "512Mi", "1", "1Gi"),
}
DEV_RESOURCES: dict[str, Resources] = {  # same limits, half the requests: packs on a small cluster
    "serving": _res("50m", "128Mi", "1", "512Mi"),
    "train": _res("250m", "512Mi", "2", "4Gi"),
    "drift": _res("100m", "256Mi", "1", "2Gi"),
    "mlflow": _res("50m", "256Mi", "1", "1Gi"),
}
PROD_RESOURCES: dict[str, Resources] = {
    "serving": _res("250m", "512Mi", "2", "1Gi"),
    "train": _res("1", "2Gi", "4", "8Gi"),
    "drift": _res("500m", "1Gi", "2", "4Gi"),
    "mlflow": _res("500m", "1Gi", "2", "2Gi"),
}
FALLBACK_ENVIRONMENT = "serving"  # resources for an environment not in the tables


def project_version() -> str:
    with (REPO_ROOT / "pyproject.toml").open("rb") as f:
        return str(tomllib.load(f)["project"]["version"])


@dataclass(frozen=True)
class ClusterSettings:
    """Where the platform's services live on the cluster; the defaults are what is committed."""

    registry: str = "registry.local/faaspipe"  # images are <registry>/<environment>:<tag>
    base_tag: str = "latest"
    kafka_bootstrap: str = "kafka.kafka.svc.cluster.local:9092"
    s3_endpoint: str = "http://minio.minio.svc.cluster.local:9000"
    redis_host: str = "redis.redis.svc.cluster.local:6379"
    postgres_host: str = "postgres.postgres.svc.cluster.local:5432"
    partitions: int = StackConfig.broker_partitions
    replication: int = 1

    def image(self, environment: str, tag: str | None = None) -> str:
        return f"{self.registry}/{environment}:{tag or self.base_tag}"


@dataclass(frozen=True)
class Overlay:
    name: str
    namespace: str
    tag: str
    partitions: int
    replication: int
    resources: dict[str, Resources]
    min_scale: int | None = None  # override every function's and trigger's min-scale
    mlflow_replicas: int = 1
    secrets: dict[str, dict[str, str]] = field(default_factory=dict)  # Secret name → stringData


def overlays() -> tuple[Overlay, ...]:
    local = StackConfig(state_dir=REPO_ROOT / ".faaspipe")
    dev_secrets = {
        PLATFORM: {
            "FAASPIPE_S3_ACCESS_KEY": local.access_key,
            "FAASPIPE_S3_SECRET_KEY": local.secret_key,
            "AWS_ACCESS_KEY_ID": local.access_key,
            "AWS_SECRET_ACCESS_KEY": local.secret_key,
            # Feast's registry and the monitor's store (state that must outlive a pod)
            "FAASPIPE_DATABASE_URL": f"postgresql://faaspipe:faaspipe-dev@{ClusterSettings().postgres_host}/faaspipe",
        },
        # The rendered PostgreSQL's `mlflow` database (manifests/platform/), as prod uses one.
        MLFLOW_SECRET: {
            "backend-store-uri": f"postgresql+psycopg2://faaspipe:faaspipe-dev@{ClusterSettings().postgres_host}/mlflow"
        },
    }
    return (
        Overlay("dev", "faaspipe-dev", "dev", 1, 1, DEV_RESOURCES, min_scale=0, secrets=dev_secrets),
        Overlay("prod", "faaspipe", project_version(), 12, 3, PROD_RESOURCES, mlflow_replicas=2),
    )


def resources_for(table: Mapping[str, Resources], environment: str) -> Resources:
    return table.get(environment) or table[FALLBACK_ENVIRONMENT]


def broker_topic(namespace: str) -> str:
    """The topic the Kafka broker creates: knative-broker-<namespace>-<broker>."""
    return f"knative-broker-{namespace}-{BROKER}"
