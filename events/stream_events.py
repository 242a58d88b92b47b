"""Typed constructors: streamed sensor readings and their rejections."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, TypedDict

from events.catalogue import register
from events.envelope import EventData

__all__ = ["ReadingReason", "SensorReading", "SensorReadingRejected"]


class ReadingReason(TypedDict):
    field: str | None
    rule: str
    message: str


@register
@dataclass(frozen=True, kw_only=True, slots=True)
class SensorReading(EventData):
    """One machine's reading, checked against its contract by stream-features (source -> stream-features)."""

    TYPE: ClassVar[str] = "dev.faaspipe.sensor.reading.v1"
    dataset: str
    reading: dict[str, Any]


@register
@dataclass(frozen=True, kw_only=True, slots=True)
class SensorReadingRejected(EventData):
    """A reading broke its contract; nothing was written (stream-features -> audit)."""

    TYPE: ClassVar[str] = "dev.faaspipe.sensor.reading.rejected.v1"
    dataset: str
    reading_id: str
    reading_source: str
    entity: int | None
    reasons: list[ReadingReason]
