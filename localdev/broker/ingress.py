"""Broker ingress: accepts CloudEvents over HTTP and appends them to their broker's topic.

``POST /<namespace>/<broker>`` appends to that broker's topic (:mod:`localdev.broker.topics`),
``POST /`` to the default broker's; a broker the topology does not declare is ``404``, as
Knative's broker ingress answers for an unknown broker, before anything else is checked.

An aiohttp app on one event loop. Each request gets its ``202`` only after Kafka acknowledged
its own record (acks=all), but no request holds a thread while it waits: the producer batches
the records of all concurrent requests (``linger_ms``), and each acknowledgement resolves its
request's future on the loop.

Anything that is not a valid CloudEvent is refused with a 4xx naming the problem, and never
enters the log. The event's data is appended as the exact bytes received (``wire``): the
broker never parses and re-serialises it. Types of the catalogue (``dev.faaspipe.*``) are validated against their
schema; any other valid CloudEvent is accepted, as a Knative broker accepts it, and routed by
triggers like ours, unless ``FAASPIPE_STRICT_TYPES=1`` (see :mod:`events.admission`).

With auth on (:class:`IngressAuth`, ``FAASPIPE_AUTH``), the ingress checks each request as
Knative's broker ingress does with ``authentication-oidc`` enabled (eventing
``pkg/auth/verifier.go``): no or an invalid bearer token is ``401``; a subject that no
EventPolicy allows to post this event (type, source, ...: the policy's filters) is ``403``;
either way nothing enters the log, and the refusal is counted under its outcome. The
EventPolicies are the default broker's (rendered ``to`` it); another broker has none, so
Knative's default authorization mode decides for it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from kafka import KafkaProducer
from kafka.errors import KafkaError
from prometheus_client import Counter, Histogram

from events import EventDataError, UnknownEventType
from events.admission import admit, is_checked
from localdev.broker import wire
from shared import tracing
from shared.auth import AuthError
from shared.auth.bearer import authenticate
from shared.auth.pipeline import pipeline_policies
from shared.auth.policy import DEFAULT_MODE, EventPolicy, authorize
from shared.auth.tokens import Claims, TokenVerifier
from shared.cloudevents_io import InvalidCloudEvent, from_kafka
from shared.topology import DEFAULT_BROKER, DEFAULT_NAMESPACE, load_topology

log = logging.getLogger("faaspipe.ingress")

ACCEPTED = Counter("faaspipe_ingress_events_total", "Events offered to the ingress", ["outcome"])
APPEND_LATENCY = Histogram(
    "faaspipe_ingress_append_seconds",
    "Time to append an event to Kafka (acks=all)",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5),
)
PRODUCE_TIMEOUT_S = 10.0


def _refuse(
    status: int, outcome: str, message: str, headers: dict[str, str] | None = None, **extra: object
) -> web.Response:
    ACCEPTED.labels(outcome).inc()
    return web.json_response({"error": message, **extra}, status=status, headers=headers)


@dataclass(frozen=True)
class IngressAuth:
    """Who may post what: the token verifier, the broker's EventPolicies and the default mode."""

    verifier: TokenVerifier
    policies: tuple[EventPolicy, ...]
    default_mode: str = DEFAULT_MODE

    @classmethod
    def for_stack(cls, verifier: TokenVerifier, function_dirs: Sequence[Path]) -> IngressAuth:
        """The policies the topology implies (the same ones ``faaspipe render`` writes)."""
        return cls(verifier, tuple(pipeline_policies(load_topology(function_dirs))))

    def authenticate(self, headers: Any) -> Claims:
        return authenticate(headers, self.verifier)

    def authorize(self, claims: Claims, event: wire.WireEvent, *, default_broker: bool = True) -> None:
        policies = self.policies if default_broker else ()
        authorize(claims.sub, event.attributes, policies, default_mode=self.default_mode)


