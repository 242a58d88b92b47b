"""Zygotes (localdev/zygote/): what a forked replica inherits, and what happens when a zygote
dies. Real processes in the serving environment's interpreter; no stack needed.

The probe (``tests/zygote_probe``) is forked like a replica and reports what it sees."""

from __future__ import annotations

import functools
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from localdev import components
from localdev.processes import Child
from localdev.zygote.forked import ForkedProcess
from localdev.zygote.pool import ZygotePool
from localdev.zygote.preload import FIRST, FORK_SAFE_ENV, imported_modules, modules_for, third_party
from shared.topology import REPO_ROOT, load_topology

ENVIRONMENT = "serving"


def _python() -> Path:
    try:
        return components.python_for(ENVIRONMENT)
    except FileNotFoundError as exc:  # `make test` creates the environments first
        pytest.fail(str(exc))


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ZygotePool]:
    state = tmp_path_factory.mktemp("zygote-state")
    zygotes = ZygotePool(
        load_topology(),
        python_for=components.python_for,
        state_dir=state,
        logs_dir=state / "logs",
        env={"ZYGOTE_ONLY_MARK": "1"},
        start_timeout_s=180,
        idle_s=3600,
    )
    yield zygotes
    zygotes.stop()


def _probe(
    pool: ZygotePool, tmp: Path, name: str, *args: str, mark: str = "x"
) -> tuple[Child, dict[str, Any]]:
    report = tmp / f"{name}.json"
    child = Child(
        name=name,
        argv=[str(_python()), "-m", "tests.zygote_probe", str(report), *args],
        log_path=tmp / f"{name}.log",
        pid_dir=tmp / "pids",
        env={"PROBE_MARK": mark, "PYTHONPATH": str(REPO_ROOT)},
        cwd=REPO_ROOT,
        forker=functools.partial(pool.fork, ENVIRONMENT),
    )
    child.start()
    deadline = time.monotonic() + 120
    while not report.exists():
        assert time.monotonic() < deadline, f"probe {name} never reported:\n{child.log_tail()}"
        assert child.alive() or report.exists(), f"probe {name} died:\n{child.log_tail()}"
        time.sleep(0.05)
    return child, json.loads(report.read_text())


def _sockets(fds: dict[str, str]) -> set[str]:
    return {target for target in fds.values() if target.startswith("socket:")}


def _zygote_sockets(pool: ZygotePool) -> set[str]:
    zygote = pool.zygotes[ENVIRONMENT]
    assert zygote.process.proc is not None
    pid = zygote.process.proc.pid
    out = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:"):
            out.add(target)
    return out


# --- what is preloaded ---------------------------------------------------------------------


def test_imports_are_read_at_any_depth_and_from_imports_name_submodules() -> None:
    source = "import a.b\nfrom c import d\ndef f():\n    import e\n    from .rel import g\n"
    assert imported_modules(source) == {"a.b", "c", "c.d", "e"}


def test_third_party_keeps_ours_stdlib_and_the_dask_engine_out_runtime_first() -> None:
    names = {
        "shared.modelling",
        "json",
        "os.path",
        "xgboost",
        "dask.array",
        "distributed",
        "xgboost.dask",
        "flask",
    }
    assert third_party(names) == [*FIRST, "xgboost"]


def test_training_environment_preloads_its_heavy_modules_and_serving_does_not_take_them() -> None:
    topology = load_topology()

    def preload(env: str) -> list[str]:
        dirs = sorted({fn.directory for fn in topology.functions.values() if fn.environment == env})
        return modules_for(dirs, REPO_ROOT)

    train, serving = preload("train"), preload("serving")
    assert {"feast", "mlflow", "xgboost", "skopt", "pyarrow.parquet", "sklearn.metrics"} <= set(train)
    assert train[: len(FIRST)] == list(FIRST)  # prometheus_client before feast (see preload.FIRST)
    assert "feast" not in serving and "xgboost" in serving  # followed from predict's own imports
    assert not [m for m in train + serving if m.split(".")[0] in {"shared", "functions", "events", "dask"}]


# --- fork safety ---------------------------------------------------------------------------


