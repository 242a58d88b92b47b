"""The local broker process: ingress + one dispatcher per trigger of the topology.

Run by the supervisor as ``python -m localdev.broker.server --state-dir DIR``.
"""

from __future__ import annotations

import argparse
import logging
import os
import threading
import time
from pathlib import Path

from flask import Response, jsonify
from kafka import KafkaProducer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from localdev.broker.delivery import Deliverer
from localdev.broker.dispatcher import BrokerTopics, start_dispatchers
from localdev.broker.ingress import create_ingress_app
from localdev.config import StackConfig
from localdev.topology import load_topology
from shared.runtime import serve

log = logging.getLogger("faaspipe.broker")
MAX_EVENT_BYTES = int(os.environ.get("FAASPIPE_MAX_EVENT_BYTES", str(1024 * 1024)))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="faaspipe local broker (ingress + trigger dispatchers)")
    parser.add_argument("--state-dir", required=True, type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=os.environ.get("FAASPIPE_LOG_LEVEL", "INFO"),
        format="%(asctime)s broker %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("kafka").setLevel(logging.WARNING)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    config = StackConfig.load(args.state_dir)
    topology = load_topology(config.function_dirs)

    producer = KafkaProducer(
        bootstrap_servers=config.kafka_bootstrap,
        acks="all",
        linger_ms=1,
        retries=5,
        max_request_size=MAX_EVENT_BYTES + 64 * 1024,
    )
    topics = BrokerTopics(config.kafka_bootstrap, config.broker_topic, config.dlq_topic)
    deliverer = Deliverer(config.ingress_url, pool_size=64)
    dispatchers = start_dispatchers(
        topology.subscriptions, lambda t: config.function_url(t.function), topics, deliverer, producer
    )
    ready = threading.Event()

    def watchdog() -> None:
        """Ready once every trigger is; exit (the supervisor restarts us) if one dies."""
        while True:
            failed = [d for d in dispatchers if d.error or (d.ready.is_set() and not d.is_alive())]
            if failed:
                for d in failed:
                    log.error(
                        "trigger %s failed: %s; exiting so the broker is restarted", d.trigger.name, d.error
                    )
                os._exit(3)
            if not ready.is_set() and all(d.ready.is_set() for d in dispatchers):
                ready.set()
                log.info("broker ready: %d triggers", len(dispatchers))
            time.sleep(0.2)

    threading.Thread(target=watchdog, daemon=True).start()
    app = create_ingress_app(producer, config.broker_topic, ready, MAX_EVENT_BYTES)

    @app.get("/health/liveness")
    def liveness() -> tuple[Response, int]:
        dead = [d.trigger.name for d in dispatchers if d.error or (d.ready.is_set() and not d.is_alive())]
        return jsonify(status="failed" if dead else "alive", failed_triggers=dead), 500 if dead else 200

    @app.get("/health/readiness")
    def readiness() -> tuple[Response, int]:
        triggers = {
            d.trigger.name: ("failed: " + d.error)
            if d.error
            else ("ready" if d.ready.is_set() else "starting")
            for d in dispatchers
        }
        return jsonify(status="ready" if ready.is_set() else "starting", triggers=triggers), (
            200 if ready.is_set() else 503
        )

    @app.get("/triggers")
    def backlog() -> Response:
        return jsonify({d.trigger.name: d.backlog() for d in dispatchers})

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(), mimetype=CONTENT_TYPE_LATEST)

    try:
        serve(app, "127.0.0.1", config.ports["ingress"])
    finally:
        for d in dispatchers:
            d.stop()
        for d in dispatchers:
            d.join(timeout=30)
        producer.flush(5)
        producer.close(5)


if __name__ == "__main__":
    main()
