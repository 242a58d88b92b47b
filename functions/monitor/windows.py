"""Tumbling windows of recent predictions, one per model version, kept in the monitor's store.

A window closes when it holds ``size`` predictions, or when ``seconds`` have passed since
its first prediction was stored and it holds at least ``min_size`` (a quiet model still gets
checked); below ``min_size`` it keeps filling — a test on a handful of rows says nothing —
until it is ``EXPIRE_AFTER_WINDOWS`` windows old: then it is dropped unchecked (reason
``expired``; e.g. the leftovers of a version that is no longer served).

The open windows are the store's predictions that no window covered yet, not a replica's
memory: every replica of the monitor sees every stored prediction, whichever replica the
event was delivered to, and a restart loses nothing. A closing window is *claimed* in one
transaction (``MonitorStore.claim_window``): its rows are marked covered only if no other
replica marked them first, so exactly one replica checks each window. A replica that dies
between the claim and the check loses that one window's check (it is not retried): the
trade-off of claiming before checking, which keeps a window from being checked twice.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from functions.monitor.store import MonitorStore

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

    def reason_to_close(self, count: int, age_s: float) -> str | None:
        """Why a window of ``count`` rows whose first row is ``age_s`` old closes, or None."""
        if count >= self.size:
            return "full"
        if count >= self.min_size and age_s >= self.seconds:
            return "time"
        if count and age_s >= self.seconds * EXPIRE_AFTER_WINDOWS:
            return "expired"
        return None


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


class Windows:
    """The open windows of every model version, read from and claimed in ``store``."""

    def __init__(
        self, config: WindowConfig, store: MonitorStore, clock: Callable[[], float] = time.time
    ) -> None:
        self.config = config
        self.store = store
        self.clock = clock  # wall-clock seconds: rows are stamped by whichever replica stored them

    def after_insert(self, key: ModelKey) -> ClosedWindow | None:
        """After a prediction of ``key`` was stored: the window it closed, if this replica claimed it."""
        return self.store.claim_window(key, self.config, self.clock())

    def due(self) -> list[ClosedWindow]:
        """Windows whose time is up (called periodically, for models that went quiet)."""
        now = self.clock()
        closed = [self.store.claim_window(key, self.config, now) for key in self.store.open_counts()]
        return [c for c in closed if c is not None]

    def fill(self) -> dict[ModelKey, int]:
        return {key: count for key, (count, _) in self.store.open_counts().items()}
