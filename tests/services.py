"""The machine's PostgreSQL and Redis for the tests of the service settings (CI runs both).

Each test run gets data nobody else sees: a Redis database claimed with a lock key (several
stacks run on one machine at once) and flushed, and a PostgreSQL database of its own, dropped
afterwards. When a service does not answer, the tests that need it skip, saying which.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

import pytest

REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
POSTGRES_HOST, POSTGRES_PORT, POSTGRES_DB = "127.0.0.1", 5432, "test"
POSTGRES_USERS = ("postgres", "root")
LOCK_KEY = "faaspipe:test:claimed-by"
LOCK_TTL_S = 3 * 3600
CLAIMABLE_DBS = range(15, 0, -1)  # never db 0, which people use by default


def redis_problem() -> str | None:
    """None when Redis answers at 127.0.0.1:6379, else why not."""
    import redis

    try:
        client = redis.Redis(REDIS_HOST, REDIS_PORT, socket_connect_timeout=2, socket_timeout=5, retry=None)
        client.ping()
        client.close()
    except redis.RedisError as exc:
        return f"Redis at {REDIS_HOST}:{REDIS_PORT} is not reachable ({exc})"
    return None


def postgres_user() -> tuple[str | None, str | None]:
    """(a user PostgreSQL trusts, None) or (None, why none works)."""
    import psycopg2

    errors = []
    for user in POSTGRES_USERS:
        try:
            psycopg2.connect(
                host=POSTGRES_HOST, port=POSTGRES_PORT, dbname=POSTGRES_DB, user=user, connect_timeout=3
            ).close()
            return user, None
        except psycopg2.Error as exc:
            errors.append(f"{user}: {str(exc).strip().splitlines()[0] if str(exc).strip() else exc}")
    return None, f"PostgreSQL at {POSTGRES_HOST}:{POSTGRES_PORT} is not reachable ({'; '.join(errors)})"


def require_services() -> str:
    """Skip the calling test unless both services answer; the PostgreSQL user to use."""
    problem = redis_problem()
    user, pg_problem = postgres_user()
    missing = [p for p in (problem, pg_problem) if p]
    if missing:
        pytest.skip("services profile needs PostgreSQL and Redis: " + "; ".join(missing))
    assert user is not None
    return user


@contextlib.contextmanager
def claimed_redis_db() -> Iterator[int]:
    """A Redis database number no other test run uses until we leave; flushed on entry and exit."""
    import redis

    token = uuid.uuid4().hex
    for db in CLAIMABLE_DBS:
        client = redis.Redis(REDIS_HOST, REDIS_PORT, db=db, socket_timeout=10)
        if client.set(LOCK_KEY, token, nx=True, ex=LOCK_TTL_S):
            break
        client.close()
    else:
        pytest.fail(f"every Redis database {CLAIMABLE_DBS.stop + 1}-{CLAIMABLE_DBS.start} is claimed")
    try:
        _flush_all_but_lock(client)
        yield db
    finally:
        _flush_all_but_lock(client)
        if client.get(LOCK_KEY) == token.encode():
            client.delete(LOCK_KEY)
        client.close()


def _flush_all_but_lock(client: object) -> None:
    batch = [k for k in client.scan_iter(count=1000) if k != LOCK_KEY.encode()]  # type: ignore[attr-defined]
    for start in range(0, len(batch), 1000):
        client.delete(*batch[start : start + 1000])  # type: ignore[attr-defined]


@contextlib.contextmanager
def fresh_database(user: str) -> Iterator[str]:
    """A new PostgreSQL database ``faaspipe_services_<random>``; dropped (forcefully) on exit."""
    import psycopg2

    name = f"faaspipe_services_{uuid.uuid4().hex[:12]}"
    admin = psycopg2.connect(
        host=POSTGRES_HOST, port=POSTGRES_PORT, dbname=POSTGRES_DB, user=user, connect_timeout=3
    )
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        yield name
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def database_uri(user: str, database: str) -> str:
    return f"postgresql+psycopg2://{user}@{POSTGRES_HOST}:{POSTGRES_PORT}/{database}"


def postgres_url(user: str, database: str) -> str:
    """A libpq URL (``FAASPIPE_DATABASE_URL``), where ``database_uri`` is SQLAlchemy's."""
    return f"postgresql://{user}@{POSTGRES_HOST}:{POSTGRES_PORT}/{database}"
