"""shared.concurrency against a real SeaweedFS (the version the stack runs): conditional writes,
racing read-modify-writes that lose nothing, and a fenced lease that admits one holder at a time.

SeaweedFS runs on its own here (``weed mini`` on ports of this test run): these tests need S3
only, not the whole stack.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from minio import Minio

from shared.concurrency import (
    Conflict,
    Lease,
    LeaseBusy,
    LeaseLost,
    S3VersionedStore,
    update,
)
from tests.conftest import TEST_PORT_BASE, wait_until

pytestmark = pytest.mark.integration

PORT = TEST_PORT_BASE + 2000  # the session stack uses +0..+499, durable_stack +500, services +1000
BUCKET = "concurrency"
WEED = Path(sys.executable).parent / "weed"


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Minio]:
    home = tmp_path_factory.mktemp("seaweedfs")
    (home / "data").mkdir()
    (home / "s3.json").write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "t",
                        "credentials": [{"accessKey": "key", "secretKey": "secret"}],
                        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                    }
                ]
            }
        )
    )
    names = ["s3", "s3.port.grpc", "master.port", "master.port.grpc", "volume.port", "volume.port.grpc"]
    names += ["filer.port", "filer.port.grpc", "admin.port", "admin.port.grpc", "metricsPort"]
    ports = {name: PORT + i for i, name in enumerate(names)}
    argv = [str(WEED), "mini", f"-dir={home / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1"]
    argv += [f"-s3.config={home / 's3.json'}", "-master.telemetry=false", "-webdav=false"]
    argv += ["-admin.ui=false", "-s3.port.iceberg=0", "-s3.port.lance=0", f"-s3.port={ports.pop('s3')}"]
    argv += [f"-{name}={port}" for name, port in ports.items()]
    with (home / "weed.log").open("wb") as log:
        proc = subprocess.Popen(argv, cwd=home, stdout=log, stderr=subprocess.STDOUT)
    try:
        s3 = Minio(f"127.0.0.1:{PORT}", access_key="key", secret_key="secret", secure=False)

        def bucket_made() -> bool:
            if proc.poll() is not None:
                pytest.fail(f"weed mini exited: {(home / 'weed.log').read_text()[-2000:]}")
            if not _port_open(PORT):
                return False
            try:
                if not s3.bucket_exists(BUCKET):
                    s3.make_bucket(BUCKET)
            except Exception:  # noqa: BLE001 - not serving yet
                return False
            return True

        wait_until(bucket_made, timeout=90, interval=0.5, what="SeaweedFS S3")
        yield s3
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def store(client: Minio) -> S3VersionedStore:
    return S3VersionedStore(client, BUCKET)


def fresh_key() -> str:
    return f"docs/{uuid.uuid4().hex}.json"


def test_conditional_create_and_replace(store: S3VersionedStore) -> None:
    key = fresh_key()
    assert store.read(key) is None
    first = store.write(key, {"n": 1}, expected=None)
    with pytest.raises(Conflict):
        store.write(key, {"n": 99}, expected=None)  # If-None-Match: * on an existing object
    second = store.write(key, {"n": 2}, expected=first)
    with pytest.raises(Conflict):
        store.write(key, {"n": 99}, expected=first)  # If-Match with a stale ETag
    current = store.read(key)
    assert current is not None and current.doc == {"n": 2} and current.token == second


def test_racing_read_modify_writes_lose_no_update(store: S3VersionedStore) -> None:
    key = fresh_key()
    writers, each = 8, 15

    def append(tag: str) -> Any:
        def change(doc: Any) -> tuple[Any, int]:
            doc = doc or {"items": []}
            doc["items"].append(tag)
            return doc, len(doc["items"])

        return change

    attempts: list[int] = []

    def writer(w: int) -> None:
        for i in range(each):
            attempts.append(update(store, key, append(f"{w}.{i}")).attempts)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    current = store.read(key)
    assert current is not None
    items = current.doc["items"]
    assert sorted(items) == sorted(f"{w}.{i}" for w in range(writers) for i in range(each))
    assert max(attempts) > 1, "no write ever lost a race: the test raced nothing"


def test_update_that_changes_nothing_writes_nothing(store: S3VersionedStore) -> None:
    key = fresh_key()
    store.write(key, {"n": 1}, expected=None)
    before = store.read(key)
    outcome = update(store, key, lambda doc: (None, doc["n"]))
    assert (outcome.written, outcome.result) == (False, 1)
    assert store.read(key) == before


def test_lease_admits_one_holder_at_a_time(store: S3VersionedStore) -> None:
    key, counter = fresh_key(), fresh_key()
    store.write(counter, {"n": 0}, expected=None)
    holding: list[str] = []
    overlaps: list[list[str]] = []
    guard = threading.Lock()

    def worker(w: int) -> None:
        for _ in range(4):
            lease = Lease(store, key, f"w{w}", ttl_s=30)
            token = lease.acquire(wait_s=120)
            with guard:
                holding.append(lease.owner)
                if len(holding) > 1:
                    overlaps.append(list(holding))
            current = store.read(counter)
            assert current is not None
            lease.check()  # fencing check right before the protected write
            store.client.put_object(  # an unconditional write: only the lease protects it
                BUCKET, counter, *_body({"n": current.doc["n"] + 1, "token": token})
            )
            with guard:
                holding.remove(lease.owner)
            lease.release()

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    final = store.read(counter)
    assert final is not None and final.doc["n"] == 16, final
    assert final.doc["token"] == 16  # one acquisition, one fencing token, each time
    assert not overlaps


def _body(doc: Any) -> tuple[Any, int]:
    import io

    data = json.dumps(doc).encode()
    return io.BytesIO(data), len(data)


def test_expired_lease_is_taken_over_and_the_old_holder_is_fenced(store: S3VersionedStore) -> None:
    key = fresh_key()
    slow = Lease(store, key, "slow", ttl_s=1.0)
    assert slow.acquire(wait_s=5) == 1
    other = Lease(store, key, "other", ttl_s=30)
    with pytest.raises(LeaseBusy):
        other.acquire(wait_s=0)
    wait_until(lambda: other.try_acquire(), timeout=30, interval=0.2, what="the expired lease to be taken")
    assert other.token == 2
    with pytest.raises(LeaseLost):
        slow.check()  # a paused holder learns it lost the lease before writing
    slow.release()  # leaves the new holder's lease alone
    other.check()
    current = store.read(key)
    assert current is not None and current.doc["owner"] == "other" and not current.doc["released"]
    other.release()
    again = Lease(store, key, "next", ttl_s=30)
    assert again.acquire(wait_s=5) == 3
    again.release()
