"""The object-events source: ``POST /`` an object-storage notification, get CloudEvents on the broker.

Accepts SeaweedFS filer webhooks and S3/MinIO bucket notifications (see ``mapping``), turns every
new object version into a ``dev.faaspipe.object.created.v1`` event and posts it to ``K_SINK`` (the
broker ingress) in binary content mode.

Replies, so that the notifier retries exactly when it should:

- 200 ``{"accepted": n, "ignored": m}``: every event was accepted by the sink (or there was none).
- 400 ``{"error": ...}``: the body is not JSON or not a notification (retrying will not help).
- 502 ``{"error": ...}``: the sink rejected an event with a 4xx: a bug on our side, logged.
- 503 ``{"error": ...}``: the sink is unreachable or kept failing: the notifier should retry.
  Events already accepted are sent again then; the broker dedupes them on ``source`` + ``id``.

``FAASPIPE_OBJECT_EVENTS_BUCKETS`` (comma-separated) restricts the buckets; empty = all.
The runtime adds ``/health/*`` and ``/metrics``.
"""

from __future__ import annotations

import json
import logging
import os
import time

import urllib3
from flask import Flask, Response, jsonify, request
from prometheus_client import Counter

from functions.object_events.mapping import MappingResult, NotANotification, Skipped, map_notification
from shared import tracing
from shared.auth.bearer import own_authorization
from shared.cloudevents_io import CloudEvent, to_http, with_attributes
from shared.settings import sink_url

log = logging.getLogger("faaspipe.object_events")

BUCKETS_ENV = "FAASPIPE_OBJECT_EVENTS_BUCKETS"
MAX_BODY_BYTES = 8 * 1024 * 1024
SINK_TIMEOUT_S = 10.0
SINK_ATTEMPTS = 3
SINK_BACKOFF_S = 0.2  # doubled after each failed attempt
RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})

_http = urllib3.PoolManager(
    num_pools=2, maxsize=8, retries=False, timeout=urllib3.Timeout(total=SINK_TIMEOUT_S)
)

NOTIFICATIONS = Counter(
    "faaspipe_object_events_notifications_total",
    "Object-storage notifications received",
    ["format", "outcome"],
)
EMITTED = Counter(
    "faaspipe_object_events_emitted_total", "object.created events accepted by the sink", ["origin"]
)
IGNORED = Counter("faaspipe_object_events_ignored_total", "Changes that produced no event", ["reason"])
FAILED = Counter("faaspipe_object_events_failed_total", "Events the sink did not accept", ["reason"])


class SinkRejected(Exception):
    """The sink answered 4xx: the event (or our request) is wrong; retrying cannot help."""


class SinkUnavailable(Exception):
    """The sink was unreachable or answered 5xx/429 on every attempt."""


def allowed_buckets() -> frozenset[str]:
    raw = os.environ.get(BUCKETS_ENV, "")
    return frozenset(b.strip() for b in raw.split(",") if b.strip())


def _error_text(response: urllib3.BaseHTTPResponse) -> str:
    body = response.data[:500].decode("utf-8", "replace").strip()
    try:
        doc = json.loads(body)
        if isinstance(doc, dict) and "error" in doc:
            body = str(doc["error"])
    except ValueError:
        pass
    return f"HTTP {response.status}" + (f": {body}" if body else "")


def send(event: CloudEvent, url: str) -> None:
    """POST one event in binary mode; retries connection errors, 5xx and 429 with backoff."""
    headers, body = to_http(event)
    headers.update(own_authorization())  # the source's own identity (shared/auth), when it has one
    problem = ""
    for attempt in range(1, SINK_ATTEMPTS + 1):
        if attempt > 1:
            time.sleep(SINK_BACKOFF_S * 2 ** (attempt - 2))
        try:
            response = _http.request("POST", url, body=body, headers=headers, redirect=False)
        except urllib3.exceptions.HTTPError as exc:
            problem = f"{type(exc).__name__}: {exc}"
            log.warning("sink %s unreachable (attempt %d/%d): %s", url, attempt, SINK_ATTEMPTS, problem)
            continue
        if 200 <= response.status < 300:
            return
        problem = _error_text(response)
        if response.status not in RETRYABLE_STATUS:
            raise SinkRejected(problem)
        log.warning("sink %s answered %s (attempt %d/%d)", url, problem, attempt, SINK_ATTEMPTS)
    raise SinkUnavailable(problem)


