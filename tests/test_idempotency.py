"""Tests for shared.idempotency on both backends (SQLite file, Redis at 127.0.0.1:6379)."""

from __future__ import annotations

import json
import multiprocessing as mp
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from cloudevents.core.v1.event import CloudEvent

from shared.idempotency import (
    Claim,
    DuplicateInFlight,
    IdempotencyStore,
    RedisIdempotencyStore,
    SQLiteIdempotencyStore,
    event_key,
    open_store,
    run_once,
)

REDIS_URL = "redis://127.0.0.1:6379/0"


def _redis_or_skip():
    try:
        import redis
    except ImportError:
        pytest.skip("redis package not installed")
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1, socket_timeout=2)
    try:
        client.ping()
    except Exception as exc:
        client.close()
        pytest.skip(f"Redis not reachable at {REDIS_URL}: {exc}")
    return client


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """URL of a fresh, empty store; several opens of it share the same keys."""
    if request.param == "sqlite":
        yield f"sqlite://{tmp_path / 'idem.db'}"
        return
    client = _redis_or_skip()
    prefix = f"faaspipe-test:{uuid.uuid4().hex}:"
    try:
        yield f"{REDIS_URL}?prefix={prefix}"
    finally:
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()


@pytest.fixture
def store(store_url: str) -> Iterator[IdempotencyStore]:
    s = open_store(store_url)
    yield s
    s.close()


def _event(event_id: str = "e-1", source: str = "/faaspipe/test") -> CloudEvent:
    return CloudEvent(
        attributes={"specversion": "1.0", "type": "faaspipe.test", "source": source, "id": event_id},
        data={"x": 1},
    )


def _json_run(store: IdempotencyStore, event: CloudEvent, handler, lease_s: float = 60.0):
    return run_once(
        store,
        event,
        handler,
        encode_reply=lambda r: json.dumps(r).encode(),
        decode_reply=lambda b: json.loads(b),
        lease_s=lease_s,
    )


def test_open_store_types(store_url: str) -> None:
    s = open_store(store_url)
    try:
        expected = SQLiteIdempotencyStore if store_url.startswith("sqlite") else RedisIdempotencyStore
        assert isinstance(s, expected)
    finally:
        s.close()


def test_open_store_rejects_unknown_scheme() -> None:
    with pytest.raises(ValueError):
        open_store("postgres://localhost/db")


def test_event_key_is_unambiguous() -> None:
    a = event_key(_event(event_id="c", source="a:b"))
    b = event_key(_event(event_id="b:c", source="a"))
    assert a != b
    assert event_key(_event()) == event_key(_event())


def test_new_done_in_progress(store: IdempotencyStore) -> None:
    assert store.claim("k1") == Claim("new")
    assert store.claim("k1") == Claim("in_progress")
    store.complete("k1", b"reply-bytes")
    assert store.claim("k1") == Claim("done", b"reply-bytes")
    store.complete("k2", None)
    assert store.claim("k2") == Claim("done", None)
    store.complete("k3", b"")
    assert store.claim("k3") == Claim("done", b"")


def test_lease_expiry_takeover(store: IdempotencyStore) -> None:
    assert store.claim("crashy", lease_s=0.2).state == "new"
    assert store.claim("crashy", lease_s=0.2).state == "in_progress"
    time.sleep(0.35)
    assert store.claim("crashy", lease_s=30).state == "new"
    assert store.claim("crashy").state == "in_progress"


def test_release_only_drops_own_claim(store_url: str) -> None:
    slow, fast = open_store(store_url), open_store(store_url)
    try:
        assert slow.claim("k", lease_s=0.2).state == "new"
        time.sleep(0.35)
        assert fast.claim("k", lease_s=30).state == "new"
        slow.release("k")  # the slow worker's lease expired: must not wipe fast's claim
        assert fast.claim("k").state == "in_progress"
        fast.release("k")
        assert slow.claim("k").state == "new"
    finally:
        slow.close()
        fast.close()


def test_release_never_drops_done(store: IdempotencyStore) -> None:
    assert store.claim("k").state == "new"
    store.complete("k", b"ok")
    store.release("k")
    assert store.claim("k") == Claim("done", b"ok")


def test_run_once_returns_stored_reply_for_duplicate(store: IdempotencyStore) -> None:
    calls: list[str] = []

    def handler(event: CloudEvent) -> dict:
        calls.append(event.get_id())
        return {"score": 0.5, "id": event.get_id()}

    assert _json_run(store, _event("a"), handler) == {"score": 0.5, "id": "a"}
    assert _json_run(store, _event("a"), handler) == {"score": 0.5, "id": "a"}
    assert _json_run(store, _event("b"), handler) == {"score": 0.5, "id": "b"}
    assert calls == ["a", "b"]
    # Same id from another source is a different event.
    assert _json_run(store, _event("a", source="/other"), handler)["id"] == "a"
    assert calls == ["a", "b", "a"]


def test_run_once_none_reply(store: IdempotencyStore) -> None:
    calls = []
    assert _json_run(store, _event("n"), lambda e: calls.append(1)) is None
    assert _json_run(store, _event("n"), lambda e: calls.append(1)) is None
    assert calls == [1]


def test_run_once_release_after_failure(store: IdempotencyStore) -> None:
    attempts = []

    def flaky(event: CloudEvent) -> str:
        attempts.append(1)
        if len(attempts) == 1:
            raise ConnectionError("downstream unavailable")
        return "ok"

    with pytest.raises(ConnectionError):
        _json_run(store, _event("f"), flaky)
    assert _json_run(store, _event("f"), flaky) == "ok"
    assert _json_run(store, _event("f"), flaky) == "ok"
    assert len(attempts) == 2