def acknowledged(send_future: Any, loop: asyncio.AbstractEventLoop) -> asyncio.Future[Any]:
    """An asyncio future resolved when kafka-python's ``send`` future is (from its I/O thread)."""
    done: asyncio.Future[Any] = loop.create_future()

    def settle(value: Any, error: BaseException | None) -> None:
        if done.done():
            return
        if error is not None:
            done.set_exception(error)
        else:
            done.set_result(value)

    send_future.add_callback(lambda metadata: loop.call_soon_threadsafe(settle, metadata, None))
    send_future.add_errback(lambda exc: loop.call_soon_threadsafe(settle, None, exc))
    return done


def create_ingress_app(
    producer: KafkaProducer,
    topic: str,
    ready: threading.Event,
    max_bytes: int,
    *,
    strict_types: bool,
    auth: IngressAuth | None = None,
    routes: Mapping[tuple[str, str], str] | None = None,
) -> web.Application:
    """``topic``: the default broker's (``POST /``); ``routes``: ``(namespace, broker)`` → topic
    of every broker, the default's included (None: the default broker only). ``auth`` None:
    no authentication (the loopback default)."""
    brokers = dict(routes) if routes is not None else {(DEFAULT_NAMESPACE, DEFAULT_BROKER): topic}

    async def ingest(request: web.Request) -> web.Response:
        namespace, name = request.match_info.get("namespace"), request.match_info.get("broker")
        target = topic if namespace is None else brokers.get((namespace, str(name)))
        if target is None:
            return _refuse(404, "unknown_broker", f"no broker {namespace}/{name}")
        if not ready.is_set():
            return _refuse(503, "not_ready", "broker is starting: triggers are not ready yet")
        claims = None
        if auth is not None:
            try:  # authentication first, before the body is read (Knative: 401 whatever the event)
                claims = auth.authenticate(request.headers)
            except AuthError as exc:
                return _refuse(exc.status, exc.outcome, str(exc), headers={"WWW-Authenticate": "Bearer"})
        if (request.content_length or 0) > max_bytes:
            return _refuse(413, "too_large", f"event larger than the {max_bytes}-byte limit")
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _refuse(413, "too_large", f"event larger than the {max_bytes}-byte limit")
        try:
            event = wire.from_http(request.headers, body)
            if auth is not None and claims is not None:  # who may post it, before what it says
                auth.authorize(claims, event, default_broker=target == topic)
            foreign = True
            if is_checked(event.type, strict_types=strict_types):
                # the catalogue checks the SDK's view of a copy; what is appended is ``event``
                foreign = admit(from_kafka(*wire.to_kafka(event)), strict_types=strict_types)
        except InvalidCloudEvent as exc:
            ACCEPTED.labels("malformed").inc()
            return web.json_response(exc.as_dict(), status=400)
        except AuthError as exc:
            subject = claims.sub if claims is not None else None
            log.warning("refused an event from %s: %s", subject, exc)
            return _refuse(exc.status, exc.outcome, str(exc), subject=subject)
        except UnknownEventType as exc:
            return _refuse(400, "unknown_type", str(exc))
        except EventDataError as exc:
            return _refuse(400, "invalid_data", str(exc), field=exc.field)
        if foreign:
            log.info("accepted event %s of a type outside the catalogue: %s", event.id, event.type)
        if not tracing.is_valid(event.get("traceparent")):
            event = event.with_attributes(traceparent=tracing.new_traceparent())
        key, headers, value = wire.to_kafka(event)
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            sent = producer.send(target, key=key, value=value, headers=headers)
            await asyncio.wait_for(acknowledged(sent, loop), PRODUCE_TIMEOUT_S)
        except (KafkaError, TimeoutError) as exc:
            log.error("append of event %s failed: %s", event.id, exc)
            return _refuse(503, "kafka_error", f"event log unavailable, retry later: {exc or 'timeout'}")
        APPEND_LATENCY.observe(loop.time() - started)
        ACCEPTED.labels("accepted").inc()
        return web.Response(status=202)

    app = web.Application(client_max_size=max_bytes)
    app.router.add_post("/", ingest)
    app.router.add_post("/{namespace}/{broker}", ingest)
    return app
