"""Typed constructors: batch scoring of files dropped under a dataset's ``score/`` prefix."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from events.catalogue import register
from events.envelope import EventData

__all__ = ["BatchRejected", "BatchScored"]


@register
@dataclass(frozen=True, kw_only=True, slots=True)
class BatchScored(EventData):
    """A file was scored by its dataset's champion (batch-score -> consumers of predictions)."""

    TYPE: ClassVar[str] = "dev.faaspipe.batch.scored.v1"
    dataset: str
    contract: str
    source_uri: str
    object_version: str
    request_id: str
    model_name: str
    model_version: str
    output_uri: str
    rejected_uri: str
    report_uri: str
    rows_in: int
    rows_scored: int
    rows_rejected: int
    chunks: int
    duration_s: float


@register
@dataclass(frozen=True, kw_only=True, slots=True)
class BatchRejected(EventData):
    """A file could not be scored at all (batch-score -> audit)."""

    TYPE: ClassVar[str] = "dev.faaspipe.batch.rejected.v1"
    dataset: str
    source_uri: str
    object_version: str
    model_name: str
    model_version: str | None
    rule: Literal[
        "format", "unreadable", "missing_column", "duplicate_column", "no_champion", "model_unavailable"
    ]
    column: str | None
    message: str
