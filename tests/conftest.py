"""Shared test fixtures: the real local stack (Tansu, SeaweedFS, MLflow, broker, functions)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
import urllib3
from minio import Minio

from localdev.config import StackConfig
from shared.cloudevents_io import CloudEvent, to_http

REPO = Path(__file__).resolve().parent.parent
TEST_PORT_BASE = int(os.environ.get("FAASPIPE_TEST_PORT_BASE", "27000"))
T = TypeVar("T")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")  # fail fast, not after minutes
HTTP = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(connect=2, read=30))


def wait_until(probe: Callable[[], T], timeout: float = 30.0, interval: float = 0.2, what: str = "") -> T:
    """Poll ``probe`` until it returns something truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what or probe}")
        time.sleep(interval)


@dataclass
class Stack:
    env: dict[str, str]
    state_dir: Path

    @property
    def config(self) -> StackConfig:
        return StackConfig.load(self.state_dir)

    def cli(
        self, *args: str, timeout: float = 400, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "localdev.cli", *args],
            cwd=REPO,
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def post_event(self, event: CloudEvent, *, structured: bool = False) -> urllib3.BaseHTTPResponse:
        headers, body = to_http(event, structured=structured)
        return HTTP.request("POST", self.config.ingress_url, body=body, headers=headers)

    def post_raw(self, body: bytes, headers: dict[str, str]) -> urllib3.BaseHTTPResponse:
        return HTTP.request("POST", self.config.ingress_url, body=body, headers=headers)

    def records(self, trigger: str | None = None) -> list[dict[str, Any]]:
        resp = HTTP.request("GET", self.config.function_url("recorder") + "records")
        assert resp.status == 200, resp.data
        rows = json.loads(resp.data)
        return [r for r in rows if trigger is None or r["trigger"] == trigger]

    def s3(self) -> Minio:
        cfg = self.config
        return Minio(
            f"127.0.0.1:{cfg.ports['s3']}",
            access_key=cfg.access_key,
            secret_key=cfg.secret_key,
            secure=False,
            region="us-east-1",
        )

    def log(self, name: str) -> str:
        path = self.state_dir / "logs" / f"{name}.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""


def _stack_processes(state_dir: Path) -> list[str]:
    """Processes whose command line or environment mentions the state dir (ours)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            environ = (proc / "environ").read_bytes()
        except OSError:
            continue
        if str(state_dir) in cmdline or str(state_dir).encode() in environ:
            found.append(f"{proc.name}: {cmdline[:120]}")
    return found


@contextmanager
def running_stack(state_dir: Path, port_base: int, function_dirs: str, storage: str) -> Iterator[Stack]:
    """`faaspipe up` a stack; `faaspipe down` it afterwards and check no process is left."""
    env = {
        **os.environ,
        "FAASPIPE_STATE_DIR": str(state_dir),
        "FAASPIPE_PORT_BASE": str(port_base),
        "FAASPIPE_FUNCTION_DIRS": function_dirs,
        "FAASPIPE_KAFKA_STORAGE": storage,
        "FAASPIPE_CONTRACT_DIRS": str(REPO / "tests" / "contracts"),  # a second contract
        "PYTHONPATH": str(REPO),
        # a dedicated stack starts while the session's stack runs: on 2 busy cores its
        # training-environment replicas (two each in test_replicas) can take minutes to import
        "FAASPIPE_START_TIMEOUT_S": os.environ.get("FAASPIPE_START_TIMEOUT_S", "420"),
        # functions idle at zero between tests and wake by a fork; a zygote that idled out would
        # make the next wake-up of its environment an import of seconds, against tests' waits.
        # Idle-out itself is tested in tests/test_zygote.py.
        "FAASPIPE_ZYGOTE_IDLE_S": os.environ.get("FAASPIPE_ZYGOTE_IDLE_S", "7200"),
    }
    stack = Stack(env, state_dir)
    result = stack.cli("up", timeout=900)
    if result.returncode != 0:
        stack.cli("down")
        pytest.fail(f"faaspipe up failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    try:
        yield stack
    finally:
        stack.cli("down")
        leftovers = _stack_processes(state_dir)
        assert not leftovers, f"processes left after `faaspipe down`: {leftovers}"


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The whole product (functions/ + tests/functions/) on one stack for the session.

    Kafka on Tansu's memory engine: its S3 engine reads and writes per record batch and is too
    slow under the ML chain's load on 2 cores; durability on S3 has its own test stack.
    """
    dirs = os.environ.get(
        "FAASPIPE_TEST_FUNCTION_DIRS",
        os.pathsep.join([str(REPO / "functions"), str(REPO / "tests" / "functions")]),
    )
    storage = os.environ.get("FAASPIPE_TEST_KAFKA_STORAGE", "memory")
    with running_stack(tmp_path_factory.mktemp("faaspipe-state"), TEST_PORT_BASE, dirs, storage) as stack:
        yield stack


@pytest.fixture(scope="module")
def durable_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A small stack (sample + recorder) with Kafka stored on the local S3 (the default engine)."""
    fns = tmp_path_factory.mktemp("durable-functions")
    for folder in (REPO / "functions" / "sample", REPO / "tests" / "functions" / "recorder"):
        (fns / folder.name).symlink_to(folder)
    with running_stack(
        tmp_path_factory.mktemp("durable-state"), TEST_PORT_BASE + 500, str(fns), "s3"
    ) as stack:
        yield stack
