"""The platform's own services (``manifests/platform/``): one documented option each for Kafka,
S3 (MinIO), Redis and PostgreSQL, as plain Kubernetes objects.

Every Service name, namespace and port here is parsed from the ``ClusterSettings`` address the
``faaspipe-platform`` ConfigMap gives the functions, so the two cannot disagree; an address that
is not an in-cluster Service (``<name>.<namespace>.svc…``) means "I run my own", and that
service is not rendered. It is a kustomization of its own, apart from ``base/``: a cluster that
already runs these services skips it. Credentials are Secret references only; the dev overlay's
``platform/secrets.yaml`` fills them with the same development values the functions get.
"""

from __future__ import annotations

import base64
import re
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from localdev.config import DEFAULT_BUCKETS
from localdev.render.dump import dump_docs
from localdev.render.meta import object_labels, object_meta
from localdev.render.settings import PLATFORM, ClusterSettings, Overlay, Resources

# Images pinned by tag (the apache/kafka, minio, redis and postgres images' documented setups).
KAFKA_IMAGE = "docker.io/apache/kafka:4.0.0"
MINIO_IMAGE = "quay.io/minio/minio:RELEASE.2025-04-22T22-12-26Z"
MC_IMAGE = "docker.io/minio/mc:RELEASE.2025-04-16T18-13-26Z"
REDIS_IMAGE = "docker.io/library/redis:7.2.8"  # 7.2: the last BSD-licensed line
POSTGRES_IMAGE = "docker.io/library/postgres:17.5"

MINIO_SECRET = "minio-root"  # keys MINIO_ROOT_USER, MINIO_ROOT_PASSWORD (namespace of MinIO)
POSTGRES_SECRET = "postgres-auth"  # keys POSTGRES_USER, POSTGRES_PASSWORD (namespace of Postgres)
POSTGRES_INIT = "postgres-init"
# MLflow's backend store and the functions' state (Feast's SQL registry, the monitor's store).
POSTGRES_DATABASES = ("faaspipe", "mlflow")
# Buckets the cluster needs: localdev's, but for Tansu's (its log store; the cluster's Kafka
# keeps its log on its own volume).
LOCAL_ONLY_BUCKETS = frozenset({"tansu"})
BUCKETS = tuple(b for b in DEFAULT_BUCKETS if b not in LOCAL_ONLY_BUCKETS)

KAFKA_CONTROLLER_PORT = 9093
MINIO_CONSOLE_PORT = 9001


def _res(req_cpu: str, req_mem: str, lim_cpu: str, lim_mem: str) -> Resources:
    return {"requests": {"cpu": req_cpu, "memory": req_mem}, "limits": {"cpu": lim_cpu, "memory": lim_mem}}


RESOURCES: dict[str, Resources] = {
    "kafka": _res("250m", "1Gi", "1", "1Gi"),  # heap 512m + page cache headroom
    "minio": _res("100m", "256Mi", "1", "1Gi"),
    "mc": _res("10m", "32Mi", "200m", "128Mi"),
    "redis": _res("50m", "64Mi", "500m", "512Mi"),
    "postgres": _res("100m", "256Mi", "1", "1Gi"),
}
STORAGE = {"kafka": "10Gi", "minio": "20Gi", "redis": "1Gi", "postgres": "5Gi"}
# uid/gid each image runs as (apache/kafka: appuser; redis and postgres: their Debian users;
# MinIO and mc run as any uid).
RUN_AS = {"kafka": 1000, "minio": 1000, "redis": 999, "postgres": 999}

_SERVICE_HOST = re.compile(
    r"^(?P<name>[a-z0-9]([-a-z0-9]*[a-z0-9])?)\.(?P<ns>[a-z0-9]([-a-z0-9]*[a-z0-9])?)\.svc(\.cluster\.local)?$"
)


