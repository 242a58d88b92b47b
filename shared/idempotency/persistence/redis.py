"""Idempotency keys in Redis (replicas on any number of hosts; claims are one Lua script)."""

from __future__ import annotations

import threading
import uuid
from typing import Any

from shared.idempotency.persistence.base import DAY_S, DEFAULT_RETENTION_DAYS, Claim

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
        ttl_s: float = DEFAULT_RETENTION_DAYS * DAY_S,
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