def test_run_once_in_flight_raises(store: IdempotencyStore) -> None:
    ev = _event("busy")
    assert store.claim(event_key(ev)).state == "new"
    with pytest.raises(DuplicateInFlight):
        _json_run(store, ev, lambda e: pytest.fail("handler must not run"))


def test_sqlite_durable_across_reopen(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path / 'sub' / 'idem.db'}"
    s = open_store(url)
    assert s.claim("k").state == "new"
    s.complete("k", b"\x00\xffbinary")
    assert s.claim("pending", lease_s=300).state == "new"
    s.close()
    s2 = open_store(url)
    try:
        assert s2.claim("k") == Claim("done", b"\x00\xffbinary")
        assert s2.claim("pending").state == "in_progress"
        assert s2.claim("other").state == "new"
    finally:
        s2.close()


def test_sqlite_retention_prunes_old_keys(tmp_path: Path) -> None:
    s = SQLiteIdempotencyStore(tmp_path / "idem.db", retention_days=None)
    try:
        s.claim("old")
        s.complete("old", b"x")
        s.claim("live", lease_s=300)
        time.sleep(0.05)
        assert s.prune(older_than_s=0.01) == 1  # the done key; the live claim stays
        assert s.claim("old").state == "new"
        assert s.claim("live").state == "in_progress"
    finally:
        s.close()


def test_sqlite_threads_share_store(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    s = SQLiteIdempotencyStore(tmp_path / "idem.db")
    try:
        with ThreadPoolExecutor(8) as pool:
            states = list(pool.map(lambda i: s.claim(f"k{i % 50}").state, range(400)))
        assert states.count("new") == 50
    finally:
        s.close()


def _claim_worker(url: str, keys: list[str], seed: int, start, out) -> None:
    store = open_store(url)
    order = keys * 2  # 200 claims of the 100 keys, in a per-process random order
    random.Random(seed).shuffle(order)
    try:
        start.wait(60)  # barrier: both processes claim at the same time
        new = [k for k in order if store.claim(k, lease_s=300).state == "new"]
        out.put(new)
    finally:
        store.close()


def test_concurrent_processes_claim_each_key_once(store_url: str) -> None:
    ctx = mp.get_context("spawn")
    keys = [f"event-{i}" for i in range(100)]
    start, out = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_claim_worker, args=(store_url, keys, seed, start, out)) for seed in range(2)]
    for p in procs:
        p.start()
    results = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    counts = Counter(k for r in results for k in r)
    assert set(counts) == set(keys)
    assert all(c == 1 for c in counts.values()), counts.most_common(3)
    print("new claims per process:", [len(r) for r in results])


def test_namespaces_keep_subscribers_apart(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Two functions receiving the same event each process it once (regression)."""
    from shared.idempotency import NamespacedStore, SQLiteIdempotencyStore

    shared_store = SQLiteIdempotencyStore(str(tmp_path / "idem.db"))
    sample, slow = NamespacedStore(shared_store, "sample"), NamespacedStore(shared_store, "slow")
    assert sample.claim("k").state == "new"
    sample.complete("k", b"pong")
    assert slow.claim("k").state == "new"
    assert sample.claim("k").state == "done"
    shared_store.close()


def test_renew_extends_only_our_own_live_claim(store_url: str) -> None:
    first, second = open_store(store_url), open_store(store_url)
    try:
        assert first.claim("r", lease_s=0.3).state == "new"
        for _ in range(4):  # 0.6 s in all: alive only because it is renewed
            time.sleep(0.15)
            assert first.renew("r", 0.3)
        assert second.claim("r", lease_s=30).state == "in_progress"
        assert not second.renew("r", 30), "a claim that is not ours cannot be extended"
        time.sleep(0.45)  # no more renewals: the lease lapses and the key is taken over
        assert second.claim("r", lease_s=30).state == "new"
        assert not first.renew("r", 30), "the old holder lost it and must not extend the new claim"
    finally:
        first.close()
        second.close()


def test_run_once_keeps_a_long_handler_claimed_and_a_dead_one_lapses(store_url: str) -> None:
    """The lease is short, but a handler running longer than it keeps its claim (heartbeat);
    a worker that dies mid-handler stops renewing, so a retry can run the event soon."""
    worker, other = open_store(store_url), open_store(store_url)
    event = _event("long-1")
    seen: list[str] = []

    def long_handler(ev: CloudEvent) -> dict:  # type: ignore[type-arg]
        time.sleep(0.8)  # four leases long
        seen.append("ran")
        return {"ok": True}

    try:
        runner = threading.Thread(target=lambda: _json_run(worker, event, long_handler, lease_s=0.2))
        runner.start()
        time.sleep(0.5)
        with pytest.raises(DuplicateInFlight):  # still claimed after 2.5 leases
            _json_run(other, event, long_handler, lease_s=0.2)
        runner.join(5)
        assert seen == ["ran"]
        assert _json_run(other, event, long_handler, lease_s=0.2) == {"ok": True}  # the stored reply
        assert seen == ["ran"]

        crashed = _event("crash-1")
        assert worker.claim(event_key(crashed), lease_s=0.2).state == "new"  # then the worker dies
        time.sleep(0.35)
        assert _json_run(other, crashed, lambda ev: {"retried": True}, lease_s=0.2) == {"retried": True}
    finally:
        worker.close()
        other.close()