@dataclass(frozen=True)
class ServiceAddress:
    """An in-cluster Service address: what a ``ClusterSettings`` field names."""

    name: str
    namespace: str
    port: int

    @property
    def host(self) -> str:
        return f"{self.name}.{self.namespace}.svc.cluster.local"


def service_address(address: str) -> ServiceAddress | None:
    """``<name>.<namespace>.svc[.cluster.local]:<port>`` (bare or as a URL's authority) → its
    parts; None for anything else (a service outside the cluster is not ours to render)."""
    parts = urlsplit(address if "://" in address else f"//{address}")
    match = _SERVICE_HOST.match(parts.hostname or "")
    if match is None or parts.port is None:
        return None
    return ServiceAddress(match["name"], match["ns"], parts.port)


def platform_addresses(settings: ClusterSettings) -> dict[str, ServiceAddress]:
    """Service kind → address, for those of the settings' addresses that are in the cluster."""
    found = {
        "kafka": service_address(settings.kafka_bootstrap),
        "minio": service_address(settings.s3_endpoint),
        "redis": service_address(settings.redis_host),
        "postgres": service_address(settings.postgres_host),
    }
    return {kind: addr for kind, addr in found.items() if addr is not None}


# --- building blocks -------------------------------------------------------------------------


def _meta(name: str, namespace: str, component: str) -> dict[str, Any]:
    return {**object_meta(name, component), "namespace": namespace}


def _selector(app: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": app, "app.kubernetes.io/part-of": "faaspipe"}


def _secret_env(name: str, secret: str, key: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}


def _pod_security(uid: int) -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": uid,
        "runAsGroup": uid,
        "fsGroup": uid,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


CONTAINER_SECURITY = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def _services(kind: str, addr: ServiceAddress, ports: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The client Service (the address the functions use) and the StatefulSet's headless one."""
    client_ports = [{**p, "targetPort": p["name"], "protocol": "TCP"} for p in ports]
    return [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": _meta(addr.name, addr.namespace, kind),
            "spec": {"selector": _selector(addr.name), "ports": client_ports},
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": _meta(f"{addr.name}-headless", addr.namespace, kind),
            "spec": {
                "clusterIP": "None",
                "publishNotReadyAddresses": True,
                "selector": _selector(addr.name),
                "ports": client_ports,
            },
        },
    ]


def _stateful_set(
    kind: str, addr: ServiceAddress, container: dict[str, Any], mount: str, volumes: list[dict] | None = None
) -> dict[str, Any]:
    container = {
        **container,
        "name": kind,
        "resources": RESOURCES[kind],
        "securityContext": CONTAINER_SECURITY,
        "volumeMounts": [{"name": "data", "mountPath": mount}, *container.get("volumeMounts", [])],
    }
    pod: dict[str, Any] = {
        "securityContext": _pod_security(RUN_AS[kind]),
        # no <SERVICE>_PORT=tcp://… variables: the kafka image reads every KAFKA_* as a setting
        "enableServiceLinks": False,
        "automountServiceAccountToken": False,
        "containers": [container],
    }
    if volumes:
        pod["volumes"] = volumes
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": _meta(addr.name, addr.namespace, kind),
        "spec": {
            "serviceName": f"{addr.name}-headless",
            "replicas": 1,
            "selector": {"matchLabels": _selector(addr.name)},
            "template": {"metadata": {"labels": object_labels(addr.name, kind)}, "spec": pod},
            "volumeClaimTemplates": [
                {
                    "metadata": {"name": "data"},
                    "spec": {
                        "accessModes": ["ReadWriteOnce"],
                        "resources": {"requests": {"storage": STORAGE[kind]}},
                    },
                }
            ],
        },
    }


def _env(values: dict[str, str]) -> list[dict[str, str]]:
    return [{"name": k, "value": v} for k, v in values.items()]


# --- the four services -----------------------------------------------------------------------


