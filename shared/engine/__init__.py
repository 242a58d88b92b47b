"""Where the heavy steps run: in the function's own process, or on a Dask cluster.

``FAASPIPE_ENGINE=inprocess`` (the default) keeps every step in the replica that got the event.
``FAASPIPE_ENGINE=dask`` sends the heavy steps to a ``dask.distributed`` cluster: the scheduler at
``FAASPIPE_DASK_SCHEDULER``, or, when that is unset, a ``LocalCluster`` the replica starts with
``FAASPIPE_DASK_WORKERS`` worker processes of ``FAASPIPE_DASK_THREADS`` threads each (OpenMP and
XGBoost get the same thread count, so workers never oversubscribe the cores).

Which steps go, and from what size: ``engine.settings()`` (this module, light: no Dask import);
the client: ``shared.engine.cluster``; the jobs live beside their functions
(``functions/ingest/distributed.py``, ``functions/train/distributed.py``,
``functions/materialise/distributed.py``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

__all__ = ["ENGINES", "EngineSettings", "settings"]

ENGINES = ("inprocess", "dask")
ENGINE_ENV = "FAASPIPE_ENGINE"
SCHEDULER_ENV = "FAASPIPE_DASK_SCHEDULER"
WORKERS_ENV = "FAASPIPE_DASK_WORKERS"
THREADS_ENV = "FAASPIPE_DASK_THREADS"
MIN_BYTES_ENV = "FAASPIPE_DASK_MIN_BYTES"
DEFAULT_WORKERS = 2
DEFAULT_THREADS = 1
# Files below this stay in process even with the Dask engine (README "The Dask engine").
DEFAULT_MIN_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class EngineSettings:
    engine: str = "inprocess"
    scheduler: str | None = None  # None: a LocalCluster
    workers: int = DEFAULT_WORKERS
    threads: int = DEFAULT_THREADS
    min_bytes: int = DEFAULT_MIN_BYTES

    @property
    def dask(self) -> bool:
        return self.engine == "dask"

    def use_dask(self, size_bytes: int) -> bool:
        """Whether a job over ``size_bytes`` of input goes to Dask."""
        return self.dask and size_bytes >= self.min_bytes


def settings(env: dict[str, str] | None = None) -> EngineSettings:
    """The engine settings of this process (``FAASPIPE_ENGINE`` and ``FAASPIPE_DASK_*``)."""
    env = dict(os.environ if env is None else env)
    engine = env.get(ENGINE_ENV) or "inprocess"
    if engine not in ENGINES:
        raise ValueError(f"{ENGINE_ENV} must be one of {ENGINES}, got {engine!r}")
    return EngineSettings(
        engine=engine,
        scheduler=env.get(SCHEDULER_ENV) or None,
        workers=max(1, int(env.get(WORKERS_ENV) or DEFAULT_WORKERS)),
        threads=max(1, int(env.get(THREADS_ENV) or DEFAULT_THREADS)),
        min_bytes=max(0, int(env.get(MIN_BYTES_ENV) or DEFAULT_MIN_BYTES)),
    )