def _describe(event: CloudEvent) -> str:
    return f"{event.get_source()} id={event.get_id()}"


def _data(event: CloudEvent) -> dict:
    data = event.get_data()
    return data if isinstance(data, dict) else {}


def create_app() -> Flask:
    app = Flask("object-events", static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    buckets = allowed_buckets()

    @app.get("/")
    def info() -> Response:
        # MinIO probes its webhook target with a HEAD request; answer GET/HEAD politely.
        return jsonify(function="object-events", accepts="POST SeaweedFS filer webhooks or S3 notifications")

    @app.post("/")
    def receive() -> tuple[Response, int]:
        try:
            payload = json.loads(request.get_data())
        except ValueError as exc:
            NOTIFICATIONS.labels("invalid", "bad_request").inc()
            return jsonify(error=f"body is not JSON: {exc}"), 400
        try:
            result: MappingResult = map_notification(payload)
        except NotANotification as exc:
            NOTIFICATIONS.labels("invalid", "bad_request").inc()
            return jsonify(error=str(exc)), 400
        events: list[CloudEvent] = []
        skipped = list(result.skipped)
        for event in result.events:
            bucket = _data(event).get("bucket")
            if buckets and bucket not in buckets:
                skipped.append(Skipped("bucket_not_allowed", f"bucket {bucket!r} is not in {BUCKETS_ENV}"))
            else:
                events.append(event)
        for skip in skipped:
            IGNORED.labels(skip.reason).inc()
            log.debug("ignored (%s): %s", skip.reason, skip.detail)
        if not events:
            NOTIFICATIONS.labels(result.format, "ok").inc()
            return jsonify(accepted=0, ignored=len(skipped)), 200
        try:
            url = sink_url()
        except RuntimeError as exc:
            NOTIFICATIONS.labels(result.format, "sink_unavailable").inc()
            FAILED.labels("no_sink").inc(len(events))
            log.error("%s", exc)
            return jsonify(error=str(exc)), 503
        accepted = 0
        for event in events:
            event = with_attributes(event, traceparent=tracing.new_traceparent())
            try:
                send(event, url)
            except SinkRejected as exc:
                NOTIFICATIONS.labels(result.format, "sink_rejected").inc()
                FAILED.labels("sink_rejected").inc()
                log.error("sink rejected %s: %s", _describe(event), exc)
                return jsonify(
                    error=f"the sink rejected event {event.get_id()!r}: {exc}", accepted=accepted
                ), 502
            except SinkUnavailable as exc:
                NOTIFICATIONS.labels(result.format, "sink_unavailable").inc()
                FAILED.labels("sink_unavailable").inc()
                log.error(
                    "sink unavailable for %s after %d attempts: %s", _describe(event), SINK_ATTEMPTS, exc
                )
                return jsonify(error=f"the sink is unavailable: {exc}", accepted=accepted), 503
            accepted += 1
            EMITTED.labels(result.format).inc()
            data = _data(event)
            log.info(
                "emitted %s s3://%s/%s size=%s version=%s id=%s",
                data.get("event_name"),
                data.get("bucket"),
                data.get("key"),
                data.get("size"),
                data.get("version"),
                event.get_id(),
            )
        NOTIFICATIONS.labels(result.format, "ok").inc()
        return jsonify(accepted=accepted, ignored=len(skipped)), 200

    return app
