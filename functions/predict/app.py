"""predict: every contract's champion over HTTP — a simple JSON route and Open Inference Protocol v2.

Models (``functions/predict/repository.py``): each data contract's ``model_name``, its champion
loaded on the first request that names it (by model or dataset name) within a memory budget;
a request that names no model gets ``FAASPIPE_DATASET``'s.

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
  ``"model"`` or ``"dataset"`` in the body picks the model. With the binary tensor data
  extension (``functions/predict/binary_tensors.py``) inputs and outputs may be binary.
* OIP model repository: ``POST /v2/repository/index``, ``POST /v2/repository/models/<name>/load``
  and ``/unload``; ``GET /v2/models`` lists the same. A pinned version
  (``/v2/models/<name>/versions/<v>``) is served while it carries a rollout alias.
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
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from flask import Flask, Response, jsonify, request
from prometheus_client import Counter, Histogram

from events import EventDataError, ModelPromoted, PredictionLogged, UnknownEventType, validate_event
from functions.predict import binary_tensors, cache
from functions.predict.cache import CachedScorer
from functions.predict.champion import LoadedModel, RegistryClient
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
from functions.predict.repository import ModelRepository, Unavailable
from shared import settings
from shared.cloudevents_io import InvalidCloudEvent, parse_http
from shared.contracts import Contract, all_contracts, get_contract

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

    models: ModelRepository
    default_model: str  # what a request naming no model gets (FAASPIPE_DATASET's model)
    gateway_url: str
    logger: PredictionLogger
    scorer: CachedScorer = field(default_factory=lambda: CachedScorer(None))
    features: dict[str, FeatureServer] = field(default_factory=dict)

    def feature_server(self, dataset: str) -> FeatureServer:
        if dataset not in self.features:
            self.features[dataset] = FeatureServer(self.gateway_url, dataset)
        return self.features[dataset]


_serving: Serving | None = None


def init() -> None:
    """Set the replica up and look for the default model's champion (does not wait for one);
    every other contract's champion is loaded by its first request."""
    global _serving
    default = get_contract(os.environ.get("FAASPIPE_DATASET", "ai4i"))
    models = ModelRepository(
        all_contracts(),
        RegistryClient(os.environ["MLFLOW_TRACKING_URI"]),
        settings.s3_client(),
        alias=os.environ.get("FAASPIPE_SERVING_ALIAS", "champion"),
        budget_bytes=int(float(os.environ.get("FAASPIPE_PREDICT_MEMORY_MB", "512")) * 1024 * 1024),
    )
    scorer = CachedScorer(cache.from_settings(os.environ))
    models.on_swap = scorer.forget_model  # a moved alias drops the replica's entries of that model
    # Its own topic (function.yaml), read by the monitor's Kafka source: the broker's
    # triggers never have to skip the prediction stream.
    logger = PredictionLogger(
        settings.kafka_bootstrap(), os.environ.get("FAASPIPE_PREDICTION_TOPIC", "faaspipe.predictions")
    )
    logger.start()
    try:
        models.champion(default.model_name)
    except Exception as exc:  # noqa: BLE001 - the poll retries; /v2/health/ready reports why
        log.warning("no champion at start-up: %s", exc)
    poll_s = float(os.environ.get("FAASPIPE_CHAMPION_POLL_SECONDS", "10"))
    threading.Thread(target=_poll, args=(models, poll_s), name="champion-poll", daemon=True).start()
    gateway = os.environ.get("FAASPIPE_GATEWAY_URL", "http://127.0.0.1:17000")
    _serving = Serving(models, default.model_name, gateway, logger, scorer)


def _poll(models: ModelRepository, interval_s: float) -> None:
    """Every replica converges on the aliases even if it missed an event."""
    while True:
        time.sleep(interval_s)
        models.refresh_all()


# --------------------------------------------------------------------------- helpers


def _error(status: int, message: str) -> tuple[Response, int]:
    return jsonify(error=message), status


def _state() -> Serving:
    if _serving is None:
        raise Unavailable("predict is starting up")
    return _serving


def _model(state: Serving, name: str | None = None, version: str | None = None) -> LoadedModel:
    """The model a request names (a model or dataset name; none → the default model), read
    once: the whole request uses this one model object."""
    model = state.default_model if name is None else state.models.resolve(name)
    return state.models.get(model, version)


