"""A dedicated faaspipe stack for a benchmark, and what the benchmarks read from it.

Only public interfaces: ``faaspipe up``/``down`` (``localdev.cli``) with ``FAASPIPE_*``
variables, ``StackConfig`` URLs, and the supervisor's ``/status`` JSON.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import kafka

from bench.k6run import k6_version
from localdev.config import StackConfig
from localdev.processes import port_free
from shared.topology import REPO_ROOT


def wait_for_ports(config: StackConfig, timeout_s: float = 90.0) -> None:
    """Wait for the stack's ports to be free.

    Ports above 32768 are also handed out as the local end of outgoing connections, and
    stay taken while such a connection is in TIME_WAIT (60 s): wait that out, don't fail.
    """
    deadline = time.monotonic() + timeout_s
    while busy := [f"{name} ({port})" for name, port in config.ports.items() if not port_free(port)]:
        if time.monotonic() > deadline:
            return  # `faaspipe up` reports them
        print(f"waiting for ports in use: {', '.join(busy)}", file=sys.stderr, flush=True)
        time.sleep(5)


@contextmanager
def bench_stack(
    storage: str,
    port_base: int,
    function_dirs: str | None = None,
    extra_env: dict[str, str] | None = None,
) -> Iterator[StackConfig]:
    """A dedicated stack in a temporary state dir (``extra_env``: settings every process gets);
    always stopped, state kept on failure."""
    state_dir = Path(tempfile.mkdtemp(prefix="faaspipe-bench-"))
    env = {
        **os.environ,
        "FAASPIPE_STATE_DIR": str(state_dir),
        "FAASPIPE_PORT_BASE": str(port_base),
        "FAASPIPE_FUNCTION_DIRS": function_dirs or str(REPO_ROOT / "bench" / "functions"),
        "FAASPIPE_KAFKA_STORAGE": storage,
        "PYTHONPATH": str(REPO_ROOT),
        **(extra_env or {}),
    }

    def cli(command: str) -> int:
        return subprocess.call([sys.executable, "-m", "localdev.cli", command], env=env, cwd=REPO_ROOT)

    wait_for_ports(StackConfig.from_env(env))
    ok = False
    try:
        if cli("up") != 0:
            raise RuntimeError(f"`faaspipe up` failed; logs in {state_dir / 'logs'}")
        yield StackConfig.from_env(env)
        ok = True
    finally:
        cli("down")
        if ok and not os.environ.get("FAASPIPE_BENCH_KEEP_STATE"):
            shutil.rmtree(state_dir, ignore_errors=True)
        else:
            print(f"stack state kept for inspection: {state_dir}", file=sys.stderr)


def supervisor_status(config: StackConfig) -> dict[str, Any]:
    """The supervisor's ``/status`` JSON (what ``faaspipe status`` shows)."""
    with urllib.request.urlopen(config.url("supervisor") + "/status", timeout=10) as resp:
        return json.loads(resp.read())


def ready_replica_urls(config: StackConfig, function: str) -> list[str]:
    """Base URLs (no trailing slash) of the function's ready replicas, from ``/status``."""
    replicas = supervisor_status(config)["functions"][function]["replicas"]
    return [r["url"] for r in replicas if r.get("state") == "ready" and r.get("url")]


def machine_facts(storage: str) -> dict[str, Any]:
    from localdev.components import tansu_binary

    try:
        tansu = subprocess.run(
            [str(tansu_binary()), "--version"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError, ImportError) as exc:
        tansu = f"unknown ({exc})"
    return {
        "nproc": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "kafka_python": kafka.__version__,
        "tansu": tansu,
        "k6": k6_version(),
        "kafka_storage": storage,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def wait_until(probe: Callable[[], bool], timeout_s: float) -> float:
    """Poll ``probe`` every 50 ms; seconds until it was true, TimeoutError after ``timeout_s``."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if probe():
            return time.monotonic() - started
        time.sleep(0.05)
    raise TimeoutError(f"not reached in {timeout_s}s")
