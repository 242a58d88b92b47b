"""The function runtime: serves a plain Python handler over HTTP (Flask on gunicorn).

An *event* function is a module with ``handle(event) -> CloudEvent | None`` and an optional
``init()`` (load a model, open clients) run before the replica reports ready. An *http*
function exposes ``create_app() -> Flask``; the runtime adds the platform routes to it. A
*grpc* function exposes ``register(server)`` and is served by ``shared/grpc_server.py``.

Contract (Knative Serving / Eventing):
- ``POST /`` takes a CloudEvent in binary or structured mode; the reply event, if any, is
  returned in binary mode with 200, otherwise 202 with an empty body.
- Not a CloudEvent, an unknown ``dev.faaspipe.*`` type or catalogue data breaking its
  schema → 400 with a JSON error; other types are admitted (``events.admission``).
- ``EventRejected`` from the handler → 422 (not retried: dead-lettered at once).
- Any other exception → 500 (the broker retries with backoff, then dead-letters).
- A duplicate of an event still being processed elsewhere → 409 (retried later).
- ``/health/readiness`` (503 until ``init`` finished), ``/health/liveness``, ``/metrics``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from types import ModuleType

from flask import Flask, Response, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest

from events import EventDataError, UnknownEventType
from events.admission import admit, strict_types_from_env
from shared import tracing
from shared.cloudevents_io import CloudEvent, InvalidCloudEvent, parse_http, to_http, with_attributes
from shared.errors import EventRejected
from shared.server import serve

log = logging.getLogger("faaspipe.runtime")

Handler = Callable[[CloudEvent], "CloudEvent | None"]
MAX_BODY_BYTES = int(os.environ.get("FAASPIPE_MAX_EVENT_BYTES", str(1024 * 1024)))

EVENTS = Counter("faaspipe_function_events_total", "Events handled", ["function", "type", "outcome"])
LATENCY = Histogram(
    "faaspipe_function_handler_seconds",
    "Handler duration",
    ["function"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)


class Readiness:
    """Tracks a replica's start-up: ready once ``init`` has run without error."""

    def __init__(self) -> None:
        self.ready = threading.Event()
        self.error: str | None = None

    def run_init(self, init: Callable[[], None] | None) -> None:
        try:
            if init is not None:
                init()
            self.ready.set()
        except Exception as exc:  # noqa: BLE001 - reported on the readiness route
            log.exception("init failed")
            self.error = f"{type(exc).__name__}: {exc}"


def add_platform_routes(app: Flask, name: str, readiness: Readiness) -> None:
    """Health and metrics routes shared by every long-running faaspipe process."""

    @app.get("/health/liveness")
    def liveness() -> tuple[Response, int]:
        if readiness.error:
            return jsonify(status="failed", function=name, error=readiness.error), 500
        return jsonify(status="alive", function=name), 200

    @app.get("/health/readiness")
    def readiness_route() -> tuple[Response, int]:
        if readiness.ready.is_set():
            return jsonify(status="ready", function=name), 200
        return jsonify(
            status="starting" if not readiness.error else "failed", function=name, error=readiness.error
        ), 503

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(), mimetype=CONTENT_TYPE_LATEST)


def _error(status: int, message: str, **extra: object) -> tuple[Response, int]:
    return jsonify(error=message, **extra), status


def _open_idempotency_store(function: str):  # type: ignore[no-untyped-def]
    """The function's view of the shared idempotency store (dedupe is per subscriber)."""
    url = os.environ.get("FAASPIPE_IDEMPOTENCY_URL")
    if not url:
        return None
    from shared.idempotency import NamespacedStore, open_store

    return NamespacedStore(open_store(url), function)


