"""predict: the champion model over HTTP — a simple JSON route and Open Inference Protocol v2.

Routes (all errors are ``{"error": "..."}`` with a 4xx naming the problem, 503 without champion):

* ``POST /predict`` — ``{"entities": [udi, ...]}`` (features from the feature server; an
  unknown entity → 404 naming it) or ``{"instances": [{<raw input>: value, ...}]}`` (the
  contract's ``raw_inputs``; derived features are computed here) →
  ``{"model_name", "model_version", "predictions": [{"probability", "label"}], "request_id"}``.
  The request id is ``X-Request-Id`` if sent, else generated; row ``i`` of a batch of more
  than one row is logged as ``<request_id>-<i>`` (what a labels file joins on).
* Open Inference Protocol v2 REST: ``GET /v2/health/live``, ``GET /v2/health/ready``,
  ``GET /v2/models/<name>[/versions/<v>]`` (metadata), ``GET .../ready``,
  ``POST .../infer``. Inputs: one tensor per raw input (numerics FP32 or any numeric type,
  shape ``[N]``/``[N,1]``; ``type`` as BYTES ``"L"|"M"|"H"``) — what the metadata lists — or a
  single ``input`` tensor FP32 ``[N, 6]`` in ``raw_inputs`` order with ``type`` as its index
  in ``[L, M, H]``. Outputs: ``probability`` FP32 ``[N]`` and ``label`` INT64 ``[N]``.
* ``POST /`` — CloudEvents: ``dev.faaspipe.model.promoted.v1`` for the served model swaps the
  champion in before answering (the broker retries on failure); every replica also polls the
  registry alias every ``FAASPIPE_CHAMPION_POLL_SECONDS`` (default 10 s).

Platform readiness (``/health/readiness``) turns 200 once the replica is set up, champion or
not — ``faaspipe up`` waits for it and the supervisor caches it; whether a model is loaded is
what ``/v2/health/ready`` and ``/v2/models/<name>/ready`` answer (503 + reason until then).

Lean on purpose: numpy, xgboost, urllib3, minio, flask, kafka-python; no pandas/mlflow/sklearn.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from dataclasses import dataclass
from typing import Any

from flask import Flask, Response, jsonify, request
from prometheus_client import Counter, Histogram

from events import EventDataError, ModelPromoted, PredictionLogged, UnknownEventType, validate_event
from functions.predict import binary_tensors
from functions.predict.champion import ChampionHolder, LoadedModel, RegistryClient
from functions.predict.features import FeatureServer
from functions.predict.inputs import (
    BadInput,
    RawRow,
    encode_rows,
    parse_entities,
    rows_from_instances,
    rows_from_v2_inputs,
)
from functions.predict.prediction_log import PredictionLogger
from shared import settings
from shared.cloudevents_io import InvalidCloudEvent, parse_http
from shared.contracts import Contract, get_contract

log = logging.getLogger("faaspipe.predict")

PROMOTED = ModelPromoted.TYPE
MAX_BODY_BYTES = 8 * 1024 * 1024
MAX_REQUEST_ID = 128
REQUESTS = Counter("faaspipe_predict_requests_total", "Prediction requests", ["route", "status"])
ROWS = Counter("faaspipe_predict_rows_total", "Rows predicted", ["route"])
LATENCY = Histogram(
    "faaspipe_predict_seconds",
    "Server-side prediction latency (parse to response)",
    ["route"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
)


@dataclass
class Serving:
    """Everything a replica holds; built by ``init``."""

    contract: Contract
    model_name: str
    champion: ChampionHolder
    features: FeatureServer
    logger: PredictionLogger


_serving: Serving | None = None


def init() -> None:
    """Set the replica up and start looking for the champion (does not wait for one)."""
    global _serving
    contract = get_contract(os.environ.get("FAASPIPE_DATASET", "ai4i"))
    model_name = contract.model_name
    champion = ChampionHolder(
        contract,
        RegistryClient(os.environ["MLFLOW_TRACKING_URI"]),
        settings.s3_client(),
        model_name=model_name,
        alias=os.environ.get("FAASPIPE_SERVING_ALIAS", "champion"),
    )
    # Its own topic (function.yaml), read by the monitor's Kafka source: the broker's
    # triggers never have to skip the prediction stream.
    logger = PredictionLogger(
        settings.kafka_bootstrap(), os.environ.get("FAASPIPE_PREDICTION_TOPIC", "faaspipe.predictions")
    )
    logger.start()
    try:
        champion.refresh()
    except Exception as exc:  # noqa: BLE001 - the poll retries; /v2/health/ready reports why
        log.warning("no champion at start-up: %s", exc)
    if champion.current is None:
        log.warning(champion.unavailable_reason)
    champion.start_polling(float(os.environ.get("FAASPIPE_CHAMPION_POLL_SECONDS", "10")))
    gateway = os.environ.get("FAASPIPE_GATEWAY_URL", "http://127.0.0.1:17000")
    _serving = Serving(contract, model_name, champion, FeatureServer(gateway, contract.name), logger)


# --------------------------------------------------------------------------- helpers


class Unavailable(RuntimeError):
    """No champion (or the replica is still starting): 503."""


def _error(status: int, message: str) -> tuple[Response, int]:
    return jsonify(error=message), status


def _state() -> Serving:
    if _serving is None:
        raise Unavailable("predict is starting up")
    return _serving


def _model(state: Serving) -> LoadedModel:
    model = state.champion.current  # read once: the whole request uses this one model
    if model is None:
        raise Unavailable(state.champion.unavailable_reason)
    return model


def _json_body() -> dict[str, Any]:
    raw = request.get_data()
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise BadInput(f"request body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise BadInput("request body must be a JSON object")
    return body


def _request_id(candidate: Any = None) -> str:
    for value in (candidate, request.headers.get("X-Request-Id")):
        if isinstance(value, str) and 0 < len(value) <= MAX_REQUEST_ID:
            return value
    return uuid.uuid4().hex


def _score(model: LoadedModel, state: Serving, rows: list[RawRow]) -> tuple[list[float], list[int]]:
    probabilities = model.predict_proba(encode_rows(state.contract, rows))
    probs = [min(1.0, max(0.0, float(p))) for p in probabilities]
    return probs, [1 if p >= model.threshold else 0 for p in probs]


def _log_predictions(
    state: Serving,
    model: LoadedModel,
    *,
    request_id: str,
    route: str,
    rows: list[RawRow],
    probs: list[float],
    labels: list[int],
    entities: list[int] | None,
    started: float,
) -> None:
    latency_ms = (time.perf_counter() - started) * 1000
    single = len(rows) == 1
    state.logger.log(
        [
            PredictionLogged(
                request_id=request_id if single else f"{request_id}-{i}",
                model_name=model.name,
                model_version=model.version,
                route=route,  # type: ignore[arg-type]
                entity_id=entities[i] if entities else None,
                inputs=dict(row),
                output={"probability": probs[i], "label": labels[i]},  # type: ignore[typeddict-item]
                latency_ms=latency_ms,
            )
            for i, row in enumerate(rows)
        ]
    )


def _observe(route: str, status: int, started: float) -> None:
    REQUESTS.labels(route, str(status)).inc()
    LATENCY.labels(route).observe(time.perf_counter() - started)


def _answer(route: str, started: float, call: Any) -> tuple[Response, int]:
    """Run a route body, mapping BadInput → its 4xx and Unavailable → 503."""
    try:
        response, status = call()
    except BadInput as exc:
        response, status = _error(exc.status, str(exc))
    except Unavailable as exc:
        response, status = _error(503, str(exc))
    _observe(route, status, started)
    return response, status


# --------------------------------------------------------------------------- simple JSON route


def _predict_json() -> tuple[Response, int]:
    started = time.perf_counter()
    state = _state()
    body = _json_body()
    has_entities, has_instances = "entities" in body, "instances" in body
    if has_entities == has_instances:
        raise BadInput('send exactly one of "entities" (entity ids) or "instances" (raw feature values)')
    entities: list[int] | None = None
    if has_entities:
        entities = parse_entities(body["entities"])
        model = _model(state)
        fetched = state.features.rows(entities)
        try:
            rows = rows_from_instances(state.contract, fetched)
        except BadInput as exc:
            raise BadInput(f"feature server returned an unusable row: {exc}", status=502) from exc
    else:
        rows = rows_from_instances(state.contract, body["instances"])
        model = _model(state)
    request_id = _request_id()
    probs, labels = _score(model, state, rows)
    _log_predictions(
        state,
        model,
        request_id=request_id,
        route="json",
        rows=rows,
        probs=probs,
        labels=labels,
        entities=entities,
        started=started,
    )
    ROWS.labels("json").inc(len(rows))
    response = jsonify(
        model_name=model.name,
        model_version=model.version,
        predictions=[{"probability": p, "label": y} for p, y in zip(probs, labels, strict=True)],
        request_id=request_id,
    )
    response.headers["X-Request-Id"] = request_id
    return response, 200


# --------------------------------------------------------------------------- Open Inference v2


def _check_model_path(state: Serving, name: str, version: str | None) -> LoadedModel:
    if name != state.model_name:
        raise BadInput(f"unknown model '{name}'; this server serves '{state.model_name}'", status=404)
    model = _model(state)
    if version is not None and version != model.version:
        raise BadInput(
            f"model '{name}' version '{version}' is not loaded; serving version '{model.version}'", status=404
        )
    return model


def _v2_metadata(state: Serving, model: LoadedModel) -> dict[str, Any]:
    contract = state.contract
    return {
        "name": model.name,
        "versions": [model.version],
        "platform": "xgboost_json",
        "inputs": [
            {"name": name, "datatype": "BYTES" if name in contract.categoricals else "FP32", "shape": [-1]}
            for name in contract.raw_inputs
        ],
        "outputs": [
            {"name": "probability", "datatype": "FP32", "shape": [-1]},
            {"name": "label", "datatype": "INT64", "shape": [-1]},
        ],
        "parameters": {
            "contract": contract.ref,
            "threshold": model.threshold,
            "categories": {k: list(v) for k, v in contract.categoricals.items()},
            "single_tensor_input": {
                "name": "input",
                "datatype": "FP32",
                "shape": [-1, len(contract.raw_inputs)],
                "columns": list(contract.raw_inputs),
                "categoricals_as": "index into categories",
            },
        },
    }


def _v2_infer(name: str, version: str | None) -> tuple[Response, int]:
    started = time.perf_counter()
    state = _state()
    model = _check_model_path(state, name, version)
    body = binary_tensors.read_request(request.get_data(), request.headers.get(binary_tensors.HEADER))
    if "inputs" not in body:
        raise BadInput("missing 'inputs': a list of tensors {name, shape, datatype, data}")
    rows = rows_from_v2_inputs(state.contract, body["inputs"])
    request_id = _request_id(body.get("id"))
    probs, labels = _score(model, state, rows)
    _log_predictions(
        state,
        model,
        request_id=request_id,
        route="v2",
        rows=rows,
        probs=probs,
        labels=labels,
        entities=None,
        started=started,
    )
    ROWS.labels("v2").inc(len(rows))
    outputs = [
        {"name": "probability", "datatype": "FP32", "shape": [len(probs)], "data": probs},
        {"name": "label", "datatype": "INT64", "shape": [len(labels)], "data": labels},
    ]
    requested = body.get("outputs")
    if isinstance(requested, list) and requested:
        names = {o.get("name") for o in requested if isinstance(o, dict)}
        unknown = sorted(str(n) for n in names - {"probability", "label"})
        if unknown:
            raise BadInput(f"outputs: unknown output(s) {unknown}; available: ['probability', 'label']")
        outputs = [o for o in outputs if o["name"] in names]
    doc = {"model_name": model.name, "model_version": model.version, "id": request_id, "outputs": outputs}
    payload, headers = binary_tensors.write_response(doc, binary_tensors.binary_outputs(body))
    response = Response(payload, headers=headers)
    response.headers["X-Request-Id"] = request_id
    return response, 200


# --------------------------------------------------------------------------- CloudEvents


def _on_event() -> tuple[Response, int] | Response:
    try:
        event = parse_http(request.headers, request.get_data())
        validate_event(event)
    except InvalidCloudEvent as exc:
        return jsonify(exc.as_dict()), 400
    except (UnknownEventType, EventDataError) as exc:
        return _error(400, str(exc))
    if event.get_type() != PROMOTED:
        return _error(400, f"predict handles only {PROMOTED} events, got {event.get_type()}")
    state = _state()
    promoted = ModelPromoted.from_event(event)
    if promoted.model_name != state.model_name or promoted.alias != state.champion.alias:
        return Response(status=202)
    log.info(
        "%s: %s v%s is the new %s; refreshing",
        event.get_id(),
        promoted.model_name,
        promoted.version,
        promoted.alias,
    )
    state.champion.refresh()  # raises → 500 → the broker retries
    return Response(status=202)


# --------------------------------------------------------------------------- app


def create_app() -> Flask:
    app = Flask("predict")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES

    @app.errorhandler(404)
    def not_found(_exc: Exception) -> tuple[Response, int]:
        return _error(404, f"no route {request.method} {request.path}")

    @app.errorhandler(405)
    def not_allowed(_exc: Exception) -> tuple[Response, int]:
        return _error(405, f"method {request.method} not allowed on {request.path}")

    @app.errorhandler(413)
    def too_large(_exc: Exception) -> tuple[Response, int]:
        return _error(413, f"request body larger than {MAX_BODY_BYTES} bytes")

    @app.post("/")
    def events() -> tuple[Response, int] | Response:
        try:
            return _on_event()
        except Unavailable as exc:
            return _error(503, str(exc))

    @app.post("/predict")
    def predict() -> tuple[Response, int]:
        return _answer("json", time.perf_counter(), _predict_json)

    @app.get("/v2")
    def server_metadata() -> Response:
        return jsonify(name="faaspipe-predict", version="1", extensions=[binary_tensors.EXTENSION])

    @app.get("/v2/health/live")
    def live() -> Response:
        return jsonify(live=True)

    @app.get("/v2/health/ready")
    def ready() -> tuple[Response, int]:
        try:
            _model(_state())
        except Unavailable as exc:
            return jsonify(ready=False, error=str(exc)), 503
        return jsonify(ready=True), 200

    @app.get("/v2/models/<name>")
    @app.get("/v2/models/<name>/versions/<version>")
    def model_metadata(name: str, version: str | None = None) -> tuple[Response, int]:
        def call() -> tuple[Response, int]:
            state = _state()
            return jsonify(_v2_metadata(state, _check_model_path(state, name, version))), 200

        return _answer("v2-metadata", time.perf_counter(), call)

    @app.get("/v2/models/<name>/ready")
    @app.get("/v2/models/<name>/versions/<version>/ready")
    def model_ready(name: str, version: str | None = None) -> tuple[Response, int]:
        def call() -> tuple[Response, int]:
            model = _check_model_path(_state(), name, version)
            return jsonify(name=model.name, version=model.version, ready=True), 200

        return _answer("v2-ready", time.perf_counter(), call)

    @app.post("/v2/models/<name>/infer")
    @app.post("/v2/models/<name>/versions/<version>/infer")
    def infer(name: str, version: str | None = None) -> tuple[Response, int]:
        return _answer("v2", time.perf_counter(), lambda: _v2_infer(name, version))

    return app
