"""Idempotent event handling: drop CloudEvents that were already processed.

Delivery is at-least-once, so a handler may see the same event (same ``source`` +
``id``) more than once: a broker retry after a timeout, a replica restart before the
offset commit, a trigger replay. A store records each key as *in progress* (with a
lease) while a handler runs and as *done* (with the encoded reply) afterwards, so a
duplicate is answered from the store instead of being processed again.

Backends (pick with :func:`open_store`):

* ``sqlite:///abs/path.db[?retention_days=7]`` -- one file, shared by every process on
  one machine (WAL mode, busy timeout, claims in ``BEGIN IMMEDIATE`` transactions).
* ``redis://host:port/db[?prefix=faaspipe:idem:&ttl_days=7]`` -- shared by replicas on
  several machines (claim = one Lua script around ``SET NX PX``).

A lease that expires (the worker crashed or hung) lets the next claim take the key over.
:func:`run_once` keeps its lease short (``FAASPIPE_IDEMPOTENCY_LEASE_S``, default 5 s) and
renews it from a heartbeat thread while the handler runs, so a long handler keeps its claim
and a killed worker's claim lapses within seconds: the broker's retries of that event then
run it instead of meeting "in progress" until they are dead-lettered.
``release`` and ``renew`` only touch a claim still held by the same store object, so a slow
worker cannot wipe or extend the claim of the worker that took its key over.
"""

from __future__ import annotations

import functools
import logging
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeVar
from urllib.parse import parse_qs, urlencode, urlparse, urlunparse

__all__ = [
    "Claim",
    "DuplicateInFlight",
    "IdempotencyStore",
    "RedisIdempotencyStore",
    "SQLiteIdempotencyStore",
    "event_key",
    "open_store",
    "run_once",
]

_log = logging.getLogger("faaspipe.idempotency")
ClaimState = Literal["new", "done", "in_progress"]
R = TypeVar("R")

DEFAULT_RETENTION_DAYS = 7.0
DEFAULT_LEASE_S = float(os.environ.get("FAASPIPE_IDEMPOTENCY_LEASE_S", "5"))
_DAY_S = 86400.0


@dataclass(frozen=True)
class Claim:
    """Outcome of :meth:`IdempotencyStore.claim`; ``reply`` is set only for a done key."""

    state: ClaimState
    reply: bytes | None = None


class IdempotencyStore(Protocol):
    def claim(self, key: str, lease_s: float = 60.0) -> Claim:
        """Unknown or lease-expired key -> record in progress, "new"; done -> "done" + reply;
        live in-progress key -> "in_progress"."""
        ...

    def complete(self, key: str, reply: bytes | None) -> None:
        """Mark ``key`` done and store ``reply`` for later duplicates."""
        ...

    def release(self, key: str) -> None:
        """Drop our in-progress claim (handler failed) so a retry may run it again."""
        ...

    def renew(self, key: str, lease_s: float) -> bool:
        """Extend our in-progress claim to ``lease_s`` from now; False if it is no longer ours."""
        ...

    def close(self) -> None: ...


class DuplicateInFlight(RuntimeError):
    """The event is being processed right now by another worker (live lease).

    The function runtime answers HTTP 409 so the broker redelivers it later, by when
    it is either done (answered from the store) or its lease expired (run again).
    """


def event_key(event: Any) -> str:
    """Unambiguous key for a CloudEvents v2 event: ``"<len(source)>:<source>:<id>"``.

    The length prefix fixes where ``source`` ends, so no ``source``/``id`` pair can
    collide with another one whatever characters they contain.
    """
    source = str(event.get_source())
    event_id = str(event.get_id())
    return f"{len(source)}:{source}:{event_id}"


