"""A fast path for Feast's Redis online store: the same hashes ``online_write_batch`` writes.

Feast's Redis store keeps one hash per entity (key: the serialised entity key, then the
project), with a field per feature (``mmh3`` of ``<view>:<feature>``, the serialised
``Value``) and ``_ts:<view>`` (the serialised ``Timestamp`` of the row's event time). It
converts every cell to a ``ValueProto`` first, then reads every key's ``_ts`` and writes only
the rows newer than what is stored. This does the same with the cells encoded directly
(``encoding``) and the read-compare-write done in the server: one Lua script call
(``EVALSHA``, pipelined) per chunk of ``CHUNK_ENTITIES`` entities reads each key's ``_ts`` and
``HSET``s the entities that are newer (a stored row at the same instant or later is kept, as
Feast keeps it). Feast's way, one ``HMGET`` then one ``HSET`` per entity, spends most of its
client CPU in redis-py's handling of two commands and replies an entity; a script call's reply
is one integer.

Not handled (``supports`` says so, and the caller uses Feast's path): Redis Cluster or
Sentinel, a key TTL, other value types, several join keys.
tests/test_ingest_chunked.py compares the hashes with Feast's own.
"""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from itertools import chain
from typing import Any

import numpy as np
import pyarrow as pa

from functions.materialise import encoding

__all__ = ["Writer", "supports"]


def supports(store: Any, view: Any) -> bool:
    """Whether these hashes are the ones Feast's Redis store would write for ``view``."""
    online = store.config.online_store
    if getattr(online, "type", "") != "redis" or str(getattr(online, "redis_type", "")) not in (
        "redis",
        "RedisType.redis",
    ):
        return False
    if getattr(online, "key_ttl_seconds", None) or len(view.entity_columns) != 1:
        return False
    return all(str(f.dtype) in encoding.SUPPORTED_TYPES for f in view.features)


def timestamp_bytes(micros: int) -> bytes:
    """``google.protobuf.Timestamp`` of ``micros`` since the epoch, serialised (zero fields omitted)."""
    seconds, rest = divmod(micros, 1_000_000)
    out = b"\x08" + encoding.varint(seconds) if seconds else b""
    return out + b"\x10" + encoding.varint(rest * 1000) if rest else out


# The compare-and-set of one chunk of entities, in the server: for each key, the stored
# ``_ts`` (a serialised Timestamp: field 1 int64 seconds, field 2 int32 nanos, zero fields
# omitted) against the row's (seconds, nanos); the hash is written unless the row is at or
# before the stored instant, as Feast's ``online_write_batch`` decides: Feast compares with
# ``max(stored nanos, 0)`` (no earlier row of the batch: keys are unique), so a stored instant
# at or before 1970-01-01 counts as nothing stored.
# KEYS: entity keys; ARGV: _ts field, n, the n feature fields, then per key: seconds, nanos,
# the serialised Timestamp and the n serialised Values. Returns the entities written.
_CAS = """
local tsf, n = ARGV[1], tonumber(ARGV[2])
local stride, base = n + 3, n + 2
local function varint(raw, i)
  local value, scale, b, groups = 0, 1, 128, {}
  while b >= 128 do
    b = string.byte(raw, i)
    if not b then error('faaspipe: truncated _ts') end
    groups[#groups + 1] = b % 128
    value, scale, i = value + (b % 128) * scale, scale * 128, i + 1
  end
  if #groups == 10 then -- a negative int64: minus one minus its complement (exact)
    value, scale = 0, 1
    for g = 1, 9 do value, scale = value + (127 - groups[g]) * scale, scale * 128 end
    value = -value - 1
  end
  return value, i
end
local function stored(raw)
  local seconds, nanos, i = 0, 0, 1
  while i <= #raw do
    local tag = string.byte(raw, i)
    if tag == 8 then seconds, i = varint(raw, i + 1)
    elseif tag == 16 then nanos, i = varint(raw, i + 1)
    else return error('faaspipe: unexpected field in _ts') end
  end
  return seconds, nanos
end
local written, args = 0, {false, tsf, false}
for f = 1, n do args[2 + 2 * f] = ARGV[2 + f] end
for k = 1, #KEYS do
  local o = base + (k - 1) * stride
  local s, ns = tonumber(ARGV[o + 1]), tonumber(ARGV[o + 2])
  local raw, ps, pn = redis.call('HGET', KEYS[k], tsf), 0, 0
  if raw then ps, pn = stored(raw) end
  if ps < 0 or (ps == 0 and pn <= 0) or s > ps or (s == ps and ns > pn) then
    args[1], args[3] = KEYS[k], ARGV[o + 3]
    for f = 1, n do args[3 + 2 * f] = ARGV[o + 3 + f] end
    redis.call('HSET', unpack(args))
    written = written + 1
  end
end
return written
"""

