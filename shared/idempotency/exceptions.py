"""Errors raised by the idempotency mechanism."""

from __future__ import annotations


class DuplicateInFlight(RuntimeError):
    """The event is being processed right now by another worker (live lease).

    The function runtime answers HTTP 409 so the broker redelivers it later, by when
    it is either done (answered from the store) or its lease expired (run again).
    """
