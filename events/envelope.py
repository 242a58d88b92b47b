"""Building CloudEvents from catalogue types, and the base class of the typed constructors."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, ClassVar, Self

from cloudevents.core.base import BaseCloudEvent
from cloudevents.core.v1.event import CloudEvent

from events.catalogue import schema_uri
from events.validation import event_data, validate_data

__all__ = ["EventData", "new_event", "rfc3339"]


def new_event(
    event_type: str,
    data: Mapping[str, Any],
    *,
    source: str,
    subject: str | None = None,
    id: str | None = None,
    extensions: Mapping[str, str] | None = None,
) -> CloudEvent:
    """A validated CloudEvent of a catalogue type with JSON ``data`` and ``dataschema`` set.

    ``id`` defaults to a UUID4 and ``time`` to now (UTC).
    """
    payload = dict(data)
    validate_data(event_type, payload)
    attributes: dict[str, Any] = dict(extensions or {})
    attributes.update(
        type=event_type,
        source=source,
        datacontenttype="application/json",
        dataschema=schema_uri(event_type),
    )
    if subject is not None:
        attributes["subject"] = subject
    if id is not None:
        attributes["id"] = id
    return CloudEvent(attributes, payload)


def rfc3339(moment: datetime | None = None) -> str:
    """An RFC 3339 date-time string for schema ``date-time`` fields (default: now, UTC)."""
    moment = datetime.now(UTC) if moment is None else moment
    if moment.tzinfo is None:
        raise ValueError("date-time fields need a timezone-aware datetime")
    return moment.isoformat().replace("+00:00", "Z")


class EventData:
    """Base of the typed constructors: frozen dataclasses whose fields are the schema properties."""

    __slots__ = ()
    TYPE: ClassVar[str]

    def to_data(self) -> dict[str, Any]:
        """The ``data`` object (a fresh, deep copy; optional fields included with their values)."""
        return dataclasses.asdict(self)  # type: ignore[call-overload, no-any-return]

    def validate(self) -> None:
        validate_data(self.TYPE, self.to_data())

    def to_event(
        self,
        *,
        source: str,
        subject: str | None = None,
        id: str | None = None,
        extensions: Mapping[str, str] | None = None,
    ) -> CloudEvent:
        return new_event(
            self.TYPE, self.to_data(), source=source, subject=subject, id=id, extensions=extensions
        )

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> Self:
        validate_data(cls.TYPE, data)
        return cls(**data)

    @classmethod
    def from_event(cls, event: BaseCloudEvent) -> Self:
        """The typed data of ``event``; raises ``ValueError`` if the type differs, ``EventDataError`` if invalid."""
        if event.get_type() != cls.TYPE:
            raise ValueError(f"expected a {cls.TYPE} event, got {event.get_type()!r}")
        return cls(**event_data(event))
