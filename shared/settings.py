"""Where a function finds the platform: read from the environment its runtime sets.

On localdev the supervisor sets these; on Kubernetes the generated manifests do
(``K_SINK`` is injected by Knative's SinkBinding for sources).
"""

from __future__ import annotations

import os
from urllib.parse import urlparse

from minio import Minio


def kafka_bootstrap() -> str:
    return os.environ.get("FAASPIPE_KAFKA_BOOTSTRAP", "127.0.0.1:9092")


def sink_url() -> str:
    """Where to send events: the broker ingress (Knative ``K_SINK``)."""
    try:
        return os.environ["K_SINK"]
    except KeyError:
        raise RuntimeError("K_SINK is not set: this process does not know where the broker is") from None


def function_url(name: str) -> str:
    """Base URL of another function (``FAASPIPE_FUNCTION_URL_TEMPLATE``, rendered per platform:
    the gateway's path locally, the Knative Service's cluster address on a cluster)."""
    try:
        template = os.environ["FAASPIPE_FUNCTION_URL_TEMPLATE"]
    except KeyError:
        raise RuntimeError(
            "FAASPIPE_FUNCTION_URL_TEMPLATE is not set: this process does not know where other functions are"
        ) from None
    return template.format(name=name)


def s3_client() -> Minio:
    endpoint = urlparse(os.environ.get("FAASPIPE_S3_ENDPOINT", "http://127.0.0.1:8333"))
    return Minio(
        endpoint.netloc,
        access_key=os.environ.get("FAASPIPE_S3_ACCESS_KEY"),
        secret_key=os.environ.get("FAASPIPE_S3_SECRET_KEY"),
        secure=endpoint.scheme == "https",
        region=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
    )


def read_object(bucket: str, key: str, client: Minio | None = None) -> bytes:
    """An object's whole content; the connection goes back to the pool."""
    response = (client or s3_client()).get_object(bucket, key)
    try:
        return response.read()
    finally:
        response.close()
        response.release_conn()


MEMORY_BUDGET_ENV = "FAASPIPE_MEMORY_BUDGET_MB"
DEFAULT_MEMORY_BUDGET_MB = 256.0


def memory_budget_bytes() -> int:
    """What one big job (ingest, materialise) may use above its process's resting size;
    the chunk and batch sizes of those jobs are derived from it (``FAASPIPE_MEMORY_BUDGET_MB``)."""
    return int(float(os.environ.get(MEMORY_BUDGET_ENV) or DEFAULT_MEMORY_BUDGET_MB) * 1024 * 1024)