def create_event_app(name: str, handler: Handler, readiness: Readiness, store=None) -> Flask:  # type: ignore[no-untyped-def]
    """The Flask app serving an event handler (see module docstring for the contract)."""
    app = Flask(name)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    strict_types = strict_types_from_env()
    add_platform_routes(app, name, readiness)
    call = handler
    if store is not None:
        from shared.cloudevents_io import JSON_FORMAT, from_json_bytes
        from shared.idempotency import DuplicateInFlight, run_once

        def call(event: CloudEvent) -> CloudEvent | None:
            return run_once(
                store, event, handler, encode_reply=JSON_FORMAT.write, decode_reply=from_json_bytes
            )
    else:
        DuplicateInFlight = ()  # type: ignore[assignment]  # noqa: N806

    @app.post("/")
    def receive() -> tuple[Response, int] | Response:
        if not readiness.ready.is_set():
            return _error(503, f"function {name} is not ready yet")
        try:
            event = parse_http(request.headers, request.get_data())
            admit(event, strict_types=strict_types)
        except InvalidCloudEvent as exc:
            EVENTS.labels(name, "invalid", "bad_request").inc()
            return jsonify(exc.as_dict()), 400
        except (UnknownEventType, EventDataError) as exc:
            EVENTS.labels(name, "invalid", "bad_request").inc()
            return _error(400, str(exc), field=getattr(exc, "field", None))
        event_type = event.get_type()
        started = time.perf_counter()
        try:
            reply = call(event)
        except DuplicateInFlight as exc:  # type: ignore[misc]
            EVENTS.labels(name, event_type, "in_flight").inc()
            return _error(409, str(exc) or "duplicate event is being processed")
        except EventRejected as exc:
            EVENTS.labels(name, event_type, "rejected").inc()
            return _error(422, str(exc))
        except Exception as exc:  # noqa: BLE001 - the broker retries / dead-letters
            log.exception("handler failed for event %s", event.get_id())
            EVENTS.labels(name, event_type, "error").inc()
            return _error(500, f"{type(exc).__name__}: {exc}")
        finally:
            LATENCY.labels(name).observe(time.perf_counter() - started)
        if reply is None:
            EVENTS.labels(name, event_type, "ok").inc()
            return Response(status=202)
        if not reply.get_extension("traceparent"):
            reply = with_attributes(reply, traceparent=tracing.child_of(event.get_extension("traceparent")))
        try:
            admit(reply, strict_types=strict_types)
        except (UnknownEventType, EventDataError) as exc:
            EVENTS.labels(name, event_type, "bad_reply").inc()
            return _error(500, f"handler reply is invalid: {exc}", field=getattr(exc, "field", None))
        EVENTS.labels(name, event_type, "ok").inc()
        headers, body = to_http(reply)
        return Response(body, status=200, headers=headers)

    return app


def load_app(name: str, module: ModuleType, kind: str) -> tuple[Flask, Readiness]:
    """Build the app of a function module; start its ``init`` in the background."""
    readiness = Readiness()
    init = getattr(module, "init", None)
    if kind == "event":
        app = create_event_app(name, module.handle, readiness, _open_idempotency_store(name))
    else:
        app = module.create_app()
        add_platform_routes(app, name, readiness)
    threading.Thread(target=readiness.run_init, args=(init,), name="init", daemon=True).start()
    return app, readiness


def main(argv: list[str] | None = None) -> None:
    # Run as ``python -m shared.runtime``, this module is ``__main__``; a handler importing
    # ``shared.runtime`` (for EventRejected) must get this same module, not a second copy.
    sys.modules.setdefault("shared.runtime", sys.modules[__name__])
    parser = argparse.ArgumentParser(description="Run one faaspipe function replica")
    parser.add_argument("--name", required=True)
    parser.add_argument("--module", required=True, help="e.g. functions.sample.handler")
    parser.add_argument("--kind", choices=["event", "http", "source", "grpc"], default="event")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument(
        "--concurrency",
        type=int,
        default=0,
        help="requests handled at once, the rest wait (Knative's containerConcurrency; 0 = no cap). "
        "On Knative the queue-proxy enforces it, so the manifests leave it at 0.",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=0,
        help="grpc kind: serve Prometheus /metrics on this port (0 = none); other kinds serve "
        "/metrics on --port",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=os.environ.get("FAASPIPE_LOG_LEVEL", "INFO"),
        format=f"%(asctime)s {args.name} %(levelname)s %(name)s: %(message)s",
    )

    if args.kind == "grpc":  # its own server: gRPC, no WSGI (shared/grpc_server.py)
        from shared.grpc_server import serve_grpc

        module = importlib.import_module(args.module)
        serve_grpc(module, args.host, args.port, concurrency=args.concurrency, metrics_port=args.metrics_port)
        return

    def build() -> Flask:  # in the worker process, after the fork
        app, _ = load_app(args.name, importlib.import_module(args.module), args.kind)
        return app

    serve(build, args.host, args.port, concurrency=args.concurrency)


if __name__ == "__main__":
    main()
