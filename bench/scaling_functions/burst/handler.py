"""Benchmark worker: ``BENCH_BURST_WORK_S`` (default 0.1 s) of work per event, then one line
``<event id> <pid> <unix time>`` appended to ``$FAASPIPE_STATE_DIR/bench-burst-handled.log``
(one ``os.write`` on an ``O_APPEND`` descriptor per line: replicas never interleave)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from shared.cloudevents_io import CloudEvent

HANDLED_FILE = "bench-burst-handled.log"
_fd: int | None = None


def handled_path(state_dir: str | os.PathLike[str]) -> Path:
    return Path(state_dir) / HANDLED_FILE


def init() -> None:
    global _fd
    _fd = os.open(
        handled_path(os.environ["FAASPIPE_STATE_DIR"]), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644
    )


def handle(event: CloudEvent) -> None:
    time.sleep(float(os.environ.get("BENCH_BURST_WORK_S", "0.1")))
    assert _fd is not None, "init() has not run"
    os.write(_fd, f"{event.get_id()} {os.getpid()} {time.time():.6f}\n".encode())
