"""Broker ingress: accepts CloudEvents over HTTP and appends them to the broker topic.

``202`` only after Kafka acknowledged the write (acks=all). Anything that is not a valid
event of the catalogue is refused with a 4xx naming the problem, and never enters the log.
"""

from __future__ import annotations

import logging
import threading

from flask import Flask, Response, jsonify, request
from kafka import KafkaProducer
from kafka.errors import KafkaError
from prometheus_client import Counter, Histogram

from events import EventDataError, UnknownEventType, validate_event
from shared import tracing
from shared.cloudevents_io import InvalidCloudEvent, parse_http, to_kafka, with_attributes

log = logging.getLogger("faaspipe.ingress")

ACCEPTED = Counter("faaspipe_ingress_events_total", "Events offered to the ingress", ["outcome"])
APPEND_LATENCY = Histogram(
    "faaspipe_ingress_append_seconds",
    "Time to append an event to Kafka (acks=all)",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5),
)
PRODUCE_TIMEOUT_S = 10.0


def _refuse(status: int, outcome: str, message: str, **extra: object) -> tuple[Response, int]:
    ACCEPTED.labels(outcome).inc()
    return jsonify(error=message, **extra), status


def create_ingress_app(producer: KafkaProducer, topic: str, ready: threading.Event, max_bytes: int) -> Flask:
    app = Flask("faaspipe-ingress")
    app.config["MAX_CONTENT_LENGTH"] = max_bytes

    @app.errorhandler(413)
    def too_large(_exc: Exception) -> tuple[Response, int]:
        return _refuse(413, "too_large", f"event larger than the {max_bytes}-byte limit")

    @app.post("/")
    @app.post("/<namespace>/<broker>")
    def ingest(namespace: str = "default", broker: str = "default") -> tuple[Response, int] | Response:
        if not ready.is_set():
            return _refuse(503, "not_ready", "broker is starting: triggers are not ready yet")
        try:
            event = parse_http(request.headers, request.get_data())
            validate_event(event)
        except InvalidCloudEvent as exc:
            ACCEPTED.labels("malformed").inc()
            return jsonify(exc.as_dict()), 400
        except UnknownEventType as exc:
            return _refuse(400, "unknown_type", str(exc))
        except EventDataError as exc:
            return _refuse(400, "invalid_data", str(exc), field=exc.field)
        if not tracing.is_valid(event.get_extension("traceparent")):
            event = with_attributes(event, traceparent=tracing.new_traceparent())
        key, headers, value = to_kafka(event)
        try:
            with APPEND_LATENCY.time():
                producer.send(topic, key=key, value=value, headers=headers).get(timeout=PRODUCE_TIMEOUT_S)
        except KafkaError as exc:
            log.error("append of event %s failed: %s", event.get_id(), exc)
            return _refuse(503, "kafka_error", f"event log unavailable, retry later: {exc}")
        ACCEPTED.labels("accepted").inc()
        return Response(status=202)

    return app
