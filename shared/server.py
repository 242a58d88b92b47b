"""The production server of every function replica: gunicorn, one gthread worker.

What localdev runs is what the image runs: ``python -m shared.runtime`` serves the function's
WSGI app through :func:`serve`. One worker per replica keeps a replica's state (the loaded
model, the Prometheus registry, the readiness flag) in one process, as a Knative pod has it;
replicas, not workers, are what scales.

- ``concurrency`` > 0 caps the requests that reach the handler at once, as Knative's
  queue-proxy enforces ``containerConcurrency``: the rest wait for a slot. Health and metrics
  routes never wait.
- SIGTERM drains: no new connection is accepted, idle keep-alive connections are closed at
  once, in-flight requests finish within ``drain_timeout_s``.
- The app is built in the worker (after the fork), so ``init`` (model load, clients) and its
  threads live in the process that serves.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any

from gunicorn.app.base import BaseApplication
from gunicorn.workers.gthread import ThreadWorker

log = logging.getLogger("faaspipe.server")

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
PLATFORM_PATHS = ("/health/", "/metrics")
# Idle keep-alive connections from the gateway's pool are kept this long (the gateway's own
# pool lets them go sooner, so it never writes to a connection the server is closing).
KEEPALIVE_S = 30
SPARE_THREADS = 4  # beyond ``concurrency``: health probes and requests waiting for a slot


class ConcurrencyLimit:
    """WSGI middleware: at most ``limit`` requests in the app at once (0 = no limit)."""

    def __init__(self, app: WSGIApp, limit: int) -> None:
        self.app = app
        self.slots: contextlib.AbstractContextManager[object] = (
            threading.BoundedSemaphore(limit) if limit > 0 else contextlib.nullcontext()
        )

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO", "").startswith(PLATFORM_PATHS):
            yield from self.app(environ, start_response)
            return
        with self.slots:
            yield from self.app(environ, start_response)


class DrainingThreadWorker(ThreadWorker):
    """gthread worker that closes idle keep-alive connections as soon as it is told to stop.

    gunicorn's own worker keeps them until their keep-alive time runs out, which would hold a
    scale-down for ``KEEPALIVE_S`` whenever the gateway pools a connection to this replica.
    """

    def murder_keepalived(self) -> None:
        if not self.alive:
            for conn in self.keepalived_conns:
                conn.timeout = 0
        super().murder_keepalived()


class _Application(BaseApplication):  # type: ignore[misc]
    def __init__(self, build: Callable[[], WSGIApp], options: dict[str, Any]) -> None:
        self._build = build
        self._options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self._options.items():
            self.cfg.set(key, value)

    def load(self) -> WSGIApp:
        return self._build()


def server_options(
    host: str, port: int, *, concurrency: int = 0, drain_timeout_s: float = 120.0
) -> dict[str, Any]:
    """gunicorn settings of a replica (also what an image's entrypoint ends up with)."""
    threads = concurrency + SPARE_THREADS if concurrency > 0 else 32
    return {
        "bind": [f"{host}:{port}"],
        "workers": 1,
        "worker_class": DrainingThreadWorker,
        "threads": threads,
        "keepalive": KEEPALIVE_S,
        "graceful_timeout": max(1, round(drain_timeout_s)),
        # The arbiter's heartbeat: gthread's main loop beats while handler threads run, so a
        # long handler (a training trial) is never mistaken for a hung worker.
        "timeout": 60,
        "backlog": 2048,
        "accesslog": None,
        "errorlog": "-",
        "loglevel": "warning",
        "preload_app": False,
        "control_socket_disable": True,
        "proc_name": None,
    }


def serve(
    build: Callable[[], WSGIApp],
    host: str,
    port: int,
    *,
    concurrency: int = 0,
    drain_timeout_s: float = 120.0,
) -> None:
    """Serve the WSGI app ``build()`` returns until SIGTERM/SIGINT, then drain.

    ``build`` runs in the worker process; ``concurrency`` > 0 caps requests in the app.
    """

    def app() -> WSGIApp:
        return ConcurrencyLimit(build(), concurrency)

    options = server_options(host, port, concurrency=concurrency, drain_timeout_s=drain_timeout_s)
    log.info("serving on http://%s:%d (gunicorn gthread, %d threads)", host, port, options["threads"])
    _Application(app, options).run()
