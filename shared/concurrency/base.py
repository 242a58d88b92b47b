"""Optimistic read-modify-write and fenced leases over a store with conditional writes.

Replicas of a function share state only through a store, so the store's own concurrency
control decides who wins, never a lock in one process:

* :func:`update` — read a document with its version token, change it, write it back *only if*
  the token is still current; a lost race re-reads and changes again (bounded attempts,
  jittered backoff). The change function must be pure (it may run several times) and every
  side effect (an event sent, a registry write) happens after the write that won, by the
  caller, from the outcome.
* :class:`Lease` — mutual exclusion for work that cannot be redone optimistically (training a
  model then registering it, moving a registry alias). The lease is a document written with
  the same conditional writes; each acquisition increments its ``token`` (the fencing token),
  an expired lease is taken over with a conditional write, and :meth:`Lease.check` renews it
  with a conditional write right before the protected write, so a holder that was taken over
  learns it (:class:`LeaseLost`) instead of writing.

Backends implement :class:`VersionedStore`; ``shared.concurrency.s3`` uses S3 conditional
writes (``If-Match`` / ``If-None-Match: *``), which SeaweedFS (4.x), MinIO and AWS S3 honour.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from shared.concurrency.exceptions import Conflict, LeaseBusy, LeaseLost, TooManyConflicts

log = logging.getLogger("faaspipe.concurrency")

R = TypeVar("R")
DEFAULT_ATTEMPTS = 20
BACKOFF_BASE_S = 0.02
BACKOFF_CAP_S = 1.0


@dataclass(frozen=True)
class Versioned:
    """A document and the store's version of it (S3: the ETag)."""

    doc: Any
    token: str


class VersionedStore(Protocol):
    """A key → JSON document store with compare-and-set writes."""

    def read(self, key: str) -> Versioned | None:
        """The document at ``key`` with its version token, or None when there is none."""
        ...

    def write(self, key: str, doc: Any, *, expected: str | None) -> str:
        """Write ``doc`` if the current version is ``expected`` (None: only if ``key`` does not
        exist); the new version token. Raises :class:`Conflict` otherwise."""
        ...


@dataclass(frozen=True)
class Outcome(Generic[R]):
    """What :func:`update` did: the change's result, whether this call wrote, the document now."""

    result: R
    written: bool
    doc: Any
    token: str | None
    attempts: int


Change = Callable[[Any], "tuple[Any, R]"]  # current doc (None: absent) → (new doc or None: keep, result)


def backoff(attempt: int, base_s: float = BACKOFF_BASE_S, cap_s: float = BACKOFF_CAP_S) -> float:
    """Full-jitter exponential backoff: replicas that lost the same race do not retry in step."""
    return random.uniform(0, min(cap_s, base_s * 2**attempt))


def update(
    store: VersionedStore, key: str, change: Change[R], *, attempts: int = DEFAULT_ATTEMPTS
) -> Outcome[R]:
    """Read ``key``, apply ``change``, write back conditionally; on a lost race, again.

    ``change`` gets a freshly read document each attempt (None when absent) and returns the
    new document (None: nothing to write) and a result for the caller. It may raise to abort.
    """
    for attempt in range(1, attempts + 1):
        current = store.read(key)
        new, result = change(None if current is None else current.doc)
        if new is None:
            return Outcome(
                result, False, None if current is None else current.doc, current and current.token, attempt
            )
        try:
            token = store.write(key, new, expected=None if current is None else current.token)
        except Conflict:
            log.debug("%s: lost a write race (attempt %d); reading again", key, attempt)
            time.sleep(backoff(attempt))
            continue
        return Outcome(result, True, new, token, attempt)
    raise TooManyConflicts(f"{key}: {attempts} conditional writes in a row lost their race")


class Lease:
    """A fenced, expiring lease at ``key`` of ``store`` (see the module docstring)."""

    def __init__(self, store: VersionedStore, key: str, owner: str, ttl_s: float) -> None:
        self.store, self.key, self.owner, self.ttl_s = store, key, owner, ttl_s
        self.token: int | None = None  # the fencing token while held
        self._version: str | None = None

    def _doc(self, token: int, now: float, *, released: bool = False) -> dict[str, Any]:
        return {
            "owner": self.owner,
            "token": token,
            "expires_at": now if released else now + self.ttl_s,
            "released": released,
        }

    def try_acquire(self) -> bool:
        """Take the lease if it is free, released or expired; False when someone else holds it."""
        now = time.time()
        current = self.store.read(self.key)
        if current is not None:
            doc = current.doc
            if not doc.get("released") and float(doc.get("expires_at", 0)) > now:
                return False
            token = int(doc.get("token", 0)) + 1
        else:
            token = 1
        try:
            self._version = self.store.write(
                self.key, self._doc(token, now), expected=None if current is None else current.token
            )
        except Conflict:
            return False
        self.token = token
        if current is not None and not current.doc.get("released"):
            log.warning("%s: took over an expired lease of %s", self.key, current.doc.get("owner"))
        return True

    def acquire(self, wait_s: float) -> int:
        """The fencing token, once held; :class:`LeaseBusy` if not held within ``wait_s``."""
        deadline = time.monotonic() + wait_s
        attempt = 0
        while not self.try_acquire():
            attempt += 1
            if time.monotonic() >= deadline:
                holder = self.store.read(self.key)
                raise LeaseBusy(f"{self.key} is held by {holder.doc.get('owner') if holder else '?'}")
            time.sleep(min(backoff(attempt, 0.05, 2.0) + 0.05, max(0.0, deadline - time.monotonic())))
        assert self.token is not None
        return self.token

    def check(self) -> None:
        """Renew the lease with a conditional write: :class:`LeaseLost` when it was taken over.
        Call it right before each write the lease protects (the fencing check)."""
        if self.token is None or self._version is None:
            raise LeaseLost(f"{self.key} is not held")
        try:
            self._version = self.store.write(
                self.key, self._doc(self.token, time.time()), expected=self._version
            )
        except Conflict as exc:
            self.token = None
            raise LeaseLost(f"{self.key}: lease taken over; fencing token is stale") from exc

    def release(self) -> None:
        """Let go (a conditional write: a lease taken over meanwhile is left alone)."""
        if self.token is None or self._version is None:
            return
        try:
            self.store.write(
                self.key, self._doc(self.token, time.time(), released=True), expected=self._version
            )
        except Conflict:
            log.warning("%s: lease was taken over before release", self.key)
        finally:
            self.token = None
            self._version = None

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
