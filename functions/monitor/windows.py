"""Tumbling windows of recent predictions, one per model version (pure Python, no I/O).

A window closes when it holds ``size`` predictions, or when ``seconds`` have passed since
its first prediction and it holds at least ``min_size`` (a quiet model still gets checked);
below ``min_size`` it keeps filling — a test on a handful of rows says nothing — until it is
``EXPIRE_AFTER_WINDOWS`` windows old: then it is dropped unchecked (reason ``expired``; e.g.
the leftovers of a version that is no longer served).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

ModelKey = tuple[str, str]  # (model_name, model_version)
EXPIRE_AFTER_WINDOWS = 12


@dataclass(frozen=True)
class WindowConfig:
    size: int = 500
    seconds: float = 300.0
    min_size: int = 100

    @classmethod
    def from_env(cls) -> WindowConfig:
        size = int(os.environ.get("FAASPIPE_DRIFT_WINDOW_SIZE", "500"))
        return cls(
            size=size,
            seconds=float(os.environ.get("FAASPIPE_DRIFT_WINDOW_SECONDS", "300")),
            min_size=min(size, int(os.environ.get("FAASPIPE_DRIFT_MIN_WINDOW", "100"))),
        )


@dataclass(frozen=True)
class Observation:
    """One logged prediction as the drift check needs it."""

    event_id: str
    at: datetime  # when it was predicted (the event's time)
    inputs: dict[str, Any]  # raw inputs by canonical name


@dataclass(frozen=True)
class ClosedWindow:
    model_name: str
    model_version: str
    observations: tuple[Observation, ...]
    reason: str  # "full" | "time" | "expired" (too few rows for too long: not to be checked)

    @property
    def size(self) -> int:
        return len(self.observations)

    @property
    def start(self) -> datetime:
        return min(o.at for o in self.observations)

    @property
    def end(self) -> datetime:
        return max(o.at for o in self.observations)


@dataclass
class _OpenWindow:
    opened_at: float
    observations: list[Observation] = field(default_factory=list)


class Windows:
    """Thread-safe set of open windows keyed by (model name, version)."""

    def __init__(self, config: WindowConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.clock = clock
        self._open: dict[ModelKey, _OpenWindow] = {}
        self._lock = threading.Lock()

    def add(self, key: ModelKey, observation: Observation) -> ClosedWindow | None:
        """Add one prediction; returns the window it closed, if any."""
        now = self.clock()
        with self._lock:
            window = self._open.setdefault(key, _OpenWindow(opened_at=now))
            window.observations.append(observation)
            return self._close_if_due(key, window, now)

    def due(self) -> list[ClosedWindow]:
        """Windows whose time is up (called periodically, for models that went quiet)."""
        now = self.clock()
        with self._lock:
            closed = [self._close_if_due(key, w, now) for key, w in list(self._open.items())]
        return [c for c in closed if c is not None]

    def fill(self) -> dict[ModelKey, int]:
        with self._lock:
            return {key: len(w.observations) for key, w in self._open.items()}

    def _close_if_due(self, key: ModelKey, window: _OpenWindow, now: float) -> ClosedWindow | None:
        count = len(window.observations)
        if count >= self.config.size:
            reason = "full"
        elif count >= self.config.min_size and now - window.opened_at >= self.config.seconds:
            reason = "time"
        elif now - window.opened_at >= self.config.seconds * EXPIRE_AFTER_WINDOWS:
            reason = "expired"
        else:
            return None
        del self._open[key]
        return ClosedWindow(key[0], key[1], tuple(window.observations), reason)
