"""Test subscriber for the serving tests: keeps deliveries in memory, queryable by type.

``GET /records?type=<ce type>&subject=<subject>`` lists what arrived (structured JSON form,
plus the trigger that delivered it); predictions are numerous, so filter server-side.
"""

from __future__ import annotations

import threading
from typing import Any

from flask import Flask, Response, jsonify, request

from localdev.broker.protocol import TRIGGER_HEADER
from shared.cloudevents_io import parse_http, to_json_dict

MAX_RECORDS = 200_000


def create_app() -> Flask:
    app = Flask("serve-recorder")
    records: list[dict[str, Any]] = []
    lock = threading.Lock()

    @app.post("/")
    def record() -> tuple[str, int]:
        event = parse_http(request.headers, request.get_data())
        with lock:
            records.append({"trigger": request.headers.get(TRIGGER_HEADER), **to_json_dict(event)})
            del records[:-MAX_RECORDS]
        return "", 202

    @app.get("/records")
    def list_records() -> Response:
        wanted_type = request.args.get("type")
        wanted_subject = request.args.get("subject")
        with lock:
            rows = [
                r
                for r in records
                if (wanted_type is None or r.get("type") == wanted_type)
                and (wanted_subject is None or r.get("subject") == wanted_subject)
            ]
        return jsonify(rows)

    return app
