"""Shared-state concurrency for functions running several replicas (see ``base.py``)."""

from shared.concurrency.base import Lease, Outcome, Versioned, VersionedStore, update
from shared.concurrency.exceptions import (
    ConcurrencyError,
    Conflict,
    LeaseBusy,
    LeaseLost,
    TooManyConflicts,
)
from shared.concurrency.s3 import S3VersionedStore

__all__ = [
    "ConcurrencyError",
    "Conflict",
    "Lease",
    "LeaseBusy",
    "LeaseLost",
    "Outcome",
    "S3VersionedStore",
    "TooManyConflicts",
    "Versioned",
    "VersionedStore",
    "update",
]
