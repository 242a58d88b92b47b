"""MLflow as the stack runs it: artifacts proxied to the local S3, registry aliases, PostgreSQL."""

from __future__ import annotations

import socket
import uuid
from dataclasses import replace
from pathlib import Path

import pytest

from localdev import components
from localdev.config import StackConfig
from localdev.processes import free_port
from tests.conftest import Stack, wait_until

pytestmark = pytest.mark.integration
POSTGRES_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/test"


def test_artifacts_go_to_s3_and_aliases_work(stack: Stack) -> None:
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(stack.config.url("mlflow"))
    client = MlflowClient()
    name = f"e2e-{uuid.uuid4().hex[:8]}"
    with mlflow.start_run() as run:
        mlflow.log_text("hello", "notes/hello.txt")
        mlflow.log_metric("roc_auc", 0.97)
    keys = [o.object_name for o in stack.s3().list_objects("mlflow", prefix="artifacts/", recursive=True)]
    assert any(k.endswith(f"{run.info.run_id}/artifacts/notes/hello.txt") for k in keys), keys[:5]
    client.create_registered_model(name)
    version = client.create_model_version(name, f"runs:/{run.info.run_id}/notes", run.info.run_id)
    client.set_registered_model_alias(name, "champion", version.version)
    assert client.get_model_version_by_alias(name, "champion").version == version.version


def _postgres_reachable() -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", 5432)) == 0


@pytest.mark.skipif(not _postgres_reachable(), reason="PostgreSQL is not reachable on 127.0.0.1:5432")
def test_mlflow_runs_on_postgresql(stack: Stack, tmp_path: Path) -> None:
    import mlflow
    from mlflow import MlflowClient

    port = free_port()
    config: StackConfig = replace(
        stack.config,
        state_dir=tmp_path,
        mlflow_backend_uri=POSTGRES_URL,
        ports={**stack.config.ports, "mlflow": port},
    )
    child = components.mlflow(config)
    child.start()
    try:
        wait_until(lambda: child.ready() or not child.alive(), 120, what="MLflow on PostgreSQL")
        assert child.alive(), child.log_tail()
        client = MlflowClient(tracking_uri=f"http://127.0.0.1:{port}")
        experiment = client.create_experiment(f"pg-{uuid.uuid4().hex[:8]}")
        run = client.create_run(experiment)
        client.log_metric(run.info.run_id, "roc_auc", 0.9)
        assert client.get_run(run.info.run_id).data.metrics["roc_auc"] == 0.9
        assert mlflow.__version__.startswith("3.")
    finally:
        child.stop()
