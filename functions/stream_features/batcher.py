"""Micro-batches of the requests a replica has in flight (no state: each caller waits for its own).

A Feast push costs about the same for 1 row as for 30 (12 ms vs 14 ms measured), so the
readings delivered to a replica at once are written in one transaction and one push: a caller
hands its item to :meth:`Batcher.submit` and blocks; one worker thread takes everything queued
(up to ``max_items``, waiting at most ``linger_s`` after the first), processes the batch and
wakes each caller with its own outcome. A failed batch fails every caller in it, so each
delivery is retried by the broker; the window store makes retries harmless.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

T = TypeVar("T")
__all__ = ["Batcher"]


class _Slot(Generic[T]):
    __slots__ = ("done", "error", "item", "result")

    def __init__(self, item: T) -> None:
        self.item = item
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.result: Any = None


class Batcher(Generic[T]):
    def __init__(
        self, process: Callable[[Sequence[T]], Sequence[Any]], max_items: int = 64, linger_s: float = 0.002
    ) -> None:
        self._process = process
        self._max = max_items
        self._linger = linger_s
        self._queue: queue.Queue[_Slot[T] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="stream-batcher", daemon=True)
        self._thread.start()

    def submit(self, item: T, timeout_s: float = 60.0) -> Any:
        """Process ``item`` in the next batch; its result, or the batch's exception."""
        slot = _Slot(item)
        self._queue.put(slot)
        if not slot.done.wait(timeout_s):
            raise TimeoutError(f"no batch took the item within {timeout_s:g}s")
        if slot.error is not None:
            raise slot.error
        return slot.result

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            deadline = time.monotonic() + self._linger
            while len(batch) < self._max:
                try:
                    nxt = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)
                    break
                batch.append(nxt)
            try:
                results = self._process([slot.item for slot in batch])
                for slot, result in zip(batch, results, strict=True):
                    slot.result = result
            except BaseException as exc:  # noqa: BLE001 - handed to every caller of the batch
                for slot in batch:
                    slot.error = exc
            for slot in batch:
                slot.done.set()