def run_once(
    store: IdempotencyStore,
    event: Any,
    handler: Callable[[Any], R | None],
    *,
    encode_reply: Callable[[R], bytes],
    decode_reply: Callable[[bytes], R],
    lease_s: float | None = None,
) -> R | None:
    """Run ``handler(event)`` at most once per event key (while the store remembers it).

    * done        -> the stored reply, decoded (``None`` if there was none); handler not called.
    * in_progress -> raises :class:`DuplicateInFlight`.
    * new         -> calls the handler, renewing the claim's lease (``lease_s``, default
      ``DEFAULT_LEASE_S``) every quarter lease meanwhile; on success stores
      ``encode_reply(reply)`` (``None`` for a ``None`` reply) and returns the reply; on
      exception releases the key and re-raises, so a redelivery runs it again.
    """
    lease = DEFAULT_LEASE_S if lease_s is None else lease_s
    key = event_key(event)
    claim = store.claim(key, lease)
    if claim.state == "done":
        return None if claim.reply is None else decode_reply(claim.reply)
    if claim.state == "in_progress":
        raise DuplicateInFlight(f"event {key!r} is already being processed")
    beat = _Heartbeat(store, key, lease)
    try:
        reply = handler(event)
    except BaseException:
        beat.stop()
        store.release(key)
        raise
    beat.stop()
    store.complete(key, None if reply is None else encode_reply(reply))
    return reply


class _Heartbeat:
    """Renews one claim's lease every quarter lease until stopped (or the claim is lost)."""

    def __init__(self, store: IdempotencyStore, key: str, lease_s: float) -> None:
        self.store, self.key, self.lease_s = store, key, lease_s
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="idempotency-lease", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopped.wait(self.lease_s / 4):
            try:
                if not self.store.renew(self.key, self.lease_s):
                    _log.warning("lost the claim on %s (lease expired); a retry may run it too", self.key)
                    return
            except Exception:  # noqa: BLE001 - a failed renewal is retried next beat
                _log.exception("renewing the claim on %s failed", self.key)

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=self.lease_s)


# --------------------------------------------------------------------------- SQLite


