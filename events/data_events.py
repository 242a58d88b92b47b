"""Typed constructors: object store, ingestion and feature events."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal, TypedDict

from events.catalogue import register
from events.envelope import EventData

__all__ = ["DatasetIngested", "DatasetRejected", "FeaturesMaterialised", "ObjectCreated", "RejectReason"]


class RejectReason(TypedDict):
    rule: str
    column: str | None
    count: int
    message: str


@register
@dataclass(frozen=True, kw_only=True, slots=True)
class ObjectCreated(EventData):
    """An object was written to a watched bucket (object-events source -> ingest)."""

    TYPE: ClassVar[str] = "dev.faaspipe.object.created.v1"
    bucket: str
    key: str
    size: int
    etag: str
    version: str
    content_type: str | None = None
    event_name: str
    origin: Literal["seaweedfs", "s3"]


@register
@dataclass(frozen=True, kw_only=True, slots=True)
class DatasetIngested(EventData):
    """A raw file passed its contract and reached the offline store (ingest -> materialise)."""

    TYPE: ClassVar[str] = "dev.faaspipe.dataset.ingested.v1"
    dataset: str
    version: str
    contract: str
    source_uri: str
    offline_uri: str
    checksum: str
    rows_in: int
    rows_written: int
    rows_rejected: int
    event_time_min: str
    event_time_max: str
    origin: Literal["file", "production"] = "file"  # production: labelled predictions (monitor)


@register
@dataclass(frozen=True, kw_only=True, slots=True)
class DatasetRejected(EventData):
    """A raw file failed its contract and was quarantined (ingest -> audit)."""

    TYPE: ClassVar[str] = "dev.faaspipe.dataset.rejected.v1"
    dataset: str | None
    source_uri: str
    quarantine_uri: str
    report_uri: str
    rows_in: int
    rows_rejected: int
    reasons: list[RejectReason]


@register
@dataclass(frozen=True, kw_only=True, slots=True)
class FeaturesMaterialised(EventData):
    """A feature view was materialised into the online store (materialise -> tune)."""

    TYPE: ClassVar[str] = "dev.faaspipe.features.materialised.v1"
    feature_view: str
    dataset: str
    version: str
    start: str
    end: str
    rows: int
    online_store: Literal["sqlite", "redis"]
