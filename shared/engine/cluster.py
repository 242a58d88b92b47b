"""The Dask client of this process: created on first use, closed at exit (or by ``close``).

With ``FAASPIPE_DASK_SCHEDULER`` set, a client of that scheduler (the cluster's Dask
scheduler Service, ``manifests/.../dask.yaml``); unset, a ``LocalCluster`` of worker processes
with explicit worker and thread counts, and ``OMP_NUM_THREADS`` set to the thread count in the
workers' environment so XGBoost and BLAS do not start one thread per core in every worker.
"""

from __future__ import annotations

import atexit
import logging
import threading
from typing import TYPE_CHECKING

from shared.engine import EngineSettings, settings

if TYPE_CHECKING:
    from distributed import Client

__all__ = ["client", "close", "new"]

log = logging.getLogger("faaspipe.engine")
_lock = threading.Lock()
_client: Client | None = None


def new(engine: EngineSettings | None = None) -> Client:
    """A new client (and, without a scheduler address, the LocalCluster it owns)."""
    from distributed import Client, LocalCluster

    engine = engine or settings()
    if engine.scheduler:
        log.info("dask: client of scheduler %s", engine.scheduler)
        return Client(engine.scheduler, set_as_default=False)
    threads = str(engine.threads)
    cluster = LocalCluster(
        n_workers=engine.workers,
        threads_per_worker=engine.threads,
        processes=True,
        dashboard_address=None,
        host="127.0.0.1",
        env={"OMP_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads, "MKL_NUM_THREADS": threads},
    )
    log.info("dask: LocalCluster of %d workers x %d threads", engine.workers, engine.threads)
    client = Client(cluster, set_as_default=False)
    client._faaspipe_cluster = cluster  # type: ignore[attr-defined]  # closed with the client
    return client


def client() -> Client:
    """This process's client, created on first use."""
    global _client
    with _lock:
        if _client is None:
            _client = new()
            atexit.register(close)
        return _client


def close(client: Client | None = None) -> None:
    """Close ``client`` (default: this process's) and the LocalCluster it owns."""
    global _client
    with _lock:
        if client is None:
            client, _client = _client, None
        if client is None:
            return
        cluster = getattr(client, "_faaspipe_cluster", None)
        client.close()
        if cluster is not None:
            cluster.close()
