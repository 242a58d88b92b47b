"""Errors a handler raises to tell the runtime how to answer (stdlib only, imports anywhere)."""

from __future__ import annotations


class EventRejected(ValueError):
    """The event can never be processed: answered 422 and dead-lettered without retry."""
