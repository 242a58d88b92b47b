"""Sample function: ``sample.ping`` → ``sample.pong`` reply.

``fail_times`` in the ping makes the handler raise that many times for the same event
before it succeeds, to show retries with backoff and the dead-letter path.
"""

from __future__ import annotations

import os
import threading
from collections import Counter

from events import new_event
from shared.cloudevents_io import CloudEvent

PONG = "dev.faaspipe.sample.pong.v1"
_attempts: Counter[tuple[str, str]] = Counter()
_lock = threading.Lock()


def handle(event: CloudEvent) -> CloudEvent | None:
    data = event.get_data() or {}
    key = (event.get_source(), event.get_id())
    with _lock:
        _attempts[key] += 1
        attempt = _attempts[key]
    if attempt <= int(data.get("fail_times", 0)):
        raise RuntimeError(
            f"failing on purpose: attempt {attempt} of {data['fail_times']} requested failures"
        )
    return new_event(
        PONG,
        {"message": data.get("message", ""), "handled_by": f"sample@{os.getpid()}", "attempt": attempt},
        source="/faaspipe/functions/sample",
        subject=event.get_id(),
    )
