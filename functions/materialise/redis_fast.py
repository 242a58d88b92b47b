"""A fast path for Feast's Redis online store: the same hashes ``online_write_batch`` writes.

Feast's Redis store keeps one hash per entity (key: the serialised entity key, then the
project), with a field per feature (``mmh3`` of ``<view>:<feature>``, the serialised
``Value``) and ``_ts:<view>`` (the serialised ``Timestamp`` of the row's event time). It
converts every cell to a ``ValueProto`` first, then reads every key's ``_ts`` and writes only
the rows newer than what is stored. This does the same with the cells encoded directly
(``encoding``) and the commands packed by the client for a whole batch: one pipelined
``HMGET`` per entity, then one ``HSET`` per entity that is newer (a stored row at the same
instant or later is kept, as Feast keeps it).

Not handled (``supports`` says so, and the caller uses Feast's path): Redis Cluster or
Sentinel, a key TTL, other value types, several join keys.
tests/test_ingest_chunked.py compares the hashes with Feast's own.
"""

from __future__ import annotations

from typing import Any

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


def _stored_micros(raw: bytes | None) -> int:
    if not raw:
        return 0
    from google.protobuf.timestamp_pb2 import Timestamp

    stamp = Timestamp()
    stamp.ParseFromString(raw)
    return stamp.seconds * 1_000_000 + stamp.nanos // 1000


class Writer:
    """Writes batches of (join key, event time, the view's features) as Feast's Redis store."""

    def __init__(self, store: Any, view: Any, join_key: str, timestamp_field: str) -> None:
        from feast.infra.online_stores.helpers import _mmh3
        from feast.infra.online_stores.redis import _versioned_fv_name

        config = store.config
        self._client = store._get_provider().online_store._get_client(config.online_store)
        self._prefix = encoding.key_prefix(config, join_key)
        self._suffix = config.project.encode("utf-8")
        name = _versioned_fv_name(view, config)
        self._ts_field = f"_ts:{name}".encode()
        self._features = [(f.name, str(f.dtype), _mmh3(f"{name}:{f.name}")) for f in view.features]
        self._join_key, self._timestamp_field = join_key, timestamp_field

    def write(self, batch: pa.RecordBatch) -> int:
        """Write ``batch``; returns the entities written (older than the stored row: skipped)."""
        keys = encoding.entity_keys(self._prefix, batch.column(self._join_key), self._suffix)
        micros = encoding.timestamps(batch.column(self._timestamp_field)).to_pylist()
        with self._client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.execute_command("HMGET", key, self._ts_field)
            stored = [_stored_micros(reply[0]) for reply in pipe.execute()]
        columns = [
            encoding.cells(kind, batch.column(name), texts=False)[0] for name, kind, _ in self._features
        ]
        fields = [field for _, _, field in self._features]
        latest: dict[bytes, int] = {}  # within the batch too, as Feast does
        written = 0
        with self._client.pipeline(transaction=False) as pipe:
            for i, key in enumerate(keys):
                when = micros[i]
                seen = max(stored[i], latest.get(key, 0))
                if seen and when <= seen:
                    continue
                latest[key] = when
                args: list[bytes] = [self._ts_field, timestamp_bytes(when)]
                for field, column in zip(fields, columns, strict=True):
                    args += (field, column[i])
                pipe.execute_command("HSET", key, *args)
                written += 1
            pipe.execute()
        return written