def _serialised(method):  # type: ignore[no-untyped-def]
    """Run a store method under the store's database lock (one shared connection)."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        with self._db_lock:
            return method(self, *args, **kwargs)

    return wrapper


class SQLiteIdempotencyStore:
    """Idempotency keys in one SQLite file, safe for threads and processes on one host.

    One connection per thread (all closed by :meth:`close`), WAL journal, a busy timeout
    and ``BEGIN IMMEDIATE`` claims: the read-decide-write of a claim holds the database
    write lock, so two processes can never both get "new" for a key. ``synchronous=NORMAL``
    survives process crashes; a power loss may forget the latest marks, which
    at-least-once handling tolerates.

    With ``retention_days`` set, rows not touched for that long are pruned at open and
    then at most once per ``prune_interval_s`` (checked on claim).
    """

    _SCHEMA = """
        CREATE TABLE IF NOT EXISTS idempotency (
            key         TEXT PRIMARY KEY,
            state       TEXT NOT NULL,
            token       TEXT,
            reply       BLOB,
            lease_until REAL NOT NULL,
            updated     REAL NOT NULL
        )
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        retention_days: float | None = DEFAULT_RETENTION_DAYS,
        busy_timeout_s: float = 30.0,
        prune_interval_s: float = 3600.0,
    ) -> None:
        self.path = os.fspath(path)
        parent = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(parent, exist_ok=True)
        self.retention_days = retention_days
        self.busy_timeout_s = busy_timeout_s
        self.prune_interval_s = prune_interval_s
        self._local = threading.local()
        self._lock = threading.Lock()
        self._db_lock = threading.RLock()
        self._conns: list[sqlite3.Connection] = []
        self._tokens: dict[str, str] = {}
        self._closed = False
        self._next_prune = 0.0
        conn = self._conn()
        with self._lock:
            conn.execute(self._SCHEMA)
        self._maybe_prune(time.time())

    def _conn(self) -> sqlite3.Connection:
        # One connection per store, used under ``_db_lock``: function servers start a thread per
        # request, and a connection per thread leaked two file descriptors per event.
        conn = getattr(self, "_shared_conn", None)
        if conn is not None:
            return conn
        if self._closed:
            raise RuntimeError("idempotency store is closed")
        conn = sqlite3.connect(
            self.path, timeout=self.busy_timeout_s, isolation_level=None, check_same_thread=False
        )
        conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_s * 1000)}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        self._shared_conn = conn
        with self._lock:
            self._conns.append(conn)
        return conn

    @_serialised
    def claim(self, key: str, lease_s: float = 60.0) -> Claim:
        conn = self._conn()
        now = time.time()
        token = uuid.uuid4().hex
        conn.execute("BEGIN IMMEDIATE")
        try:
            row = conn.execute(
                "SELECT state, reply, lease_until FROM idempotency WHERE key = ?", (key,)
            ).fetchone()
            if row is not None and row[0] == "done":
                result = Claim("done", None if row[1] is None else bytes(row[1]))
            elif row is not None and row[2] > now:
                result = Claim("in_progress")
            else:
                conn.execute(
                    "INSERT INTO idempotency (key, state, token, reply, lease_until, updated)"
                    " VALUES (?, 'in_progress', ?, NULL, ?, ?)"
                    " ON CONFLICT(key) DO UPDATE SET state = excluded.state, token = excluded.token,"
                    " reply = NULL, lease_until = excluded.lease_until, updated = excluded.updated",
                    (key, token, now + lease_s, now),
                )
                result = Claim("new")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        if result.state == "new":
            with self._lock:
                self._tokens[key] = token
        self._maybe_prune(now)
        return result

    @_serialised
    def complete(self, key: str, reply: bytes | None) -> None:
        now = time.time()
        self._conn().execute(
            "INSERT INTO idempotency (key, state, token, reply, lease_until, updated)"
            " VALUES (?, 'done', NULL, ?, 0, ?)"
            " ON CONFLICT(key) DO UPDATE SET state = 'done', token = NULL, reply = excluded.reply,"
            " lease_until = 0, updated = excluded.updated",
            (key, reply, now),
        )
        with self._lock:
            self._tokens.pop(key, None)

    @_serialised
    def release(self, key: str) -> None:
        with self._lock:
            token = self._tokens.pop(key, None)
        if token is not None:
            self._conn().execute(
                "DELETE FROM idempotency WHERE key = ? AND state = 'in_progress' AND token = ?",
                (key, token),
            )

    @_serialised
    def renew(self, key: str, lease_s: float) -> bool:
        with self._lock:
            token = self._tokens.get(key)
        if token is None:
            return False
        now = time.time()
        cur = self._conn().execute(
            "UPDATE idempotency SET lease_until = ?, updated = ?"
            " WHERE key = ? AND state = 'in_progress' AND token = ?",
            (now + lease_s, now, key, token),
        )
        return cur.rowcount == 1

    @_serialised
    def prune(self, older_than_s: float) -> int:
        """Delete rows (done or abandoned) last updated more than ``older_than_s`` ago."""
        now = time.time()
        cur = self._conn().execute(
            "DELETE FROM idempotency WHERE updated < ? AND (state = 'done' OR lease_until < ?)",
            (now - older_than_s, now),
        )
        return cur.rowcount

    def _maybe_prune(self, now: float) -> None:
        if self.retention_days is None or now < self._next_prune:
            return
        self._next_prune = now + self.prune_interval_s
        self.prune(self.retention_days * _DAY_S)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            conns, self._conns = self._conns, []
        for conn in conns:
            conn.close()
        self._local = threading.local()

    def __enter__(self) -> SQLiteIdempotencyStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------- Redis

# Returns {1} new, {2, value} done, {3} in progress. An in-progress key carries its lease
# as the key's PX expiry, so an expired lease is simply a missing key: taken over here.
_CLAIM_LUA = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {1}
end
local v = redis.call('GET', KEYS[1])
if string.sub(v, 1, 1) == 'D' then
  return {2, v}
