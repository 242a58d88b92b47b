"""``mlflow models serve`` of the registered version predict serves: the ML benchmark's peer."""

from __future__ import annotations

import json
import os
import subprocess
import time
from typing import Any

import urllib3

from bench.stack import wait_until
from localdev.components import VENVS_DIR
from localdev.config import StackConfig
from localdev.processes import free_port
from shared.topology import REPO_ROOT

HTTP = urllib3.PoolManager(maxsize=4, retries=False, timeout=urllib3.Timeout(connect=5, read=30))


class MlflowServe:
    """``mlflow models serve`` of the same registered version (the peer)."""

    def __init__(self, config: StackConfig, model: str, version: str) -> None:
        self.port = free_port()
        train_bin = VENVS_DIR / "train" / "bin"  # mlflow execs uvicorn from PATH
        env = {
            **os.environ,
            **config.function_env(),
            "OMP_NUM_THREADS": "1",
            "PATH": f"{train_bin}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        argv = [
            str(VENVS_DIR / "train" / "bin" / "mlflow"),
            "models",
            "serve",
            "-m",
            f"models:/{model}/{version}",
            "--env-manager",
            "local",
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "--workers",
            "1",
        ]
        self.log = open(config.logs_dir / "mlflow-models-serve.log", "wb")  # noqa: SIM115
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            argv, stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT, start_new_session=True
        )

    @property
    def invocations_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/invocations"

    def wait_ready(self) -> float:
        def ping() -> bool:
            try:
                return HTTP.request("GET", f"http://127.0.0.1:{self.port}/ping", timeout=2).status == 200
            except urllib3.exceptions.HTTPError:
                return False

        wait_until(ping, 300)
        return time.monotonic() - self.started

    def stop(self) -> None:
        os.killpg(self.proc.pid, 15)
        self.proc.wait(30)
        self.log.close()


def mlflow_bodies(config: StackConfig, model: str, version: str, rows: list[dict[str, Any]]) -> list[str]:
    """Each row encoded as the registered model's signature expects (one request body each)."""
    from minio import Minio

    from shared import layout
    from shared.contracts import get_contract

    s3 = Minio(
        f"127.0.0.1:{config.ports['s3']}",
        access_key=config.access_key,
        secret_key=config.secret_key,
        secure=False,
    )
    meta = json.loads(s3.get_object("models", layout.serving_model(model, version, "meta.json")).read())
    contract = get_contract("ai4i")
    return [
        json.dumps(
            {
                "dataframe_split": {
                    "columns": meta["features"],
                    "data": [contract.encode(contract.derive(dict(row)))],
                }
            }
        )
        for row in rows
    ]
