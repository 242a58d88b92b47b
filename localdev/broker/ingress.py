"""Broker ingress: accepts CloudEvents over HTTP and appends them to the broker topic.

An aiohttp app on one event loop. Each request gets its ``202`` only after Kafka acknowledged
its own record (acks=all), but no request holds a thread while it waits: the producer batches
the records of all concurrent requests (``linger_ms``), and each acknowledgement resolves its
request's future on the loop.

Anything that is not a valid CloudEvent is refused with a 4xx naming the problem, and never
enters the log. The event's data is appended as the exact bytes received (``wire``): the
broker never parses and re-serialises it. Types of the catalogue (``dev.faaspipe.*``) are validated against their
schema; any other valid CloudEvent is accepted, as a Knative broker accepts it, and routed by
triggers like ours, unless ``FAASPIPE_STRICT_TYPES=1`` (see :mod:`events.admission`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

from aiohttp import web
from kafka import KafkaProducer
from kafka.errors import KafkaError
from prometheus_client import Counter, Histogram

from events import EventDataError, UnknownEventType
from events.admission import admit, is_checked
from localdev.broker import wire
from shared import tracing
from shared.cloudevents_io import InvalidCloudEvent, from_kafka

log = logging.getLogger("faaspipe.ingress")

ACCEPTED = Counter("faaspipe_ingress_events_total", "Events offered to the ingress", ["outcome"])
APPEND_LATENCY = Histogram(
    "faaspipe_ingress_append_seconds",
    "Time to append an event to Kafka (acks=all)",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5),
)
PRODUCE_TIMEOUT_S = 10.0


def _refuse(status: int, outcome: str, message: str, **extra: object) -> web.Response:
    ACCEPTED.labels(outcome).inc()
    return web.json_response({"error": message, **extra}, status=status)


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
    producer: KafkaProducer, topic: str, ready: threading.Event, max_bytes: int, *, strict_types: bool
) -> web.Application:
    async def ingest(request: web.Request) -> web.Response:
        if not ready.is_set():
            return _refuse(503, "not_ready", "broker is starting: triggers are not ready yet")
        if (request.content_length or 0) > max_bytes:
            return _refuse(413, "too_large", f"event larger than the {max_bytes}-byte limit")
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _refuse(413, "too_large", f"event larger than the {max_bytes}-byte limit")
        try:
            event = wire.from_http(request.headers, body)
            foreign = True
            if is_checked(event.type, strict_types=strict_types):
                # the catalogue checks the SDK's view of a copy; what is appended is ``event``
                foreign = admit(from_kafka(*wire.to_kafka(event)), strict_types=strict_types)
        except InvalidCloudEvent as exc:
            ACCEPTED.labels("malformed").inc()
            return web.json_response(exc.as_dict(), status=400)
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
            sent = producer.send(topic, key=key, value=value, headers=headers)
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
