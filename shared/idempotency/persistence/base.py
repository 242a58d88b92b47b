"""The store interface every idempotency backend implements, and a per-consumer view of one."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

ClaimState = Literal["new", "done", "in_progress"]

DEFAULT_RETENTION_DAYS = 7.0
DAY_S = 86400.0


@dataclass(frozen=True)
class Claim:
    """Outcome of :meth:`IdempotencyStore.claim`; ``reply`` is set only for a done key."""

    state: ClaimState
    reply: bytes | None = None


class IdempotencyStore(Protocol):
    def claim(self, key: str, lease_s: float = 60.0) -> Claim:
        """Unknown or lease-expired key -> record in progress, "new"; done -> "done" + reply;
        live in-progress key -> "in_progress"."""
        ...

    def complete(self, key: str, reply: bytes | None) -> None:
        """Mark ``key`` done and store ``reply`` for later duplicates."""
        ...

    def release(self, key: str) -> None:
        """Drop our in-progress claim (handler failed) so a retry may run it again."""
        ...

    def renew(self, key: str, lease_s: float) -> bool:
        """Extend our in-progress claim to ``lease_s`` from now; False if it is no longer ours."""
        ...

    def close(self) -> None: ...


class NamespacedStore:
    """A view of a store whose keys are scoped to one consumer (function).

    Deduplication is per subscriber: two functions receiving the same event must each run
    their handler once, never replay each other's stored replies.
    """

    def __init__(self, store: IdempotencyStore, namespace: str) -> None:
        self.store = store
        self.prefix = f"{len(namespace)}:{namespace}|"

    def claim(self, key: str, lease_s: float = 60.0) -> Claim:
        return self.store.claim(self.prefix + key, lease_s)

    def complete(self, key: str, reply: bytes | None) -> None:
        self.store.complete(self.prefix + key, reply)

    def release(self, key: str) -> None:
        self.store.release(self.prefix + key)

    def renew(self, key: str, lease_s: float) -> bool:
        return self.store.renew(self.prefix + key, lease_s)

    def close(self) -> None:
        self.store.close()
