"""What can go wrong when replicas share state: a lost race, a lease held by another, a lease lost."""

from __future__ import annotations


class ConcurrencyError(RuntimeError):
    """Base of the errors of :mod:`shared.concurrency`."""


class Conflict(ConcurrencyError):
    """A conditional write found another version than the one it was based on (S3: HTTP 412)."""


class TooManyConflicts(ConcurrencyError):
    """Every attempt of a read-modify-write lost its race; the caller fails and is retried later."""


class LeaseBusy(ConcurrencyError):
    """Another owner holds the lease and did not let go within the wait."""


class LeaseLost(ConcurrencyError):
    """The lease was taken over (it had expired): the fencing token is stale, do not write."""