def kafka_cluster_id(addr: ServiceAddress) -> str:
    """KRaft's cluster id (16 bytes, base64url): stable for one address, so a re-render keeps it."""
    raw = uuid.uuid5(uuid.NAMESPACE_DNS, f"faaspipe.{addr.host}").bytes
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def kafka_docs(addr: ServiceAddress, settings: ClusterSettings) -> list[dict[str, Any]]:
    """Single-node KRaft (broker and controller in one process), configured by the apache/kafka
    image's documented KAFKA_* variables; it advertises the address the functions are given."""
    env = {
        "CLUSTER_ID": kafka_cluster_id(addr),
        "KAFKA_NODE_ID": "1",
        "KAFKA_PROCESS_ROLES": "broker,controller",
        "KAFKA_LISTENERS": f"PLAINTEXT://:{addr.port},CONTROLLER://:{KAFKA_CONTROLLER_PORT}",
        "KAFKA_ADVERTISED_LISTENERS": f"PLAINTEXT://{addr.host}:{addr.port}",
        "KAFKA_CONTROLLER_LISTENER_NAMES": "CONTROLLER",
        "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "KAFKA_CONTROLLER_QUORUM_VOTERS": f"1@localhost:{KAFKA_CONTROLLER_PORT}",
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR": "1",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": "1",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR": "1",
        "KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS": "0",
        "KAFKA_NUM_PARTITIONS": str(settings.partitions),
        "KAFKA_LOG_DIRS": "/var/lib/kafka/data",  # below the mount: not beside its lost+found
        "KAFKA_HEAP_OPTS": "-Xms512m -Xmx512m",
    }
    probe = {"tcpSocket": {"port": "kafka"}}
    container = {
        "image": KAFKA_IMAGE,
        "env": _env(env),
        "ports": [
            {"name": "kafka", "containerPort": addr.port},
            {"name": "controller", "containerPort": KAFKA_CONTROLLER_PORT},
        ],
        "readinessProbe": {**probe, "periodSeconds": 5},
        "livenessProbe": {**probe, "initialDelaySeconds": 60, "periodSeconds": 20},
    }
    return [
        *_services("kafka", addr, [{"name": "kafka", "port": addr.port}]),
        _stateful_set("kafka", addr, container, "/var/lib/kafka"),
    ]


def minio_docs(addr: ServiceAddress) -> list[dict[str, Any]]:
    """Single-node MinIO, root credentials from Secret ``minio-root``, and a Job creating the
    buckets (``mc mb --ignore-existing``: re-running it is harmless)."""
    credentials = [
        _secret_env("MINIO_ROOT_USER", MINIO_SECRET, "MINIO_ROOT_USER"),
        _secret_env("MINIO_ROOT_PASSWORD", MINIO_SECRET, "MINIO_ROOT_PASSWORD"),
    ]
    container = {
        "image": MINIO_IMAGE,
        "command": ["minio"],
        "args": [
            "server",
            "/data/minio",
            "--address",
            f":{addr.port}",
            "--console-address",
            f":{MINIO_CONSOLE_PORT}",
        ],
        "env": credentials,
        "ports": [
            {"name": "s3", "containerPort": addr.port},
            {"name": "console", "containerPort": MINIO_CONSOLE_PORT},
        ],
        "readinessProbe": {"httpGet": {"path": "/minio/health/ready", "port": "s3"}, "periodSeconds": 5},
        "livenessProbe": {
            "httpGet": {"path": "/minio/health/live", "port": "s3"},
            "initialDelaySeconds": 30,
            "periodSeconds": 20,
        },
    }
    endpoint = f"http://{addr.host}:{addr.port}"
    script = "\n".join(
        [
            "set -eu",
            "tries=0",  # until MinIO answers (it may still be starting); the Job retries after
            f'until mc alias set platform {endpoint} "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD"; do',
            '  tries=$((tries + 1)); [ "$tries" -lt 60 ] || exit 1; sleep 2',
            "done",
            f"mc mb --ignore-existing {' '.join(f'platform/{b}' for b in BUCKETS)}",
        ]
    )
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _meta("minio-buckets", addr.namespace, "minio"),
        "spec": {
            "backoffLimit": 6,
            "ttlSecondsAfterFinished": 600,  # gone after, so a later `apply -k` runs it again
            "template": {
                "metadata": {"labels": object_labels("minio-buckets", "minio")},
                "spec": {
                    "restartPolicy": "OnFailure",
                    "enableServiceLinks": False,
                    "automountServiceAccountToken": False,
                    "securityContext": _pod_security(RUN_AS["minio"]),
                    "containers": [
                        {
                            "name": "mc",
                            "image": MC_IMAGE,
                            "command": ["/bin/sh", "-c", script],
                            "env": [*credentials, {"name": "HOME", "value": "/tmp"}],
                            "resources": RESOURCES["mc"],
                            "securityContext": CONTAINER_SECURITY,
                        }
                    ],
                },
            },
        },
    }
    return [
        *_services("minio", addr, [{"name": "s3", "port": addr.port}]),
        _stateful_set("minio", addr, container, "/data"),
        job,
    ]