# Entities per script call: the server runs one call at a time (about 10 µs an entity here),
# so this bounds what a reader waits for.
CHUNK_ENTITIES = 1_000


class Writer:
    """Writes batches of (join key, event time, the view's features) as Feast's Redis store."""

    def __init__(
        self,
        store: Any,
        view: Any,
        join_key: str,
        timestamp_field: str,
        chunk_entities: int = CHUNK_ENTITIES,
    ) -> None:
        from feast.infra.online_stores.helpers import _mmh3
        from feast.infra.online_stores.redis import _versioned_fv_name

        config = store.config
        self._client = store._get_provider().online_store._get_client(config.online_store)
        self._script = self._client.register_script(_CAS)
        self._prefix = encoding.key_prefix(config, join_key)
        self._suffix = config.project.encode("utf-8")
        name = _versioned_fv_name(view, config)
        self._ts_field = f"_ts:{name}".encode()
        self._features = [(f.name, str(f.dtype), _mmh3(f"{name}:{f.name}")) for f in view.features]
        self._join_key, self._timestamp_field = join_key, timestamp_field
        self._chunk = max(1, chunk_entities)

    def write(self, batch: pa.RecordBatch) -> int:
        """Write ``batch`` (one row per entity); returns the entities written (a row at or before
        the stored instant is skipped)."""
        return self._send(self._calls(batch))

    def write_all(self, batches: Iterable[pa.RecordBatch]) -> int:
        """``write`` each batch, the next one encoded while the server runs the previous one's
        scripts (one thread waits on the server); returns the entities written."""
        written = 0
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="redis-fast") as pool:
            pending: Future[int] | None = None
            for batch in batches:
                calls = self._calls(batch)
                if pending is not None:
                    written += pending.result()
                pending = pool.submit(self._send, calls)
            if pending is not None:
                written += pending.result()
        return written

    def _calls(self, batch: pa.RecordBatch) -> list[tuple[list[bytes], list[Any]]]:
        """The script calls (keys, args) that write ``batch``, ``chunk_entities`` keys each."""
        keys = encoding.entity_keys(self._prefix, batch.column(self._join_key), self._suffix)
        if len(set(keys)) != len(keys):
            raise ValueError("an entity repeats in the batch (write the newest row per entity)")
        micros = encoding.timestamps(batch.column(self._timestamp_field)).to_numpy(zero_copy_only=False)
        seconds, rest = np.divmod(micros, 1_000_000)
        stamps = [timestamp_bytes(m) for m in micros.tolist()]
        columns = [
            encoding.cells(kind, batch.column(name), texts=False)[0] for name, kind, _ in self._features
        ]
        head = [self._ts_field, len(self._features), *(field for _, _, field in self._features)]
        per_key = list(zip(seconds.tolist(), (rest * 1000).tolist(), stamps, *columns, strict=True))
        return [
            (keys[low : low + self._chunk], [*head, *chain.from_iterable(per_key[low : low + self._chunk])])
            for low in range(0, len(keys), self._chunk)
        ]

    def _send(self, calls: list[tuple[list[bytes], list[Any]]]) -> int:
        with self._client.pipeline(transaction=False) as pipe:
            for keys, args in calls:
                self._script(keys=keys, args=args, client=pipe)
            return sum(pipe.execute())
