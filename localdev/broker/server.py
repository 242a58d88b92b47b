"""The broker's ingress process: CloudEvents in over HTTP, appended to their broker's topic.

Run by the supervisor as ``python -m localdev.broker.server --state-dir DIR`` once the
dispatcher process (``localdev.broker.dispatch_server``) reports every trigger ready, so an
accepted event is never older than the consumer groups that must see it. Serves ``POST /``
(the default broker) and ``/<namespace>/<broker>`` (each broker of the topology, its own
topic; 404 for any other), ``/health/readiness``, ``/health/liveness`` and ``/metrics``.
"""

from __future__ import annotations

import argparse
import logging
import os
import threading
from pathlib import Path

from aiohttp import web
from kafka import KafkaProducer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from events.admission import strict_types_from_env
from localdev.aio import run_forever
from localdev.broker.ingress import IngressAuth, create_ingress_app
from localdev.broker.topics import ingress_routes
from localdev.config import StackConfig
from shared.topology import load_topology

log = logging.getLogger("faaspipe.broker")
MAX_EVENT_BYTES = int(os.environ.get("FAASPIPE_MAX_EVENT_BYTES", str(1024 * 1024)))
LINGER_MS = 2  # concurrent requests share a produce batch; each still waits for its own ack


def add_health_routes(app: web.Application, ready: threading.Event) -> None:
    async def liveness(_request: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})

    async def readiness(_request: web.Request) -> web.Response:
        ok = ready.is_set()
        return web.json_response({"status": "ready" if ok else "starting"}, status=200 if ok else 503)

    async def metrics(_request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app.router.add_get("/health/liveness", liveness)
    app.router.add_get("/health/readiness", readiness)
    app.router.add_get("/metrics", metrics)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="faaspipe local broker: the ingress")
    parser.add_argument("--state-dir", required=True, type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=os.environ.get("FAASPIPE_LOG_LEVEL", "INFO"),
        format="%(asctime)s broker %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("kafka").setLevel(logging.WARNING)
    config = StackConfig.load(args.state_dir)
    producer = KafkaProducer(
        bootstrap_servers=config.kafka_bootstrap,
        acks="all",
        linger_ms=LINGER_MS,
        retries=5,
        max_request_size=MAX_EVENT_BYTES + 64 * 1024,
    )
    ready = threading.Event()
    routes = ingress_routes(config, load_topology(config.function_dirs))
    app = create_ingress_app(
        producer,
        config.broker_topic,
        ready,
        MAX_EVENT_BYTES,
        strict_types=strict_types_from_env(),
        auth=IngressAuth.for_stack(config.auth.verifier(), config.function_dirs)
        if config.auth.enabled
        else None,
        routes=routes,
    )
    add_health_routes(app, ready)

    async def on_start() -> None:
        # metadata of the brokers' topics before the first request: no request pays for it
        for topic in sorted(set(routes.values())):
            producer.partitions_for(topic)
        ready.set()
        log.info("ingress ready on port %d", config.ports["ingress"])

    async def on_stop() -> None:
        producer.flush(5)
        producer.close(5)

    run_forever([(app, "127.0.0.1", config.ports["ingress"])], on_start=on_start, on_stop=on_stop)


if __name__ == "__main__":
    main()