def redis_docs(addr: ServiceAddress) -> list[dict[str, Any]]:
    """Redis with an append-only file: db 0 the idempotency records, db 1 Feast's online store.
    No password: ``FAASPIPE_IDEMPOTENCY_URL`` and ``FAASPIPE_FEAST_REDIS`` carry none."""
    probe = {"exec": {"command": ["redis-cli", "-p", str(addr.port), "ping"]}}
    container = {
        "image": REDIS_IMAGE,
        "command": ["redis-server"],
        "args": ["--port", str(addr.port), "--dir", "/data", "--appendonly", "yes", "--protected-mode", "no"],
        "ports": [{"name": "redis", "containerPort": addr.port}],
        "readinessProbe": {**probe, "periodSeconds": 5},
        "livenessProbe": {**probe, "initialDelaySeconds": 15, "periodSeconds": 20},
    }
    return [
        *_services("redis", addr, [{"name": "redis", "port": addr.port}]),
        _stateful_set("redis", addr, container, "/data"),
    ]


def postgres_init_sql() -> str:
    """Run by the image's entrypoint once, on an empty data directory, as ``POSTGRES_USER``."""
    return "".join(f"CREATE DATABASE {db};\n" for db in POSTGRES_DATABASES)


def postgres_docs(addr: ServiceAddress) -> list[dict[str, Any]]:
    """PostgreSQL, superuser from Secret ``postgres-auth``, the databases created by the init
    script in ConfigMap ``postgres-init``."""
    probe = {"exec": {"command": ["sh", "-c", 'pg_isready -h 127.0.0.1 -p "$PGPORT" -U "$POSTGRES_USER"']}}
    container = {
        "image": POSTGRES_IMAGE,
        "env": [
            _secret_env("POSTGRES_USER", POSTGRES_SECRET, "POSTGRES_USER"),
            _secret_env("POSTGRES_PASSWORD", POSTGRES_SECRET, "POSTGRES_PASSWORD"),
            {"name": "POSTGRES_DB", "value": "postgres"},  # the init script creates the others
            {"name": "PGDATA", "value": "/var/lib/postgresql/data/pgdata"},  # below the mount
            {"name": "PGPORT", "value": str(addr.port)},
        ],
        "ports": [{"name": "postgres", "containerPort": addr.port}],
        "readinessProbe": {**probe, "periodSeconds": 5},
        "livenessProbe": {**probe, "initialDelaySeconds": 30, "periodSeconds": 20},
        "volumeMounts": [{"name": "init", "mountPath": "/docker-entrypoint-initdb.d", "readOnly": True}],
    }
    init = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(POSTGRES_INIT, addr.namespace, "postgres"),
        "data": {"10-databases.sql": postgres_init_sql()},
    }
    volumes = [{"name": "init", "configMap": {"name": POSTGRES_INIT}}]
    return [
        init,
        *_services("postgres", addr, [{"name": "postgres", "port": addr.port}]),
        _stateful_set("postgres", addr, container, "/var/lib/postgresql/data", volumes),
    ]


