"""Test subscriber: keeps every delivery in memory, with the trigger that made it.

``GET /records`` lists them; ``?trigger=`` and ``?subject=`` filter. Several test function
folders (recorder, chain_recorder, ml_recorder, …) serve this same app with their own triggers.
"""

from __future__ import annotations

import threading

from flask import Flask, jsonify, request

from localdev.broker.protocol import TRIGGER_HEADER
from shared.cloudevents_io import parse_http, to_json_dict


def create_app() -> Flask:
    app = Flask("recorder")
    records: list[dict[str, object]] = []
    lock = threading.Lock()

    @app.post("/")
    def record():  # type: ignore[no-untyped-def]
        event = parse_http(request.headers, request.get_data())
        with lock:
            records.append({"trigger": request.headers.get(TRIGGER_HEADER), **to_json_dict(event)})
        return "", 202

    @app.get("/records")
    def list_records():  # type: ignore[no-untyped-def]
        trigger, subject = request.args.get("trigger"), request.args.get("subject")
        with lock:
            rows = [
                r
                for r in records
                if (trigger is None or r["trigger"] == trigger)
                and (subject is None or r.get("subject") == subject)
            ]
        return jsonify(rows)

    return app