def test_forked_replicas_share_no_socket_thread_file_or_seed(pool: ZygotePool, tmp_path: Path) -> None:
    first, one = _probe(pool, tmp_path, "probe-a", mark="a")
    second, two = _probe(pool, tmp_path, "probe-b", mark="b")
    try:
        zygote_pid = pool.zygotes[ENVIRONMENT].process.proc.pid  # type: ignore[union-attr]
        for child, report in ((first, one), (second, two)):
            assert isinstance(child.proc, ForkedProcess) and child.proc.pid == report["pid"]
            # adopted by this process (the subreaper), in a session and group of its own
            assert report["ppid"] == os.getpid() and report["ppid"] != zygote_pid
            assert report["sid"] == report["pid"] == report["pgid"]
            assert report["threads"] == 1
            # nothing inherited: stdin, its log twice, and what the probe itself opened
            assert sorted(report["fds"])[:3] == ["0", "1", "2"] and report["fds"]["0"] == "/dev/null"
            assert report["fds"]["1"] == report["fds"]["2"] == str(child.log_path)
            assert report["main"] == "__main__" and report["preloaded_numpy"] is True
            assert report["cmdline"] == child.argv  # what `ps` shows: the replica, not its zygote
            assert report["cwd"] == str(REPO_ROOT)
            # exactly the environment it was given, none of the zygote's own
            assert report["env"] == child.full_env()
            assert "ZYGOTE_ONLY_MARK" not in report["env"]
            assert not set(FORK_SAFE_ENV) & (set(report["env"]) - set(os.environ))
        assert (one["env"]["PROBE_MARK"], two["env"]["PROBE_MARK"]) == ("a", "b")
        assert not _sockets(one["fds"]) & _sockets(two["fds"])
        assert not (_sockets(one["fds"]) | _sockets(two["fds"])) & _zygote_sockets(pool)
        assert one["numpy"] != two["numpy"] and one["random"] != two["random"]
        assert len(os.listdir(f"/proc/{zygote_pid}/task")) == 1
    finally:
        first.stop(5)
        second.stop(5)
    # stopped through its process group, and reaped by this process: an exit status, no zombie
    assert first.exit_code() == 0 and second.exit_code() == 0


def test_a_forked_replica_exit_code_reaches_the_supervisor(pool: ZygotePool, tmp_path: Path) -> None:
    child, report = _probe(pool, tmp_path, "probe-exit", "7")
    assert child.proc is not None
    assert child.proc.wait(timeout=30) == 7 and child.exit_code() == 7 and not child.alive()
    assert "Traceback" not in child.log_tail()
    assert f"probe {report['pid']} reported" in child.log_tail()


def test_a_zygote_killed_mid_fork_is_restarted_and_the_fork_delivered(
    pool: ZygotePool, tmp_path: Path
) -> None:
    """The zygote is stopped (SIGSTOP) so that a fork request waits on it, then killed: the pool
    restarts it and sends the request again; the replica starts once."""
    _probe(pool, tmp_path, "probe-warm")[0].stop(5)  # the zygote is running
    zygote = pool.zygotes[ENVIRONMENT]
    assert zygote.process.proc is not None
    old_pid, starts = zygote.process.proc.pid, zygote.starts
    os.kill(old_pid, signal.SIGSTOP)
    result: dict[str, Any] = {}

    def late() -> None:
        result["child"], result["report"] = _probe(pool, tmp_path, "probe-late")

    waiting = threading.Thread(target=late)
    waiting.start()
    deadline = time.monotonic() + 30
    while not zygote.lock.locked():  # the request is in flight, held by the stopped zygote
        assert time.monotonic() < deadline
        time.sleep(0.02)
    time.sleep(0.3)
    os.kill(old_pid, signal.SIGKILL)
    waiting.join(timeout=240)
    assert not waiting.is_alive()
    try:
        assert zygote.starts == starts + 1 and zygote.process.proc.pid != old_pid  # type: ignore[union-attr]
        assert result["report"]["ppid"] == os.getpid()
        assert len(list(tmp_path.glob("probe-late.json"))) == 1
    finally:
        result["child"].stop(5)


def test_an_idle_zygote_is_stopped_and_started_again_when_needed(pool: ZygotePool, tmp_path: Path) -> None:
    _probe(pool, tmp_path, "probe-before")[0].stop(5)
    zygote = pool.zygotes[ENVIRONMENT]
    pool.idle_s = 0.0
    try:
        assert pool.idle_out() == [ENVIRONMENT] and not zygote.process.alive()
    finally:
        pool.idle_s = 3600
    starts = zygote.starts
    child, report = _probe(pool, tmp_path, "probe-after")
    child.stop(5)
    assert zygote.starts == starts + 1 and report["ppid"] == os.getpid()
