"""Supervised child processes: each in its own process group, logs and pid under the state dir."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import urllib3

_HTTP = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(connect=0.5, read=2.0))


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.3)
        return sock.connect_ex((host, port)) == 0


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def pick_port(candidates: Iterable[int], taken: Collection[int]) -> int:
    """The first candidate port not in ``taken`` that nothing listens on."""
    for port in candidates:
        if port not in taken and port_free(port):
            return port
    raise RuntimeError("no free port left in the stack's replica range")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_ok(url: str) -> bool:
    try:
        return _HTTP.request("GET", url).status == 200
    except urllib3.exceptions.HTTPError:
        return False


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child still "exists": reap it if it is ours
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    return True


def kill_group(pgid: int, timeout_s: float = 10.0) -> None:
    """SIGTERM a process group, SIGKILL what is left after ``timeout_s``."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _group_alive(pgid):
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    # only zombies left? check /proc
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


class Process(Protocol):
    """What the supervisor holds of a running child: a ``Popen``, or a zygote's fork."""

    pid: int

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int: ...


@dataclass
class Child:
    """One supervised process. Ready when its health URL answers 200 (or its port is open)."""

    name: str
    argv: list[str]
    log_path: Path
    pid_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    health_url: str | None = None
    port: int | None = None
    proc: Process | None = None
    # forks the process instead of spawning it (a zygote, localdev/zygote/); None → spawn it too
    forker: Callable[[Child], Process | None] | None = None
    restarts: int = 0
    started_at: float = 0.0
    ready_cached: bool = False  # last readiness seen by the supervisor
    retired: bool = False  # scaled down: being drained, never restarted
    starting: bool = False  # being forked or spawned outside the supervisor's lock

    @property
    def pid_file(self) -> Path:
        return self.pid_dir / f"{self.name}.pid"

    def full_env(self) -> dict[str, str]:
        return {**os.environ, **self.env}

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.pid_dir.mkdir(parents=True, exist_ok=True)
        how = "forking" if self.forker is not None else "starting"
        with open(self.log_path, "ab") as log:
            log.write(f"\n--- {time.strftime('%Y-%m-%dT%H:%M:%S')} {how} {' '.join(self.argv)}\n".encode())
        self.proc = self.forker(self) if self.forker is not None else None
        if self.proc is None:
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen(
                    self.argv,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    cwd=self.cwd,
                    env=self.full_env(),
                    start_new_session=True,
                )
        self.started_at = time.monotonic()
        self.pid_file.write_text(str(self.proc.pid))

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def ready(self) -> bool:
        if not self.alive():
            return False
        if self.health_url:
            return http_ok(self.health_url)
        if self.port:
            return port_open(self.port)
        return True

    def exit_code(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.proc is not None:
            kill_group(self.proc.pid, timeout_s)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=1)
        self.pid_file.unlink(missing_ok=True)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def kill_leftovers(pid_dir: Path) -> list[str]:
    """Kill process groups recorded in pid files (after a supervisor crash); return their names."""
    killed = []
    for pid_file in sorted(pid_dir.glob("*.pid")) if pid_dir.exists() else []:
        with contextlib.suppress(ValueError, OSError):
            pid = int(pid_file.read_text().strip())
            if _group_alive(pid):
                kill_group(pid, 5.0)
                killed.append(pid_file.stem)
        pid_file.unlink(missing_ok=True)
    return killed
