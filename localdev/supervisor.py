"""The localdev supervisor: starts, health-checks, restarts and stops every component.

Runs detached (``faaspipe up`` spawns it) and serves a small control API on the
``supervisor`` port (``GET /status``, ``POST /shutdown``, ``GET /metrics``, ``POST /scale``)
on the gateway's event loop.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import io
import logging
import os
import signal
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web
from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError
from minio import Minio
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, generate_latest

from localdev import components
from localdev.autoscaler import Autoscaler, LagReader
from localdev.broker.topics import broker_topic, subscription_topics
from localdev.config import StackConfig
from localdev.gateway import Gateway
from localdev.grpc_front import GrpcFront
from localdev.processes import Child, kill_leftovers, pick_port
from localdev.zygote.forked import ForkedProcess
from localdev.zygote.pool import ZygotePool
from shared.auth import AuthError, Forbidden
from shared.auth.bearer import authenticate
from shared.auth.identity import is_admin
from shared.topology import Function, load_topology

log = logging.getLogger("faaspipe.supervisor")

RESTARTS = Counter("faaspipe_supervisor_restarts_total", "Child restarts", ["component"])
READY = Gauge("faaspipe_component_ready", "1 when the component is ready", ["component"])


class StartupError(RuntimeError):
    pass


@dataclass
class FunctionReplicas:
    function: Function
    replicas: list[Child] = field(default_factory=list)

    def ready_urls(self) -> list[str]:
        return [f"http://127.0.0.1:{c.port}" for c in self.replicas if c.alive() and c.ready_cached]

    def live(self) -> list[Child]:
        """Replicas running or starting (the current replica count)."""
        return [c for c in self.replicas if c.proc is not None or c.starting]


class Supervisor:
    def __init__(self, config: StackConfig) -> None:
        self.config = config
        self.topology = load_topology(config.function_dirs)
        self.state = "starting"
        self.message = ""
        self.infra: list[Child] = []
        self.functions: dict[str, FunctionReplicas] = {
            name: FunctionReplicas(fn) for name, fn in self.topology.functions.items()
        }
        self.stopping = threading.Event()
        self.lock = threading.RLock()
        self.gateway = Gateway(
            config.ports["gateway"],
            self._ready_replicas,
            demand=self._on_demand,
            windows={
                name: (fn.scaling.window_s, fn.scaling.panic_window_s)
                for name, fn in self.topology.functions.items()
            },
            verifier=config.auth.verifier() if config.auth.enabled else None,
        )
        self.autoscaler: Autoscaler | None = None
        self.zygotes: ZygotePool | None = None
        if config.zygote == "on" and config.replicas_from == "topology":
            self.zygotes = ZygotePool(
                self.topology,
                python_for=components.python_for,
                state_dir=config.state_dir,
                logs_dir=config.logs_dir,
                env=config.function_env(),
                start_timeout_s=config.start_timeout_s,
                idle_s=config.zygote_idle_s,
            )

    def grpc_front(self) -> GrpcFront | None:
        """Start the gateway's gRPC front when a function serves gRPC."""
        routes = {
            service: name for name, fn in self.topology.functions.items() for service in fn.grpc_services
        }
        if not routes:
            return None
        front = GrpcFront(self.gateway, routes, self.config.ports["grpc"])
        front.start()
        return front

    # --- start-up --------------------------------------------------------------
    def _wait_ready(self, child: Child, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.stopping.is_set():
                raise StartupError("stopped during start-up")
            if not child.alive():
                raise StartupError(
                    f"{child.name} exited with code {child.exit_code()} during start-up; "
                    f"its log ({child.log_path}) ends with:\n{child.log_tail()}"
                )
            if child.ready():
                child.ready_cached = True
                READY.labels(child.name).set(1)
                log.info("%s ready after %.1fs", child.name, time.monotonic() - child.started_at)
                return
            time.sleep(0.1)
        raise StartupError(f"{child.name} not ready after {timeout_s:.0f}s; see {child.log_path}")

    def _start(self, child: Child, timeout_s: float) -> Child:
        child.ready_cached = False
        child.start()
        with self.lock:
            self.infra.append(child)
        self._wait_ready(child, timeout_s)
        return child

    def _create_buckets(self) -> None:
        client = Minio(
            f"127.0.0.1:{self.config.ports['s3']}",
            access_key=self.config.access_key,
            secret_key=self.config.secret_key,
            secure=False,
            region="us-east-1",
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                for bucket in self.config.buckets:
                    if not client.bucket_exists(bucket):
                        client.make_bucket(bucket)
                client.put_object("tansu", ".faaspipe-probe", io.BytesIO(b"ok"), 2)
                return
            except Exception as exc:  # noqa: BLE001 - S3 may still be warming up
                if time.monotonic() > deadline:
                    raise StartupError(f"could not create buckets: {exc}") from exc
                time.sleep(0.3)

    def _create_topics(self) -> None:
        admin = KafkaAdminClient(bootstrap_servers=self.config.kafka_bootstrap, request_timeout_ms=10000)
        try:
            wanted = {
                # one topic per broker (localdev/broker/topics.py), the default's first
                **{
                    broker_topic(self.config, b): self.config.broker_partitions
                    for b in self.topology.brokers.values()
                },
                self.config.dlq_topic: 1,
                self.config.dlq_replayed_topic: 1,
                # topics Kafka sources read directly (the prediction log)
                **dict.fromkeys(self.topology.source_topics, self.config.broker_partitions),
            }
            existing = set(admin.list_topics())
            new = [NewTopic(name, parts, 1) for name, parts in wanted.items() if name not in existing]
            if new:
                with contextlib.suppress(TopicAlreadyExistsError):
                    admin.create_topics(new)
        finally:
            admin.close()

    def _claim_replica(self, fr: FunctionReplicas) -> Child:
        """A new replica with its port claimed, counted as live; started by ``_launch``."""
        with self.lock:  # a port is chosen and claimed under the lock: two starts never share one
            index = max((int(c.name.rsplit("-", 1)[1]) for c in fr.replicas), default=-1) + 1
            taken = {c.port for f in self.functions.values() for c in f.replicas}
            port = pick_port(self.config.replica_ports, taken)
            child = components.function_replica(self.config, fr.function, index, port)
            child.ready_cached = False
            if self.zygotes is not None:
                child.forker = functools.partial(self.zygotes.fork, fr.function.environment)
            child.starting = True  # counted as live, never restarted, while it starts
            fr.replicas.append(child)
        return child

    def _launch(self, child: Child) -> Child:
        """Start a claimed replica, outside the lock: a zygote's first fork waits for its preload."""
        try:
            child.start()
        finally:
            child.starting = False
        if child.retired or self.stopping.is_set():  # scaled down or shut down while it started
            child.stop(timeout_s=15)
        return child

    def _start_replica(self, fr: FunctionReplicas) -> Child:
        return self._launch(self._claim_replica(fr))

    def start(self) -> None:
        timeout = self.config.start_timeout_s
        if self.config.auth.enabled:  # each function's own identity, before any replica starts
            self.config.auth.write_workload_tokens(self.topology)
        self._start(components.seaweedfs(self.config), 60)
        self._create_buckets()
        with ThreadPoolExecutor(3) as pool:
            kafka = pool.submit(self._start, components.tansu(self.config), 60)
            mlflow = pool.submit(self._start, components.mlflow(self.config), timeout)
            if self.zygotes is not None:  # functions start at zero: their first event forks
                pool.submit(self.zygotes.warm, {fn.environment for fn in self.topology.functions.values()})
            kafka.result()
            self._create_topics()
            starting = [
                self._start_replica(fr)
                for fr in self.functions.values()
                for _ in range(fr.function.scaling.min_replicas)
            ]
            for child in starting:
                self._wait_ready(child, timeout)
            mlflow.result()
        # triggers first: an event the ingress accepts is never older than their consumer groups
        self._start(components.dispatcher(self.config), timeout)
        self._start(components.broker(self.config), timeout)
        lag_reader = LagReader(
            self.config.kafka_bootstrap,
            subscription_topics(self.config, self.topology),
            self.config.url("dispatcher"),
        )
        self.autoscaler = Autoscaler(
            [fr.function for fr in self.functions.values()],
            self.gateway,
            lag_reader,
            current=lambda name: len(self.functions[name].live()),
            scale_to=self.scale_to,
        )
        self.autoscaler.start()

    # --- scaling -----------------------------------------------------------------
    def _on_demand(self, function: str) -> None:
        """The activator got a request for a function with no ready replica: make sure one starts."""
        fr = self.functions[function]
        with self.lock:
            if fr.live() or self.stopping.is_set():
                return
            log.info("%s: activated by a request (scale from zero)", function)
            child = self._claim_replica(fr)
        self._launch(child)

    def scale_to(self, function: str, count: int, reason: str) -> None:
        fr = self.functions[function]
        with self.lock:
            live = fr.live()
            new = [self._claim_replica(fr) for _ in range(count - len(live))]
            surplus = live[count:] if count < len(live) else []
            for child in surplus:
                child.retired = True
                fr.replicas.remove(child)  # no longer routed to, never restarted
        for child in new:  # the autoscaler decides on: a fork waiting on a zygote holds only this
            threading.Thread(
                target=self._launch, args=(child,), name=f"launch-{child.name}", daemon=True
            ).start()
        for child in surplus:
            threading.Thread(target=self._drain, args=(child,), daemon=True).start()

    def _drain(self, child: Child) -> None:
        """Stop a replica gracefully: it is out of the routing table; in-flight requests finish."""
        time.sleep(0.5)
        child.stop(timeout_s=60)
        READY.labels(child.name).set(0)
        log.info("%s drained and stopped", child.name)

    # --- running -----------------------------------------------------------------
    def _ready_replicas(self, function: str) -> list[str] | None:
        fr = self.functions.get(function)
        if fr is None:
            return None
        with self.lock:
            return fr.ready_urls()

    def _check(self, child: Child) -> bool:
        """Restart a dead child (with backoff); refresh its readiness. True if healthy."""
        if child.retired or child.starting:
            return False
        if child.alive():
            if not child.ready_cached:
                child.ready_cached = child.ready()
            READY.labels(child.name).set(1 if child.ready_cached else 0)
            return True
        READY.labels(child.name).set(0)
        child.ready_cached = False
        backoff = min(30.0, 2.0 ** min(child.restarts, 5))
        if time.monotonic() - child.started_at < backoff:
            return False
        log.warning(
            "%s exited with code %s; restarting (restart #%d)",
            child.name,
            child.exit_code(),
            child.restarts + 1,
        )
        child.restarts += 1
        RESTARTS.labels(child.name).inc()
        child.start()
        return False

    def run(self) -> None:
        while not self.stopping.wait(0.1):
            with self.lock:
                children = list(self.infra) + [c for fr in self.functions.values() for c in fr.replicas]
            for child in children:
                self._check(child)
            if self.zygotes is not None:
                self.zygotes.idle_out()

    def shutdown(self) -> None:
        self.state = "stopping"
        self.stopping.set()
        if self.autoscaler is not None:
            self.autoscaler.stop_event.set()
        with self.lock:
            replicas = [c for fr in self.functions.values() for c in fr.replicas]
            infra = list(self.infra)
        broker = [c for c in infra if c.name in ("broker", "dispatcher")]
        for child in broker:  # stop accepting, then consuming, then functions, then infrastructure
            child.stop(30)
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda c: c.stop(15), replicas))
        if self.zygotes is not None:
            self.zygotes.stop()
        for child in reversed([c for c in infra if c not in broker]):
            child.stop(15)

    # --- status ------------------------------------------------------------------
    def status(self) -> dict[str, object]:
        def describe(child: Child, url: str | None = None) -> dict[str, object]:
            state = (
                "ready"
                if child.alive() and child.ready_cached
                else ("starting" if child.alive() or child.starting else "down")
            )
            return {
                "name": child.name,
                "pid": child.proc.pid if child.proc else None,
                "state": state,
                "forked": isinstance(child.proc, ForkedProcess),
                "restarts": child.restarts,
                "log": str(child.log_path),
                **({"url": url} if url else {}),
            }

        urls = {
            "seaweedfs": self.config.s3_endpoint,
            "kafka": self.config.kafka_bootstrap,
            "mlflow": self.config.url("mlflow"),
            "broker": self.config.ingress_url,
            "dispatcher": self.config.url("dispatcher"),
        }
        with self.lock:
            infra = [describe(c, urls.get(c.name)) for c in self.infra]
            functions = {
                name: {
                    "url": self.config.function_url(name),
                    "kind": fr.function.kind,
                    "environment": fr.function.environment,
                    "min_replicas": fr.function.scaling.min_replicas,
                    "max_replicas": fr.function.scaling.max_replicas,
                    "replicas": [describe(c, f"http://127.0.0.1:{c.port}") for c in fr.replicas],
                    "triggers": [t.name for t in fr.function.subscriptions],
                    "scaling": self.autoscaler.status(name) if self.autoscaler else {},
                }
                for name, fr in self.functions.items()
            }
        return {
            "state": self.state,
            "message": self.message,
            "pid": os.getpid(),
            "state_dir": str(self.config.state_dir),
            "components": infra,
            "functions": functions,
            "zygotes": self.zygotes.status() if self.zygotes is not None else {},
            "endpoints": {
                **urls,
                "gateway": self.config.url("gateway"),
                "grpc": f"127.0.0.1:{self.config.ports['grpc']}",
                "supervisor": self.config.url("supervisor"),
            },
        }


