"""The noop function's receipts: which events arrived, when, how often.

``bench/functions/noop`` appends ``<ce-id> t=<send time> <arrival time>`` per delivered
event to ``$FAASPIPE_STATE_DIR/bench-noop-receipts.log``. A k6 run tags its events with a
unique ``ce-id`` prefix; this module tails the file and turns one prefix's receipts into
delivery figures: delivered/expected, duplicates, latency percentiles, throughput, and
whether latency grew during the run (the dispatcher falling behind).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.stats import latency_summary, rate


@dataclass
class Receipt:
    sent: float  # unix time carried in the event
    received: float  # first arrival at the noop function
    deliveries: int = 1


@dataclass
class ReceiptLog:
    """Incremental reader of the receipts file (only complete lines are consumed)."""

    path: Path
    offset: int = 0
    by_id: dict[str, Receipt] = field(default_factory=dict)

    def poll(self) -> None:
        if not self.path.exists():
            return
        with self.path.open("rb") as f:
            f.seek(self.offset)
            chunk = f.read()
        complete = chunk[: chunk.rfind(b"\n") + 1]
        self.offset += len(complete)
        for line in complete.decode().splitlines():
            event_id, message, received = line.split(" ")
            seen = self.by_id.get(event_id)
            if seen is not None:
                seen.deliveries += 1
                continue
            self.by_id[event_id] = Receipt(float(message.removeprefix("t=")), float(received))

    def matching(self, prefix: str) -> dict[str, Receipt]:
        return {k: v for k, v in self.by_id.items() if k.startswith(prefix)}

    def wait_for(self, prefix: str, expected: int, timeout_s: float) -> dict[str, Receipt]:
        """Poll until ``expected`` distinct ids with ``prefix`` arrived, or the timeout."""
        deadline = time.monotonic() + timeout_s
        while True:
            self.poll()
            got = self.matching(prefix)
            if len(got) >= expected or time.monotonic() > deadline:
                return got
            time.sleep(0.1)


def latency_growth_ms(receipts: dict[str, Receipt]) -> float | None:
    """Median latency of the last quarter of events (by send time) minus the first quarter's.

    Near zero when the path keeps up; grows with the backlog when it does not.
    """
    ordered = sorted(receipts.values(), key=lambda r: r.sent)
    quarter = len(ordered) // 4
    if quarter < 5:
        return None
    first = statistics.median(r.received - r.sent for r in ordered[:quarter])
    last = statistics.median(r.received - r.sent for r in ordered[-quarter:])
    return round((last - first) * 1000, 2)


def delivery_figures(receipts: dict[str, Receipt], expected: int) -> dict[str, Any]:
    """Delivered/expected, duplicates, latency (ms), end-to-end throughput, latency growth."""
    first_send = min((r.sent for r in receipts.values()), default=0.0)
    last_receipt = max((r.received for r in receipts.values()), default=0.0)
    return {
        "expected": expected,
        "delivered": len(receipts),
        "lost": max(0, expected - len(receipts)),
        "duplicates": sum(r.deliveries - 1 for r in receipts.values()),
        "end_to_end_throughput_eps": rate(len(receipts), last_receipt - first_send),
        "latency_ms": latency_summary(r.received - r.sent for r in receipts.values()),
        "latency_growth_ms": latency_growth_ms(receipts),
    }
