"""The production server of a gRPC function replica (``python -m shared.runtime --kind grpc``).

A gRPC function module exposes ``register(server)`` (adds its servicers) and an optional
``init()``. ``init`` runs first and the port is bound only after it: a replica whose port
accepts connections is ready, which is what Knative's default TCP probe and the localdev
supervisor check. Prometheus metrics are served on ``metrics_port`` when one is given.

- ``concurrency`` > 0 caps the RPCs handled at once (Knative's ``containerConcurrency``); the
  rest wait in gRPC's queue.
- SIGTERM drains: the port stops accepting calls, calls in flight finish within
  ``drain_timeout_s``.
"""

from __future__ import annotations

import logging
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from types import ModuleType

import grpc
from prometheus_client import start_http_server

log = logging.getLogger("faaspipe.server")

MAX_MESSAGE_BYTES = 8 * 1024 * 1024  # as predict's REST body limit
DEFAULT_THREADS = 16


def build_server(module: ModuleType, host: str, port: int, *, concurrency: int = 0) -> grpc.Server:
    """A started-not gRPC server with ``module``'s services, bound to ``host:port``."""
    threads = concurrency if concurrency > 0 else DEFAULT_THREADS
    server = grpc.server(
        ThreadPoolExecutor(max_workers=threads, thread_name_prefix="grpc"),
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),  # two replicas must never share a port
        ],
    )
    module.register(server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"could not bind the gRPC port {host}:{port}")
    return server


def serve_grpc(
    module: ModuleType,
    host: str,
    port: int,
    *,
    concurrency: int = 0,
    metrics_port: int = 0,
    drain_timeout_s: float = 120.0,
) -> None:
    """Run ``module``'s ``init``, then serve its gRPC services until SIGTERM/SIGINT, then drain."""
    if metrics_port:
        start_http_server(metrics_port, addr=host)
    init = getattr(module, "init", None)
    if init is not None:
        init()
    server = build_server(module, host, port, concurrency=concurrency)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    server.start()
    log.info("serving gRPC on %s:%d (%s threads)", host, port, concurrency or DEFAULT_THREADS)
    stop.wait()
    log.info("draining gRPC calls (up to %.0fs)", drain_timeout_s)
    server.stop(grace=drain_timeout_s).wait()
