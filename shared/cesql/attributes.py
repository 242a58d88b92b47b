"""Reading event attributes (CESQL v1 spec, section 3.2 "CloudEvent context identifiers and types",
and section 3.4.4 for ``EXISTS``).

The evaluator gets an event's context attributes as a mapping name → value. Values that are
not a CESQL primitive are represented as String: the CloudEvents types URI, URI-reference and
Timestamp already arrive as strings (a ``datetime`` is written as its ISO 8601 / RFC 3339
string), Binary (``bytes``) as its base64 text, an ``int`` outside the 32-bit range as its
decimal text, anything else as ``str(value)``. A ``None`` value counts as absent. ``data`` and
``data_base64`` are the event's payload, not attributes, so CESQL cannot address them.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

from shared.cesql.casting import Value, in_int32

REQUIRED = frozenset({"specversion", "id", "source", "type"})
NOT_ATTRIBUTES = frozenset({"data", "data_base64"})


def lookup(attributes: Mapping[str, Any], name: str) -> Value | None:
    """The CESQL value of attribute ``name`` (lower case), or None when the event lacks it."""
    if name in NOT_ATTRIBUTES:
        return None
    raw = attributes.get(name)
    if raw is None:
        return None
    if type(raw) is bool or type(raw) is str:
        return raw
    if isinstance(raw, int) and not isinstance(raw, bool):
        return int(raw) if in_int32(int(raw)) else str(int(raw))
    if isinstance(raw, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(raw)).decode("ascii")
    if isinstance(raw, str):  # a str subclass (e.g. an enum): its text, not its repr-like str()
        return str.__str__(raw)
    isoformat = getattr(raw, "isoformat", None)
    if callable(isoformat):
        return str(isoformat())
    return str(raw)


def exists(attributes: Mapping[str, Any], name: str) -> bool:
    """``EXISTS name``: always true for the REQUIRED attributes, as the event is assumed valid."""
    return name in REQUIRED or lookup(attributes, name) is not None
