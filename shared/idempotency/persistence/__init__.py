"""Idempotency backends, opened from a URL."""

from __future__ import annotations

from urllib.parse import parse_qs, urlencode, urlparse, urlunparse

from shared.idempotency.persistence.base import DAY_S, DEFAULT_RETENTION_DAYS, IdempotencyStore
from shared.idempotency.persistence.redis import RedisIdempotencyStore
from shared.idempotency.persistence.sqlite import SQLiteIdempotencyStore

__all__ = ["open_store"]


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
        return RedisIdempotencyStore(rest, prefix, ttl_s=ttl_days * DAY_S)
    raise ValueError(f"unsupported idempotency store URL {url!r} (use sqlite:/// or redis://)")
