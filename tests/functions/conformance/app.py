"""Test subscriber for the broker conformance suite: keeps every delivery as received.

Each record holds the request's headers and its body as base64, so a test can compare bytes.
The event's ``conformance`` extension picks the answer: ``fail`` (500, always), ``reply``
(200 with a reply event), ``accepted-reply`` (202 with the same reply event, which the
broker must not route), ``retry-after`` (429 with ``Retry-After: 1`` on the first attempt);
anything else gets a 202. Any POST path is served (per-trigger subscriber paths) and
recorded. ``GET /records?id=`` lists the deliveries of one event.
"""

from __future__ import annotations

import base64
import json
import threading

from flask import Flask, Response, jsonify, request

from localdev.broker.protocol import TRIGGER_HEADER

REPLY_TYPE = "com.example.conformance.replied.v1"


def create_app() -> Flask:
    app = Flask("conformance")
    records: list[dict[str, object]] = []
    lock = threading.Lock()

    @app.post("/", defaults={"sub": ""})
    @app.post("/<path:sub>")
    def receive(sub: str) -> Response:
        headers = {k.lower(): v for k, v in request.headers.items()}
        body = request.get_data()
        event_id = headers.get("ce-id")
        if event_id is None and headers.get("content-type", "").startswith("application/cloudevents+json"):
            event_id = json.loads(body).get("id")  # structured mode
        with lock:
            attempt = 1 + sum(1 for r in records if r["id"] == event_id and event_id)
            records.append(
                {
                    "id": event_id,
                    "trigger": headers.get(TRIGGER_HEADER.lower()),
                    "headers": headers,
                    "body": base64.b64encode(body).decode(),
                    "attempt": attempt,
                    "path": "/" + sub,
                }
            )
        behaviour = headers.get("ce-conformance", "")
        if behaviour == "fail":
            return Response("failing on purpose", status=500)
        if behaviour == "retry-after" and attempt == 1:
            return Response("busy", status=429, headers={"Retry-After": "1"})
        if behaviour in ("reply", "accepted-reply"):
            reply_headers = {
                "ce-id": f"reply-{event_id}",
                "ce-source": "/tests/conformance",
                "ce-type": REPLY_TYPE,
                "ce-specversion": "1.0",
                "ce-subject": str(event_id),
                "content-type": "text/plain",
            }
            status = 200 if behaviour == "reply" else 202
            return Response(b"a reply", status=status, headers=reply_headers)
        return Response(status=202)

    @app.get("/records")
    def list_records() -> Response:
        event_id = request.args.get("id")
        with lock:
            rows = [r for r in records if event_id is None or r["id"] == event_id]
        return jsonify(rows)

    return app