end
return {3}
"""

_RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

_RENEW_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""


class RedisIdempotencyStore:
    """Idempotency keys in Redis, shared by replicas on any number of hosts.

    Value of ``prefix + key``: ``b"P" + token`` while in progress (expires with the lease),
    ``b"D0"`` (done, no reply) or ``b"D1" + reply`` once done (expires after ``ttl_s``).
    """

    def __init__(
        self,
        url: str,
        prefix: str = "faaspipe:idem:",
        *,
        ttl_s: float = DEFAULT_RETENTION_DAYS * _DAY_S,
        client: Any = None,
    ) -> None:
        import redis  # lazy: only environments using a Redis store need the package

        self.prefix = prefix
        self.ttl_s = ttl_s
        self._redis = client if client is not None else redis.Redis.from_url(url)
        self._claim = self._redis.register_script(_CLAIM_LUA)
        self._release = self._redis.register_script(_RELEASE_LUA)
        self._renew = self._redis.register_script(_RENEW_LUA)
        self._lock = threading.Lock()
        self._tokens: dict[str, bytes] = {}

    def claim(self, key: str, lease_s: float = 60.0) -> Claim:
        token = b"P" + uuid.uuid4().hex.encode()
        lease_ms = max(1, int(lease_s * 1000))
        res = self._claim(keys=[self.prefix + key], args=[token, lease_ms])
        code = int(res[0])
        if code == 1:
            with self._lock:
                self._tokens[key] = token
            return Claim("new")
        if code == 2:
            value = bytes(res[1])
            return Claim("done", value[2:] if value[1:2] == b"1" else None)
        return Claim("in_progress")

    def complete(self, key: str, reply: bytes | None) -> None:
        value = b"D0" if reply is None else b"D1" + reply
        self._redis.set(self.prefix + key, value, px=max(1, int(self.ttl_s * 1000)))
        with self._lock:
            self._tokens.pop(key, None)

    def release(self, key: str) -> None:
        with self._lock:
            token = self._tokens.pop(key, None)
        if token is not None:
            self._release(keys=[self.prefix + key], args=[token])

    def renew(self, key: str, lease_s: float) -> bool:
        with self._lock:
            token = self._tokens.get(key)
        if token is None:
            return False
        lease_ms = max(1, int(lease_s * 1000))
        return int(self._renew(keys=[self.prefix + key], args=[token, lease_ms])) == 1

    def close(self) -> None:
        self._redis.close()

    def __enter__(self) -> RedisIdempotencyStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------- factory


def open_store(url: str) -> IdempotencyStore:
    """Open a store from a URL.

    * ``sqlite:///abs/path.db`` (query: ``retention_days``, ``0`` or ``none`` disables pruning)
    * ``redis://host:port/db`` / ``rediss://...`` (query: ``prefix``, ``ttl_days``; other
      query parameters are passed on to redis-py)
    """
    parsed = urlparse(url)
    query = {k: v[-1] for k, v in parse_qs(parsed.query).items()}
    if parsed.scheme == "sqlite":
        if not parsed.path or parsed.netloc:
            raise ValueError(f"expected sqlite:///abs/path.db, got {url!r}")
        retention: float | None = DEFAULT_RETENTION_DAYS
        if "retention_days" in query:
            raw = query["retention_days"].strip().lower()
            retention = None if raw in ("", "0", "none") else float(raw)
        return SQLiteIdempotencyStore(parsed.path, retention_days=retention)
    if parsed.scheme in ("redis", "rediss", "unix"):
        prefix = query.pop("prefix", "faaspipe:idem:")
        ttl_days = float(query.pop("ttl_days", DEFAULT_RETENTION_DAYS))
        rest = urlunparse(parsed._replace(query=urlencode(query)))
        return RedisIdempotencyStore(rest, prefix, ttl_s=ttl_days * _DAY_S)
    raise ValueError(f"unsupported idempotency store URL {url!r} (use sqlite:/// or redis://)")


class NamespacedStore:
    """A view of a store whose keys are scoped to one consumer (function).

    Deduplication is per subscriber: two functions receiving the same event must each run
    their handler once, never replay each other's stored replies.
    """

    def __init__(self, store: IdempotencyStore, namespace: str) -> None:
        self.store = store
        self.prefix = f"{len(namespace)}:{namespace}|"

    def claim(self, key: str, lease_s: float = 60.0) -> Claim:
        return self.store.claim(self.prefix + key, lease_s)

    def complete(self, key: str, reply: bytes | None) -> None:
        self.store.complete(self.prefix + key, reply)

    def release(self, key: str) -> None:
        self.store.release(self.prefix + key)

    def renew(self, key: str, lease_s: float) -> bool:
        return self.store.renew(self.prefix + key, lease_s)

    def close(self) -> None:
        self.store.close()
