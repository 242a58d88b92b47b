"""What a response cache is: bytes by key, best effort (a failing cache never fails a request)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence


class ResponseCache(ABC):
    """A cache of scored rows. Keys name the model version, so a promotion never serves an old
    model's answer; ``forget_model`` drops what a replica holds for a model when its alias moves."""

    kind: str = "none"

    @abstractmethod
    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """The value of each key, None where absent."""

    @abstractmethod
    def put_many(self, items: Mapping[str, bytes]) -> None:
        """Store every item."""

    def forget_model(self, model: str) -> None:  # noqa: B027 - a no-op unless the backend can
        """Drop this model's entries if the backend can (versioned keys make it optional)."""
