"""The function server's queue-proxy behaviour (pure WSGI, no server)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

from shared.server import ConcurrencyLimit


def test_concurrency_limit_queues_requests_like_the_queue_proxy() -> None:
    """``--concurrency N``: at most N requests in the handler at once, the others wait for a
    slot and then run; health routes never wait behind them."""
    gate = threading.Event()
    inside, peak, lock = 0, 0, threading.Lock()

    def app(environ: dict, start_response: object) -> Iterator[bytes]:  # type: ignore[type-arg]
        nonlocal inside, peak
        if environ["PATH_INFO"].startswith("/health/"):
            yield b"alive"
            return
        with lock:
            inside += 1
            peak = max(peak, inside)
        gate.wait(10)
        with lock:
            inside -= 1
        yield b"ok"

    limited = ConcurrencyLimit(app, limit=2)
    waiting = 0
    answers: list[bytes] = []

    def call(path: str) -> None:
        nonlocal waiting
        with lock:
            waiting += 1
        answers.extend(limited({"PATH_INFO": path}, None))

    requests = [threading.Thread(target=call, args=("/",)) for _ in range(5)]
    for t in requests:
        t.start()
    deadline = time.monotonic() + 5
    while (inside < 2 or waiting < 5) and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.1)
    assert (inside, waiting) == (2, 5), "two in the handler, three waiting"
    probe = threading.Thread(target=call, args=("/health/liveness",))
    probe.start()
    probe.join(5)
    assert not probe.is_alive() and answers == [b"alive"], "the health probe waited in the queue"
    gate.set()
    for t in requests:
        t.join(10)
    assert answers.count(b"ok") == 5 and peak == 2


def test_no_limit_passes_every_request_through() -> None:
    unlimited = ConcurrencyLimit(lambda environ, start: iter([b"ok"]), limit=0)
    assert list(unlimited({"PATH_INFO": "/"}, None)) == [b"ok"]
