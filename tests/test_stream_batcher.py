"""stream-features' micro-batcher: callers in flight share a batch, each gets its own outcome."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import pytest

from functions.stream_features.batcher import Batcher


def test_concurrent_callers_share_batches_and_get_their_own_results() -> None:
    sizes: list[int] = []
    gate = threading.Event()

    def process(items: Sequence[int]) -> list[int]:
        gate.wait(5)  # the first batch holds the worker while the others queue up
        sizes.append(len(items))
        return [i * 10 for i in items]

    batcher: Batcher[int] = Batcher(process, max_items=64, linger_s=0.01)
    try:
        with ThreadPoolExecutor(16) as pool:
            futures = [pool.submit(batcher.submit, i) for i in range(16)]
            gate.set()
            assert [f.result(timeout=10) for f in futures] == [i * 10 for i in range(16)]
    finally:
        batcher.close()
    assert sum(sizes) == 16 and max(sizes) > 1


def test_a_failed_batch_fails_each_of_its_callers() -> None:
    def process(items: Sequence[int]) -> list[int]:
        raise OSError("store down")

    batcher: Batcher[int] = Batcher(process)
    try:
        with pytest.raises(OSError, match="store down"):
            batcher.submit(1)
    finally:
        batcher.close()
