"""W3C Trace Context (``traceparent``) carried as a CloudEvents extension across every hop."""

from __future__ import annotations

import re
import secrets

_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")


def new_traceparent() -> str:
    """Start a new trace (sampled)."""
    return f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"


def is_valid(traceparent: str | None) -> bool:
    if not traceparent:
        return False
    match = _TRACEPARENT.match(traceparent)
    return bool(match) and match.group(2) != "0" * 32 and match.group(3) != "0" * 16


def child_of(traceparent: str | None) -> str:
    """The traceparent of a next hop: same trace id, new span id; a new trace if none/invalid."""
    if not is_valid(traceparent):
        return new_traceparent()
    version, trace_id, _parent, flags = traceparent.split("-")  # type: ignore[union-attr]
    return f"{version}-{trace_id}-{secrets.token_hex(8)}-{flags}"


def trace_id(traceparent: str | None) -> str | None:
    return traceparent.split("-")[1] if is_valid(traceparent) else None
