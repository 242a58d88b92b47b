"""Slow test handler: 0.3 s of work per event, then the event id appended to processed.log."""

from __future__ import annotations

import os
import time
from pathlib import Path

from shared.cloudevents_io import CloudEvent

LOG = Path(os.environ.get("FAASPIPE_STATE_DIR", ".")) / "slow-processed.log"


def handle(event: CloudEvent) -> None:
    time.sleep(0.3)
    with LOG.open("a") as out:
        out.write(f"{event.get_id()} {os.getpid()}\n")
