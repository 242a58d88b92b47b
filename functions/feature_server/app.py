"""Feature server: online features by entity id, from the Feast online store.

``POST /online`` with ``{"dataset": "ai4i", "entities": [1, 2]}`` →
``200 {"dataset", "feature_view", "rows": [{entity key + features} | null]}`` (null for an
entity the online store does not know). A dataset whose contract streams (``streaming:``)
answers each entity's latest streamed reading and rolling aggregates over its batch values
(``shared/feast_stream.py``). ``400`` names what is wrong with a malformed body,
``404`` for an unknown dataset or one never materialised (nor streamed), ``503`` until ``init`` has loaded
the stores, ``500`` (JSON) if the online store fails. The lean ``predict`` function calls this to score entity ids without Feast.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from flask import Flask, Response, jsonify, request

from shared import feast_repo
from shared.contracts import Contract, all_contracts

log = logging.getLogger("faaspipe.feature_server")

MAX_ENTITIES = 1000
SLOW_READ_S = 1.0  # reads slower than this are logged with their duration
_ready = threading.Event()
_lock = threading.Lock()  # one online read at a time: the SQLite connection is shared


class BadRequest(ValueError):
    pass


def init() -> None:
    """Open the shared store of every contract and warm it up (registry, online store connection)."""
    logging.getLogger("feast").setLevel(logging.WARNING)
    for contract in all_contracts().values():
        started = time.perf_counter()
        feast_repo.feature_store(contract)
        try:
            feast_repo.online_features(contract, [-1])
        except Exception as exc:  # noqa: BLE001 - nothing materialised yet is fine at start-up
            log.info("%s: no online features yet (%s: %s)", contract.name, type(exc).__name__, exc)
        log.info("%s: feature store ready in %.2fs", contract.name, time.perf_counter() - started)
    _ready.set()


def parse_request(body: Any) -> tuple[Contract | None, str, list[int]]:
    """(contract or None if unknown, dataset name, entity ids) from a request body."""
    if not isinstance(body, dict):
        raise BadRequest('the body must be a JSON object like {"dataset": "ai4i", "entities": [1, 2]}')
    unknown = sorted(set(body) - {"dataset", "entities"})
    if unknown:
        raise BadRequest(f"unknown field(s) {unknown}; expected 'dataset' and 'entities'")
    dataset = body.get("dataset")
    if not isinstance(dataset, str) or not dataset:
        raise BadRequest("'dataset' must be a non-empty string, e.g. \"ai4i\"")
    entities = body.get("entities")
    if not isinstance(entities, list):
        raise BadRequest("'entities' must be a list of integer entity ids")
    if len(entities) > MAX_ENTITIES:
        raise BadRequest(f"'entities' has {len(entities)} ids; at most {MAX_ENTITIES} per request")
    for i, entity in enumerate(entities):
        if isinstance(entity, bool) or not isinstance(entity, int):
            raise BadRequest(f"'entities[{i}]' must be an integer, got {entity!r}")
    return all_contracts().get(dataset), dataset, entities


def create_app() -> Flask:
    app = Flask("feature-server")

    @app.post("/online")
    def online() -> tuple[Response, int]:
        if not _ready.is_set():
            return jsonify(error="the feature server is starting"), 503
        body = request.get_json(silent=True)
        if body is None:
            return jsonify(error="the body must be JSON (Content-Type: application/json)"), 400
        try:
            contract, dataset, entities = parse_request(body)
        except BadRequest as exc:
            return jsonify(error=str(exc)), 400
        if contract is None:
            return jsonify(error=f"unknown dataset {dataset!r}; known: {sorted(all_contracts())}"), 404
        from feast.errors import FeatureViewNotFoundException

        started = time.perf_counter()
        try:
            with _lock:
                rows = feast_repo.online_features(contract, entities)
        except FeatureViewNotFoundException:
            return jsonify(error=f"dataset {dataset!r} has no materialised features yet"), 404
        except Exception as exc:  # noqa: BLE001 - answer JSON, keep the trace in the log
            log.exception("online read of %s %s failed", dataset, entities[:10])
            return jsonify(error=f"online read failed: {type(exc).__name__}: {exc}"), 500
        took = time.perf_counter() - started
        if took > SLOW_READ_S:
            log.info("slow online read: %s, %d entities in %.2fs", dataset, len(entities), took)
        return jsonify(dataset=dataset, feature_view=contract.feature_view, rows=rows), 200

    return app
