"""One function replica's runtime settings: its command line and environment, from the topology
and the addresses of the platform's services.

localdev (``localdev/config.py``, ``localdev/components.py``) and the cluster renderer
(``localdev/render/``) both build a replica from here, one with loopback addresses, the other
with cluster ones, so a setting cannot exist on one side only (``tests/test_manifests.py``
compares every function's rendered Knative Service with the replica localdev starts).

The environment comes in three parts:

* :func:`platform_env`: where the services are, the same for every function (on the cluster,
  the ``faaspipe-platform`` ConfigMap);
* :func:`secret_env`: the object store's credentials and the state database's URL (the
  ``faaspipe-platform`` Secret);
* :func:`function_env`: the function's own settings (``env:`` in its ``function.yaml``), its
  name, and no idempotency store for a function declared ``idempotent: false``.

Deliberate differences, in the arguments only: on Knative the queue-proxy enforces the
container concurrency, so ``--concurrency`` is given locally only; the listening address and
port are the caller's. A gap, not a choice: a gRPC function gets ``--metrics-port`` on the
cluster only, as the supervisor allocates one port per local replica, so its metrics are not
scraped locally.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.topology import Function

SECRET_NAMES = (
    "FAASPIPE_S3_ACCESS_KEY",
    "FAASPIPE_S3_SECRET_KEY",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "FAASPIPE_DATABASE_URL",  # carries the database's password: a secret, not platform config
)
FUNCTION_URL_ENV = "FAASPIPE_FUNCTION_URL_TEMPLATE"  # "{name}" → that function's base URL
# 2-core boxes: OpenMP/BLAS oversubscription costs 10x on small predictions.
THREADS = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@dataclass(frozen=True)
class Services:
    """Where a function finds the platform."""

    kafka_bootstrap: str
    s3_endpoint: str
    mlflow_tracking_uri: str
    broker_topic: str
    idempotency_url: str
    function_url_template: str  # e.g. http://127.0.0.1:17000/{name}/ or http://{name}.ns.svc.cluster.local/
    state_dir: str
    feast_redis: str | None = None  # host:port[,db=N]; None → Feast's online store in SQLite
    # postgresql://…: Feast's registry and the monitor's store; None → SQLite under state_dir
    # (localdev only: on the cluster state_dir is a pod's scratch space, lost on restart)
    database_url: str | None = None
    # where each function finds its own identity token, <dir>/<function>.jwt (shared/auth): the
    # local stack's issuer writes them; on the cluster the projected ServiceAccount token
    token_dir: str | None = None


def platform_env(services: Services) -> dict[str, str]:
    """The settings every function gets (no secrets)."""
    return {
        "FAASPIPE_STATE_DIR": services.state_dir,
        "FAASPIPE_KAFKA_BOOTSTRAP": services.kafka_bootstrap,
        "FAASPIPE_S3_ENDPOINT": services.s3_endpoint,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": services.s3_endpoint,
        "MLFLOW_S3_ENDPOINT_URL": services.s3_endpoint,
        "MLFLOW_TRACKING_URI": services.mlflow_tracking_uri,
        "FAASPIPE_BROKER_TOPIC": services.broker_topic,
        "FAASPIPE_IDEMPOTENCY_URL": services.idempotency_url,
        FUNCTION_URL_ENV: services.function_url_template,
        **({"FAASPIPE_FEAST_REDIS": services.feast_redis} if services.feast_redis else {}),
        **({"FAASPIPE_AUTH_TOKEN_DIR": services.token_dir} if services.token_dir else {}),
        **THREADS,
    }


def secret_env(access_key: str, secret_key: str, database_url: str | None = None) -> dict[str, str]:
    """The object store's credentials, under the names the S3 clients and MLflow read, and the
    state database's URL when there is one (``Services.database_url``)."""
    env = {
        "FAASPIPE_S3_ACCESS_KEY": access_key,
        "FAASPIPE_S3_SECRET_KEY": secret_key,
        "AWS_ACCESS_KEY_ID": access_key,
        "AWS_SECRET_ACCESS_KEY": secret_key,
        **({"FAASPIPE_DATABASE_URL": database_url} if database_url else {}),
    }
    assert set(env) <= set(SECRET_NAMES)
    return env


def function_env(fn: Function) -> dict[str, str]:
    """The function's own settings, beside the platform's."""
    env = {**fn.env, "FAASPIPE_FUNCTION": fn.name}
    if not fn.idempotent:
        env["FAASPIPE_IDEMPOTENCY_URL"] = ""  # the runtime then keeps no idempotency record
    return env


def function_args(
    fn: Function,
    *,
    port: int,
    host: str | None = None,
    concurrency: bool = False,
    metrics_port: int | None = None,
) -> list[str]:
    """``python -m shared.runtime`` arguments of a replica of ``fn``."""
    args = ["--name", fn.name, "--module", fn.module, "--kind", fn.kind]
    args += ["--host", host] if host else []
    args += ["--port", str(port)]
    args += ["--concurrency", str(fn.concurrency)] if concurrency else []
    args += ["--metrics-port", str(metrics_port)] if metrics_port is not None else []
    return args