def _contract(state: Serving, model: LoadedModel) -> Contract:
    return state.models.contract(model.name)


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
    """(probabilities, labels) of ``rows``: cached rows from the response cache, the rest scored
    in one call (``Cache-Control: no-cache`` or ``no-store`` skips the cache)."""
    contract = _contract(state, model)

    def compute(indexes: list[int]) -> list[tuple[float, int]]:
        probabilities = model.predict_proba(encode_rows(contract, [rows[i] for i in indexes]))
        probs = [min(1.0, max(0.0, float(p))) for p in probabilities]
        return [(p, 1 if p >= model.threshold else 0) for p in probs]

    directives = request.headers.get("Cache-Control", "").lower()
    if "no-cache" in directives or "no-store" in directives:  # the caller wants a fresh score
        scored = compute(list(range(len(rows))))
    else:
        scored = state.scorer.score(model.name, model.version, rows, compute)
    return [p for p, _ in scored], [y for _, y in scored]


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
    unknown = sorted(set(body) - {"entities", "instances", "model", "dataset"})
    if unknown:
        raise BadInput(
            f"unknown field(s) {unknown}; expected 'entities' or 'instances', and 'model' or 'dataset'"
        )
    if "model" in body and "dataset" in body:
        raise BadInput("name the model either by 'model' or by 'dataset', not both")
    named = body.get("model", body.get("dataset"))
    if named is not None and (not isinstance(named, str) or not named):
        raise BadInput("'model' / 'dataset' must be a non-empty string")
    model_name = state.default_model if named is None else state.models.resolve(named)
    contract = state.models.contract(model_name)
    entities: list[int] | None = None
    if has_entities:
        entities = parse_entities(body["entities"])
        model = _model(state, model_name)
        fetched = state.feature_server(contract.name).rows(entities)
        try:
            rows = rows_from_instances(contract, fetched)
        except BadInput as exc:
            raise BadInput(f"feature server returned an unusable row: {exc}", status=502) from exc
    else:
        rows = rows_from_instances(contract, body["instances"])
        model = _model(state, model_name)
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
    return _model(state, name, version)


def _v2_metadata(state: Serving, model: LoadedModel) -> dict[str, Any]:
    contract = _contract(state, model)
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
    rows = rows_from_v2_inputs(_contract(state, model), body["inputs"])
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
    if promoted.model_name not in state.models.contracts or promoted.alias != state.models.alias:
        return Response(status=202)
    log.info(
        "%s: %s v%s is the new %s; refreshing",
        event.get_id(),
        promoted.model_name,
        promoted.version,
        promoted.alias,
    )
    state.models.refresh(promoted.model_name)  # raises → 500 → the broker retries
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
        return jsonify(
            name="faaspipe-predict", version="1", extensions=[binary_tensors.EXTENSION, "model_repository"]
        )

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

    @app.post("/v2/repository/index")
    def repository_index() -> tuple[Response, int]:
        def call() -> tuple[Response, int]:
            body = request.get_json(silent=True) or {}
            ready_only = isinstance(body, dict) and body.get("ready") is True
            entries = [e.as_dict() for e in _state().models.index() if not ready_only or e.state == "READY"]
            return jsonify(entries), 200

        return _answer("v2-repository", time.perf_counter(), call)

    @app.get("/v2/models")
    def models_list() -> tuple[Response, int]:
        def call() -> tuple[Response, int]:
            return jsonify(models=[e.as_dict() for e in _state().models.index()]), 200

        return _answer("v2-repository", time.perf_counter(), call)

    @app.post("/v2/repository/models/<name>/load")
    def repository_load(name: str) -> tuple[Response, int]:
        def call() -> tuple[Response, int]:
            models = _state().models
            model = models.load(models.resolve(name))
            return jsonify(name=model.name, version=model.version, state="READY"), 200

        return _answer("v2-repository", time.perf_counter(), call)

    @app.post("/v2/repository/models/<name>/unload")
    def repository_unload(name: str) -> tuple[Response, int]:
        def call() -> tuple[Response, int]:
            models = _state().models
            model = models.resolve(name)
            models.unload(model)
            return jsonify(name=model, state="UNLOADED"), 200

        return _answer("v2-repository", time.perf_counter(), call)

    @app.post("/v2/models/<name>/infer")
    @app.post("/v2/models/<name>/versions/<version>/infer")
    def infer(name: str, version: str | None = None) -> tuple[Response, int]:
        return _answer("v2", time.perf_counter(), lambda: _v2_infer(name, version))

    return app
