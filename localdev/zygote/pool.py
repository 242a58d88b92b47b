"""The supervisor's side: one zygote per environment, started lazily, restarted, idled out."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from localdev.processes import Child
from localdev.zygote.forked import ForkedProcess, become_subreaper
from localdev.zygote.preload import FORK_SAFE_ENV, modules_for
from shared.topology import REPO_ROOT, Topology

log = logging.getLogger("faaspipe.zygote")

REQUEST_TIMEOUT_S = 30.0  # a fork answers in milliseconds; a zygote silent this long is stuck
ATTEMPTS = 2  # a zygote that died mid-request is restarted once, and the request sent again
MAX_UNIX_PATH = 100


class ZygoteUnavailable(RuntimeError):
    pass


@dataclass
class Zygote:
    environment: str
    process: Child
    socket_path: Path
    lock: threading.Lock = field(default_factory=threading.Lock)
    last_used: float = field(default_factory=time.monotonic)
    forks: int = 0
    starts: int = 0

    def request(self, doc: dict[str, Any], timeout_s: float = REQUEST_TIMEOUT_S) -> dict[str, Any]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout_s)
            sock.connect(str(self.socket_path))
            sock.sendall(json.dumps(doc).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    raise ZygoteUnavailable(f"zygote {self.environment} closed the connection")
                data += chunk
        return json.loads(data)

    def ensure_running(self, timeout_s: float) -> None:
        if self.process.alive():
            return
        self.socket_path.unlink(missing_ok=True)
        self.starts += 1
        if self.starts > 1:
            log.warning(
                "zygote %s is not running; starting it again (start #%d)", self.environment, self.starts
            )
        self.process.start()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.process.alive():
                raise ZygoteUnavailable(
                    f"zygote {self.environment} exited with code {self.process.exit_code()}:\n"
                    + self.process.log_tail()
                )
            if self.socket_path.exists():
                with contextlib.suppress(OSError, ValueError, ZygoteUnavailable):
                    if self.request({"ping": True}, timeout_s=5).get("ok"):
                        return
            time.sleep(0.05)
        raise ZygoteUnavailable(f"zygote {self.environment} not ready after {timeout_s:.0f}s")


class ZygotePool:
    """Forks function replicas from per-environment zygotes (``FAASPIPE_ZYGOTE=on``)."""

    def __init__(
        self,
        topology: Topology,
        *,
        python_for: Callable[[str], Path],
        state_dir: Path,
        logs_dir: Path,
        env: dict[str, str],
        start_timeout_s: float,
        idle_s: float,
    ) -> None:
        if not become_subreaper():
            raise RuntimeError("the supervisor could not become a child subreaper (prctl)")
        self.topology = topology
        self.python_for = python_for
        self.state_dir = state_dir
        self.logs_dir = logs_dir
        self.env = env
        self.start_timeout_s = start_timeout_s
        self.idle_s = idle_s
        self.zygotes: dict[str, Zygote] = {}
        self.lock = threading.Lock()

    def _socket_path(self, environment: str) -> Path:
        path = self.state_dir / "zygotes" / f"{environment}.sock"
        if len(str(path)) > MAX_UNIX_PATH:  # AF_UNIX paths are limited to 108 bytes
            digest = hashlib.sha256(str(path).encode()).hexdigest()[:12]
            path = Path(tempfile.gettempdir()) / f"faaspipe-zygote-{digest}.sock"
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def zygote(self, environment: str) -> Zygote:
        with self.lock:
            found = self.zygotes.get(environment)
            if found is None:
                directories = sorted(
                    {fn.directory for fn in self.topology.functions.values() if fn.environment == environment}
                )
                path = self._socket_path(environment)
                argv = [
                    str(self.python_for(environment)),
                    "-m",
                    "localdev.zygote.server",
                    "--socket",
                    str(path),
                    "--preload",
                    ",".join(modules_for(directories, REPO_ROOT)),
                ]
                process = Child(
                    name=f"zygote-{environment}",
                    argv=argv,
                    log_path=self.logs_dir / f"zygote-{environment}.log",
                    pid_dir=self.state_dir / "pids",
                    env={**self.env, "PYTHONPATH": str(REPO_ROOT), **FORK_SAFE_ENV},
                    cwd=REPO_ROOT,
                )
                found = self.zygotes[environment] = Zygote(environment, process, path)
            return found

    def fork(self, environment: str, child: Child) -> ForkedProcess | None:
        """Fork ``child``'s replica from its environment's zygote; None if no zygote can."""
        zygote = self.zygote(environment)
        request = {
            "argv": child.argv,
            "env": child.full_env(),
            "cwd": str(child.cwd or REPO_ROOT),
            "log": str(child.log_path),
        }
        with zygote.lock:
            zygote.last_used = time.monotonic()
            for attempt in range(1, ATTEMPTS + 1):
                try:
                    zygote.ensure_running(self.start_timeout_s)
                    reply = zygote.request(request)
                    if "pid" not in reply:
                        raise ZygoteUnavailable(str(reply.get("error", reply)))
                except (OSError, ValueError, ZygoteUnavailable) as exc:
                    log.warning(
                        "zygote %s could not fork %s (attempt %d): %s", environment, child.name, attempt, exc
                    )
                    zygote.process.stop(timeout_s=2)
                    continue
                zygote.forks += 1
                return ForkedProcess(int(reply["pid"]))
        log.error("no zygote for %s: %s starts as a new process", environment, child.name)
        return None

    def warm(self, environments: set[str]) -> dict[str, str]:
        """Start the zygotes of ``environments`` side by side (``faaspipe up``: with functions at
        zero, the first event should not wait for an import); their errors, by environment."""
        errors: dict[str, str] = {}

        def start(environment: str) -> None:
            zygote = self.zygote(environment)
            with zygote.lock:
                zygote.last_used = time.monotonic()
                try:
                    zygote.ensure_running(self.start_timeout_s)
                except (OSError, ZygoteUnavailable) as exc:
                    errors[environment] = str(exc)
                    log.error("zygote %s did not start: %s", environment, exc)

        threads = [threading.Thread(target=start, args=(env,), daemon=True) for env in sorted(environments)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return errors

    def idle_out(self) -> list[str]:
        """Stop zygotes that forked nothing for ``idle_s``; return their environments."""
        stopped = []
        for zygote in list(self.zygotes.values()):
            if not zygote.process.alive() or time.monotonic() - zygote.last_used < self.idle_s:
                continue
            if zygote.lock.acquire(blocking=False):
                try:
                    log.info("zygote %s idle for %.0fs: stopping it", zygote.environment, self.idle_s)
                    zygote.process.stop(timeout_s=5)
                    stopped.append(zygote.environment)
                finally:
                    zygote.lock.release()
        return stopped

    def stop(self) -> None:
        for zygote in self.zygotes.values():
            zygote.process.stop(timeout_s=5)

    def status(self) -> dict[str, dict[str, object]]:
        return {
            name: {
                "pid": z.process.proc.pid if z.process.alive() and z.process.proc else None,
                "running": z.process.alive(),
                "starts": z.starts,
                "forks": z.forks,
                "idle_s": round(time.monotonic() - z.last_used, 1),
            }
            for name, z in self.zygotes.items()
        }