def control_app(sup: Supervisor) -> web.Application:
    """The control API: ``GET /status``, ``GET /metrics``, ``POST /shutdown``,
    ``POST /scale/<function>/<replicas>`` (served on the gateway's event loop).

    With auth on every route needs a bearer token (401 without a valid one) of an admin subject,
    a person (``user:…``): a workload's token is refused (403)."""
    routes = web.RouteTableDef()
    verifier = sup.config.auth.verifier() if sup.config.auth.enabled else None

    @web.middleware
    async def admin_only(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if verifier is not None:
            try:
                claims = authenticate(request.headers, verifier)
                if not is_admin(claims.sub):
                    raise Forbidden(
                        f"subject {claims.sub!r} may not use the control API (user: subjects may)"
                    )
            except AuthError as exc:
                return web.json_response(
                    {"error": str(exc)}, status=exc.status, headers={"WWW-Authenticate": "Bearer"}
                )
        return await handler(request)

    def blocking(call: Callable[[], object]) -> Awaitable[object]:
        return asyncio.get_running_loop().run_in_executor(None, call)

    @routes.get("/status")
    async def status(_request: web.Request) -> web.Response:
        return web.json_response(await blocking(sup.status))

    @routes.get("/metrics")
    async def metrics(_request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    @routes.post("/shutdown")
    async def shutdown(_request: web.Request) -> web.Response:
        asyncio.get_running_loop().call_later(0.05, os.kill, os.getpid(), signal.SIGTERM)
        return web.json_response({"status": "stopping"}, status=202)

    @routes.post("/scale/{function}/{count}")
    async def scale(request: web.Request) -> web.Response:
        # manual scale, like `kubectl scale`: the autoscaler decides again on its next poll
        function, count = request.match_info["function"], request.match_info["count"]
        if function not in sup.functions or not count.isdigit():
            return web.json_response({"error": "POST /scale/<function>/<replicas>"}, status=400)
        await blocking(lambda: sup.scale_to(function, int(count), "manual (faaspipe scale)"))
        return web.json_response({"function": function, "replicas": int(count)}, status=202)

    app = web.Application(middlewares=[admin_only])
    app.add_routes(routes)
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="faaspipe localdev supervisor (started by `faaspipe up`)")
    parser.add_argument("--state-dir", required=True, type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s supervisor %(levelname)s: %(message)s")
    logging.getLogger("kafka").setLevel(logging.WARNING)
    config = StackConfig.load(args.state_dir)
    kill_leftovers(config.state_dir / "pids")
    sup = Supervisor(config)
    (config.state_dir / "supervisor.pid").write_text(str(os.getpid()))
    sup.gateway.start([(control_app(sup), "127.0.0.1", config.ports["supervisor"])])
    grpc_front = sup.grpc_front()
    signal.signal(signal.SIGTERM, lambda *_: sup.stopping.set())
    signal.signal(signal.SIGINT, lambda *_: sup.stopping.set())
    code = 0
    try:
        sup.start()
        sup.state = "running"
        log.info("stack running")
        sup.run()
    except StartupError as exc:
        sup.state, sup.message = "failed", str(exc)
        log.error("start-up failed: %s", exc)
        code = 1
        time.sleep(2)  # let `faaspipe up` read the failure from /status
    finally:
        sup.shutdown()
        if grpc_front is not None:
            grpc_front.stop()
        sup.gateway.stop()
        (config.state_dir / "supervisor.pid").unlink(missing_ok=True)
        log.info("stopped")
    raise SystemExit(code)


if __name__ == "__main__":
    main()
