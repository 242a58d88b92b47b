"""Idempotency keys in one SQLite file (one host: WAL, busy timeout, ``BEGIN IMMEDIATE`` claims)."""

from __future__ import annotations

import functools
import os
import sqlite3
import threading
import time
import uuid

from shared.idempotency.persistence.base import DAY_S, DEFAULT_RETENTION_DAYS, Claim


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
        _set_wal(conn, self.busy_timeout_s)
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
        self.prune(self.retention_days * DAY_S)

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


def _set_wal(conn: sqlite3.Connection, timeout_s: float) -> None:
    """Switch a new database to WAL, retrying while another process does the same.

    Changing the journal mode needs an exclusive lock and SQLite answers "database is locked" at
    once, without the busy handler, when two processes open a fresh file together.
    """
    deadline = time.monotonic() + timeout_s
    delay = 0.005
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.2)
