"""One small SQL connection over SQLite or PostgreSQL, for state that must outlive a replica.

A function that keeps rows (the monitor's predictions, labels and rollout observations) is
given ``FAASPIPE_DATABASE_URL``:

* ``postgresql://user:pass@host:5432/db[?options=-csearch_path%3Dschema]``: the cluster's
  PostgreSQL (the one MLflow uses). Every replica of every function sees the same rows, and
  a restarted pod loses nothing;
* unset: SQLite under the stack's state dir, localdev's embedded default (``make up`` needs no
  database server; the replicas are processes of one machine sharing that file).

The statements are written once, in the dialect both accept: ``?`` placeholders (turned into
``%s`` for psycopg2), ``INSERT … ON CONFLICT DO NOTHING / DO UPDATE`` (SQLite ≥ 3.24), and an
explicit ``seq`` column (see :meth:`Database.serial`) instead of SQLite's ``rowid``.

Connections are opened in autocommit mode; :meth:`Database.transaction` brackets several
statements. A PostgreSQL connection that broke (server restart, idle timeout) is reopened once
and the statement retried, outside a transaction only.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

__all__ = ["DATABASE_URL_ENV", "Database", "connect", "is_postgres"]

DATABASE_URL_ENV = "FAASPIPE_DATABASE_URL"


def is_postgres(url: str) -> bool:
    return url.startswith(("postgresql://", "postgres://"))


class Database:
    """A connection shared by a process's threads; statements are serialised by a lock."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.postgres = is_postgres(url)
        self._lock = threading.RLock()
        self._in_transaction = False
        self._conn: Any = self._open()

    def _open(self) -> Any:
        if self.postgres:
            import psycopg2

            conn = psycopg2.connect(self.url, connect_timeout=10)
            conn.autocommit = True
            return conn
        path = (
            Path(self.url.removeprefix("sqlite:///")) if self.url.startswith("sqlite:///") else Path(self.url)
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    @property
    def serial(self) -> str:
        """The column type of an ascending row number that is also the table's primary key."""
        return "BIGSERIAL PRIMARY KEY" if self.postgres else "INTEGER PRIMARY KEY"

    def _sql(self, statement: str) -> str:
        return statement.replace("?", "%s") if self.postgres else statement

    def _broken(self, exc: BaseException) -> bool:
        if not self.postgres:
            return False
        import psycopg2

        return isinstance(exc, psycopg2.InterfaceError | psycopg2.OperationalError) and bool(
            getattr(self._conn, "closed", 0)
        )

    def execute(self, statement: str, params: Sequence[Any] = ()) -> tuple[list[tuple[Any, ...]], int]:
        """Run one statement; returns (rows, rowcount). Rows are empty for a statement without any."""
        with self._lock:
            try:
                return self._run(statement, params)
            except Exception as exc:
                if self._in_transaction or not self._broken(exc):
                    raise
                self._conn = self._open()
                return self._run(statement, params)

    def _run(self, statement: str, params: Sequence[Any]) -> tuple[list[tuple[Any, ...]], int]:
        cursor = self._conn.cursor()
        try:
            cursor.execute(self._sql(statement), tuple(params))
            rows = cursor.fetchall() if cursor.description else []
            return [tuple(r) for r in rows], cursor.rowcount
        finally:
            cursor.close()

    def executemany(self, statement: str, rows: Iterable[Sequence[Any]]) -> None:
        with self._lock:
            cursor = self._conn.cursor()
            try:
                cursor.executemany(self._sql(statement), [tuple(r) for r in rows])
            finally:
                cursor.close()

    def script(self, statements: str) -> None:
        """Run ``;``-separated DDL (no ``;`` inside a statement)."""
        for statement in statements.split(";"):
            if statement.strip():
                self.execute(statement)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Database]:
        """Statements inside run in one transaction, committed on exit, rolled back on error."""
        with self._lock:
            # SQLite: take the write lock up front, so two processes' read-then-write
            # transactions queue (busy timeout) instead of failing on the upgrade.
            self.execute("BEGIN" if self.postgres else "BEGIN IMMEDIATE")
            self._in_transaction = True
            try:
                yield self
            except BaseException:
                self._in_transaction = False
                with contextlib.suppress(Exception):
                    self.execute("ROLLBACK")
                raise
            self._in_transaction = False
            self.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def connect(url: str | Path) -> Database:
    """A :class:`Database` for a PostgreSQL URL, a ``sqlite:///`` URL or a SQLite file path."""
    return Database(str(url))
