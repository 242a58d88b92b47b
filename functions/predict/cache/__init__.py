"""The response cache of predict: scored rows by model version + canonical input.

``FAASPIPE_PREDICT_CACHE``: ``memory`` (default; an LRU of ``FAASPIPE_PREDICT_CACHE_SIZE``
rows per replica), ``redis://host:port/db`` (shared by the replicas, entries expire after
``FAASPIPE_PREDICT_CACHE_TTL_S``) or ``off``. The key holds the model name and version, so a
promotion can never answer with the old model; a replica also drops its in-process entries of
a model when its alias moves. A cache that fails is skipped (counted), never an error.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from prometheus_client import Counter, Gauge

from functions.predict.cache.base import ResponseCache
from functions.predict.cache.memory import MemoryCache

log = logging.getLogger("faaspipe.predict.cache")

LOOKUPS = Counter("faaspipe_predict_cache_lookups_total", "Rows looked up in the response cache", ["outcome"])
HIT_RATIO = Gauge("faaspipe_predict_cache_hit_ratio", "Cache hits / lookups since the replica started")

Scored = tuple[float, int]  # (probability, label)


def from_settings(env: Mapping[str, str]) -> ResponseCache | None:
    """The cache the settings ask for (None when ``off``); a bad value raises ``ValueError``."""
    choice = env.get("FAASPIPE_PREDICT_CACHE", "memory")
    if choice == "off":
        return None
    if choice == "memory":
        return MemoryCache(int(env.get("FAASPIPE_PREDICT_CACHE_SIZE", "10000")))
    if choice.startswith(("redis://", "rediss://", "unix://")):
        from functions.predict.cache.redis_cache import RedisCache

        return RedisCache(choice, int(float(env.get("FAASPIPE_PREDICT_CACHE_TTL_S", "3600"))))
    raise ValueError(f"FAASPIPE_PREDICT_CACHE: expected off, memory or redis://…, got {choice!r}")


def row_key(model: str, version: str, row: Mapping[str, Any]) -> str:
    """``<model>/<version>/<sha256 of the row as canonical JSON>``."""
    canonical = json.dumps(row, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return f"{model}/{version}/{hashlib.sha256(canonical.encode()).hexdigest()}"


class CachedScorer:
    """Scores rows through the cache: hits come from it, misses are scored in one call and stored."""

    def __init__(self, cache: ResponseCache | None) -> None:
        self.cache = cache
        self._hits = self._lookups = 0

    def score(
        self,
        model: str,
        version: str,
        rows: Sequence[Mapping[str, Any]],
        compute: Callable[[list[int]], list[Scored]],
    ) -> list[Scored]:
        """``compute(indexes)`` scores the rows at ``indexes``; the answer is every row's score."""
        if self.cache is None:
            return compute(list(range(len(rows))))
        keys = [row_key(model, version, row) for row in rows]
        try:
            found = self.cache.get_many(keys)
        except Exception as exc:  # noqa: BLE001 - a cache outage costs speed, never an answer
            LOOKUPS.labels("error").inc(len(keys))
            log.warning("response cache lookup failed: %s", exc)
            return compute(list(range(len(rows))))
        scores: list[Scored | None] = [None] * len(rows)
        for i, value in enumerate(found):
            if value is not None:
                probability, label = json.loads(value)
                scores[i] = (float(probability), int(label))
        missing = [i for i, s in enumerate(scores) if s is None]
        self._count(len(rows) - len(missing), len(rows))
        if missing:
            for i, scored in zip(missing, compute(missing), strict=True):
                scores[i] = scored
            try:
                self.cache.put_many({keys[i]: json.dumps(scores[i]).encode() for i in missing})
            except Exception as exc:  # noqa: BLE001 - the answer is computed; only the cache missed it
                log.warning("response cache store failed: %s", exc)
        return [s for s in scores if s is not None]

    def forget_model(self, model: str) -> None:
        if self.cache is not None:
            self.cache.forget_model(model)

    def _count(self, hits: int, lookups: int) -> None:
        LOOKUPS.labels("hit").inc(hits)
        LOOKUPS.labels("miss").inc(lookups - hits)
        self._hits += hits
        self._lookups += lookups
        HIT_RATIO.set(self._hits / self._lookups if self._lookups else 0.0)
