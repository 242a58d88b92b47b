"""Benchmark sink: appends ``<event id> <message> <arrival time>`` per event, replies nothing.

The file is ``$FAASPIPE_STATE_DIR/bench-noop-receipts.log``; one ``os.write`` per line on an
``O_APPEND`` descriptor, so concurrent requests never interleave within a line.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from shared.cloudevents_io import CloudEvent

RECEIPTS_FILE = "bench-noop-receipts.log"
_fd: int | None = None


def receipts_path(state_dir: str | os.PathLike[str]) -> Path:
    return Path(state_dir) / RECEIPTS_FILE


def init() -> None:
    global _fd
    path = receipts_path(os.environ["FAASPIPE_STATE_DIR"])
    _fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)


def handle(event: CloudEvent) -> None:
    received = time.time()
    data = event.get_data() or {}
    message = str(data.get("message", "")) if isinstance(data, dict) else ""
    assert _fd is not None, "init() has not run"
    os.write(_fd, f"{event.get_id()} {message} {received:.6f}\n".encode())
