"""The broker's dispatcher process: one dispatcher per trigger of the topology.

Run by the supervisor as ``python -m localdev.broker.dispatch_server --state-dir DIR``, beside
the ingress process (``localdev.broker.server``), so that accepting events and delivering them
use both cores. Each trigger's consumer runs in its own thread; every delivery runs on this
process's event loop, which also serves ``/health/readiness`` (ready once every trigger's
consumer group is initialised), ``/health/liveness``, ``/triggers`` (consumers and backlogs,
read by the autoscaler), ``POST /triggers/{name}/consumers`` (the autoscaler's KEDA decision
for that trigger) and ``/metrics``. Loopback only, like the rest of this process.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from collections.abc import Callable
from pathlib import Path

from aiohttp import web
from kafka import KafkaProducer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from localdev.aio import run_forever
from localdev.broker.delivery import Deliverer
from localdev.broker.dispatcher import BrokerTopics, TriggerDispatcher, start_dispatchers
from localdev.broker.topics import broker_ingress_url, broker_topic
from localdev.config import StackConfig
from shared.auth.bearer import bearer
from shared.auth.identity import subscription_subject
from shared.auth.local import TokenSource
from shared.topology import Topology, load_topology

log = logging.getLogger("faaspipe.dispatch")
MAX_EVENT_BYTES = int(os.environ.get("FAASPIPE_MAX_EVENT_BYTES", str(1024 * 1024)))


def _failed(dispatchers: list[TriggerDispatcher]) -> list[TriggerDispatcher]:
    return [d for d in dispatchers if d.error or (d.ready.is_set() and not d.is_alive())]


def status_app(dispatchers: list[TriggerDispatcher]) -> web.Application:
    routes = web.RouteTableDef()

    @routes.get("/health/liveness")
    async def liveness(_request: web.Request) -> web.Response:
        dead = [d.trigger.name for d in _failed(dispatchers)]
        return web.json_response(
            {"status": "failed" if dead else "alive", "failed_triggers": dead}, status=500 if dead else 200
        )

    @routes.get("/health/readiness")
    async def readiness(_request: web.Request) -> web.Response:
        triggers = {
            d.trigger.name: ("failed: " + d.error)
            if d.error
            else ("ready" if d.ready.is_set() else "starting")
            for d in dispatchers
        }
        ready = all(d.ready.is_set() for d in dispatchers) and not _failed(dispatchers)
        return web.json_response(
            {"status": "ready" if ready else "starting", "triggers": triggers}, status=200 if ready else 503
        )

    @routes.get("/triggers")
    async def backlog(_request: web.Request) -> web.Response:
        return web.json_response({d.trigger.name: d.backlog() for d in dispatchers})

    @routes.post("/triggers/{name}/consumers")
    async def scale(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        found = [d for d in dispatchers if d.trigger.name == name]
        if not found:
            return web.json_response({"error": f"no trigger {name!r}"}, status=404)
        try:
            count = int((await request.json())["consumers"])
            found[0].set_consumers(count)
        except (KeyError, TypeError, ValueError) as exc:
            return web.json_response({"error": f'body must be {{"consumers": n >= 0}}: {exc}'}, status=400)
        return web.json_response(found[0].backlog())

    @routes.get("/metrics")
    async def metrics(_request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.add_routes(routes)
    return app


def subscription_authorization(
    config: StackConfig, topology: Topology
) -> Callable[[str], dict[str, str]] | None:
    """Auth on: each trigger / Kafka source sends with its own OIDC identity (shared/auth)."""
    if not config.auth.enabled:
        return None
    key = config.auth.key()
    sources = {s.name: TokenSource(key, subscription_subject(s)) for s in topology.subscriptions}
    return lambda trigger: bearer(sources[trigger].token()) if trigger in sources else {}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="faaspipe local broker: trigger dispatchers")
    parser.add_argument("--state-dir", required=True, type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=os.environ.get("FAASPIPE_LOG_LEVEL", "INFO"),
        format="%(asctime)s dispatcher %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("kafka").setLevel(logging.WARNING)
    config = StackConfig.load(args.state_dir)
    topology = load_topology(config.function_dirs)
    producer = KafkaProducer(  # dead letters
        bootstrap_servers=config.kafka_bootstrap,
        acks="all",
        linger_ms=1,
        retries=5,
        max_request_size=MAX_EVENT_BYTES + 64 * 1024,
    )
    authorization = subscription_authorization(config, topology)
    # per broker: its topic, which its triggers read, and its ingress, where their replies go
    # (Knative sends a trigger's replies back to its broker); Kafka sources read their own topic
    brokers = {
        name: (
            BrokerTopics(config.kafka_bootstrap, broker_topic(config, b), config.dlq_topic),
            Deliverer(broker_ingress_url(config, b), authorization),
        )
        for name, b in topology.brokers.items()
    }
    dispatchers: list[TriggerDispatcher] = []
    stopping = asyncio.Event()

    async def watchdog() -> None:
        """Exit (the supervisor restarts us) if a trigger's consumer dies, but not while
        stopping: the consumers then end one by one as they drain."""
        while not stopping.is_set():
            failed = _failed(dispatchers)
            if failed:
                for d in failed:
                    log.error("trigger %s failed: %s; exiting to be restarted", d.trigger.name, d.error)
                os._exit(3)
            await asyncio.sleep(0.2)

    async def on_start() -> None:
        loop = asyncio.get_running_loop()
        for name, (topics, deliverer) in brokers.items():
            await deliverer.open()
            dispatchers.extend(
                start_dispatchers(
                    [s for s in topology.subscriptions if s.broker == name],
                    lambda t: config.function_url(t.function).rstrip("/") + (t.path or "/"),
                    topics,
                    deliverer,
                    producer,
                    loop,
                    lambda t: topology.functions[t.function].scaling.min_replicas,
                )
            )
        loop.create_task(watchdog())

    async def on_stop() -> None:
        stopping.set()
        for d in dispatchers:
            d.stop()
        for watcher in {d.watcher for d in dispatchers if d.watcher is not None}:
            watcher.stop()
        loop = asyncio.get_running_loop()
        # the consumer threads drain (await their deliveries on this loop), then commit
        await loop.run_in_executor(None, lambda: [d.join(timeout=30) for d in dispatchers])
        for _topics, deliverer in brokers.values():
            await deliverer.close()
        producer.flush(5)
        producer.close(5)

    app = status_app(dispatchers)
    run_forever([(app, "127.0.0.1", config.ports["dispatcher"])], on_start=on_start, on_stop=on_stop)


if __name__ == "__main__":
    main()
