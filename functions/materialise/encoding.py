"""Feast's online bytes, written without Feast's per-cell protos (for the fast writers).

A feature value is stored as a serialised ``feast.types.Value``: ``double_val`` (field 5,
fixed64), ``int64_val`` (field 4, varint) or ``string_val`` (field 2, length-delimited), an
empty message for a null (a NaN double counts as null, as Feast's conversion does). An entity
key is ``serialize_entity_key`` of one int64 join key: a constant prefix, then the
little-endian int64. ``value_text`` (SQLite) is Python's ``str`` of the value, as Feast's
``extract_text_and_num`` writes it. ``sqlite_fast`` and ``redis_fast`` encode with these, and
tests/test_ingest_chunked.py compares their rows with Feast's own.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import pyarrow as pa

__all__ = ["SUPPORTED_TYPES", "cells", "entity_keys", "key_prefix", "timestamps", "varint"]

SUPPORTED_TYPES = ("Float64", "String", "Int64")
_DOUBLE, _STRING, _INT64 = b"\x29", b"\x12", b"\x20"
_DOUBLE_CELL = np.dtype([("tag", "u1"), ("value", "<f8")])  # packed: 9 bytes, as the proto


def varint(n: int) -> bytes:
    """Protobuf varint of ``n`` (two's complement on 64 bits for a negative int64)."""
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        low = n & 0x7F
        n >>= 7
        if n:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def key_prefix(config: Any, join_key: str) -> bytes:
    """What ``serialize_entity_key`` puts before an int64 key's 8 little-endian bytes."""
    from feast.infra.key_encoding_utils import serialize_entity_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    def key(k: int) -> bytes:
        return serialize_entity_key(
            EntityKey(join_keys=[join_key], entity_values=[Value(int64_val=k)]),
            entity_key_serialization_version=config.entity_key_serialization_version,
        )

    zero, one = key(0), key(1)
    if zero[:-8] != one[:-8] or one[-8:] != struct.pack("<q", 1):
        raise RuntimeError("unexpected entity key serialisation")
    return zero[:-8]


def entity_keys(prefix: bytes, column: pa.Array | pa.ChunkedArray, suffix: bytes = b"") -> list[bytes]:
    """The serialised key of every int64 id in ``column`` (plus ``suffix``: Redis adds the project)."""
    return [prefix + struct.pack("<q", k) + suffix for k in column.to_pylist()]


def timestamps(column: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """Event times as microseconds since the epoch, UTC (what a Python datetime holds)."""
    return column.cast(pa.timestamp("us", tz="UTC")).cast(pa.int64())


def _doubles(column: pa.Array | pa.ChunkedArray, texts: bool) -> tuple[list[bytes], list[str | None]]:
    values = column.to_numpy(zero_copy_only=False).astype("float64", copy=False)  # null -> NaN
    packed = np.empty(len(values), dtype=_DOUBLE_CELL)
    packed["tag"] = _DOUBLE[0]
    packed["value"] = values
    raw, width = packed.tobytes(), _DOUBLE_CELL.itemsize
    blobs = [raw[i : i + width] for i in range(0, len(raw), width)]
    text: list[str | None] = [str(v) for v in values.tolist()] if texts else []
    for i in np.flatnonzero(np.isnan(values)).tolist():
        blobs[i] = b""
        if texts:
            text[i] = None
    return blobs, text


def cells(
    kind: str, column: pa.Array | pa.ChunkedArray, texts: bool = True
) -> tuple[list[bytes], list[str | None]]:
    """The serialised ``Value`` and (``texts``) the ``value_text`` of every cell of a ``kind`` column."""
    if kind == "Float64":
        return _doubles(column, texts)
    values = column.to_pylist()
    if kind == "Int64":
        blobs = [b"" if v is None else _INT64 + varint(v) for v in values]
        texts = [None if v is None else str(v) for v in values]
        return blobs, texts
    blobs = []
    for v in values:
        if v is None:
            blobs.append(b"")
        else:
            raw = v.encode("utf8")
            blobs.append(_STRING + varint(len(raw)) + raw)
    return blobs, values