# --- files -----------------------------------------------------------------------------------


def service_docs(settings: ClusterSettings) -> dict[str, list[dict[str, Any]]]:
    """File stem → objects, for every platform service whose address is in the cluster."""
    addrs = platform_addresses(settings)
    builders = {
        "kafka": lambda a: kafka_docs(a, settings),
        "minio": minio_docs,
        "redis": redis_docs,
        "postgres": postgres_docs,
    }
    return {kind: builders[kind](addr) for kind, addr in addrs.items()}


def platform_files(settings: ClusterSettings) -> dict[str, str]:
    """``platform/``: the namespaces, one file per service, and their kustomization."""
    docs = service_docs(settings)
    if not docs:
        return {}
    namespaces = sorted({addr.namespace for addr in platform_addresses(settings).values()})
    files = {
        "platform/namespaces.yaml": dump_docs(
            [
                {"apiVersion": "v1", "kind": "Namespace", "metadata": object_meta(ns, "platform")}
                for ns in namespaces
            ]
        )
    }
    for kind, objects in docs.items():
        files[f"platform/{kind}.yaml"] = dump_docs(objects)
    resources = ["namespaces.yaml", *sorted(f"{kind}.yaml" for kind in docs)]
    files["platform/kustomization.yaml"] = dump_docs(
        [{"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization", "resources": resources}]
    )
    return files


def platform_secrets(overlay: Overlay, settings: ClusterSettings) -> list[dict[str, Any]]:
    """The services' credentials for an overlay that carries development secrets: derived from
    the functions' own (``faaspipe-platform``), so MinIO's root user is the functions' S3 key
    and Postgres's user and password are those of ``FAASPIPE_DATABASE_URL``."""
    env = overlay.secrets.get(PLATFORM, {})
    addrs = platform_addresses(settings)
    secrets: list[tuple[str, ServiceAddress, dict[str, str]]] = []
    if "minio" in addrs and "FAASPIPE_S3_ACCESS_KEY" in env:
        root = {
            "MINIO_ROOT_USER": env["FAASPIPE_S3_ACCESS_KEY"],
            "MINIO_ROOT_PASSWORD": env["FAASPIPE_S3_SECRET_KEY"],
        }
        secrets.append((MINIO_SECRET, addrs["minio"], root))
    if "postgres" in addrs and "FAASPIPE_DATABASE_URL" in env:
        url = urlsplit(env["FAASPIPE_DATABASE_URL"])
        auth = {
            "POSTGRES_USER": unquote(url.username or ""),
            "POSTGRES_PASSWORD": unquote(url.password or ""),
        }
        secrets.append((POSTGRES_SECRET, addrs["postgres"], auth))
    return [
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": _meta(name, addr.namespace, "platform"),
            "type": "Opaque",
            "stringData": data,
        }
        for name, addr, data in secrets
    ]


def platform_overlay_files(overlay: Overlay, settings: ClusterSettings) -> dict[str, str]:
    """``overlays/<name>/platform/``: ``platform/`` plus the overlay's development credentials
    in the services' own namespaces (Secrets are read from the pod's namespace, so they cannot
    sit in the functions' ``secrets.yaml``, whose kustomization moves everything there)."""
    secrets = platform_secrets(overlay, settings)
    if not secrets or not platform_addresses(settings):
        return {}
    root = f"overlays/{overlay.name}/platform"
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": ["../../../platform", "secrets.yaml"],
    }
    return {
        f"{root}/secrets.yaml": dump_docs(secrets, note="development credentials only"),
        f"{root}/kustomization.yaml": dump_docs([kustomization]),
    }
