"""The registry of event types: type string -> schema, description and data class."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar

from events.errors import UnknownEventType

__all__ = [
    "EVENT_TYPES",
    "SCHEMA_BASE_URI",
    "SCHEMA_DIR",
    "EventSpec",
    "get_spec",
    "is_known",
    "register",
    "schema_uri",
]

SCHEMA_BASE_URI = "https://faaspipe.dev/events/"
SCHEMA_DIR = Path(__file__).with_name("schemas")


@dataclass(frozen=True, slots=True)
class EventSpec:
    """One catalogue entry. ``schema`` is the JSON Schema of ``data``; do not mutate it."""

    type: str
    description: str
    schema: dict[str, Any]
    data_class: type

    @property
    def schema_uri(self) -> str:
        return schema_uri(self.type)


_SPECS: dict[str, EventSpec] = {}
EVENT_TYPES: Mapping[str, EventSpec] = MappingProxyType(_SPECS)

C = TypeVar("C", bound=type)


def schema_uri(event_type: str) -> str:
    """Stable URI of the schema of ``event_type`` (its ``$id``, used as ``dataschema``)."""
    return f"{SCHEMA_BASE_URI}{event_type}.json"


def load_schema(event_type: str) -> dict[str, Any]:
    """Read ``events/schemas/<event_type>.json``."""
    schema: dict[str, Any] = json.loads((SCHEMA_DIR / f"{event_type}.json").read_text(encoding="utf-8"))
    return schema


def register(data_class: C) -> C:
    """Class decorator: add the data class (with its ``TYPE``) and its schema file to the catalogue."""
    event_type: str = data_class.TYPE  # type: ignore[attr-defined]
    if event_type in _SPECS:
        raise ValueError(f"event type {event_type!r} registered twice")
    schema = load_schema(event_type)
    if schema.get("$id") != schema_uri(event_type):
        raise ValueError(
            f"schema of {event_type!r} has $id {schema.get('$id')!r}, expected {schema_uri(event_type)!r}"
        )
    _SPECS[event_type] = EventSpec(event_type, schema.get("description", ""), schema, data_class)
    return data_class


def is_known(event_type: str) -> bool:
    return event_type in _SPECS


def get_spec(event_type: str) -> EventSpec:
    """The catalogue entry of ``event_type``; raises :class:`UnknownEventType` (with a suggestion)."""
    try:
        return _SPECS[event_type]
    except (KeyError, TypeError):
        import difflib  # only on the error path: keep start-up light

        matches = difflib.get_close_matches(str(event_type), list(_SPECS), n=1, cutoff=0.6)
        raise UnknownEventType(str(event_type), matches[0] if matches else None) from None
