"""Exceptions raised by the event catalogue."""

from __future__ import annotations

__all__ = ["EventDataError", "UnknownEventType"]


class UnknownEventType(ValueError):
    """The event type is not in the catalogue."""

    def __init__(self, event_type: str, suggestion: str | None = None) -> None:
        self.event_type = event_type
        self.suggestion = suggestion
        message = f"unknown event type {event_type!r}"
        if suggestion is not None:
            message += f"; did you mean {suggestion!r}?"
        super().__init__(message)


class EventDataError(ValueError):
    """An event's ``data`` breaks the schema of its type.

    ``field`` is the dotted path of the offending field inside ``data``
    (``rows_in``, ``p_values.torque``, ``gates.0.name``), ``""`` for the whole object.
    """

    def __init__(self, event_type: str, field: str, reason: str) -> None:
        self.event_type = event_type
        self.field = field
        self.reason = reason
        location = f"data.{field}" if field else "data"
        super().__init__(f"{event_type}: {location}: {reason}")

    def __reduce__(self) -> tuple[type[EventDataError], tuple[str, str, str]]:
        return (type(self), (self.event_type, self.field, self.reason))
