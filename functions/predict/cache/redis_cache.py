"""Redis: one cache shared by every replica, entries expiring after a TTL."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import redis

from functions.predict.cache.base import ResponseCache


class RedisCache(ResponseCache):
    kind = "redis"

    def __init__(self, url: str, ttl_s: int, prefix: str = "faaspipe:predict:") -> None:
        self.client = redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
        self.ttl_s, self.prefix = ttl_s, prefix

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []
        return list(self.client.mget([self.prefix + k for k in keys]))

    def put_many(self, items: Mapping[str, bytes]) -> None:
        with self.client.pipeline(transaction=False) as pipe:
            for key, value in items.items():
                pipe.set(self.prefix + key, value, ex=self.ttl_s)
            pipe.execute()
