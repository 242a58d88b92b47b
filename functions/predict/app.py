"""predict: every contract's champion over HTTP — a simple JSON route and Open Inference Protocol v2.

Models (``functions/predict/repository.py``): each data contract's ``model_name``, its champion
loaded on the first request that names it (by model or dataset name) within a memory budget;
a request that names no model gets ``FAASPIPE_DATASET``'s.

Routes (all errors are ``{"error": "..."}`` with a 4xx naming the problem, 503 without champion):

* ``POST /predict`` — ``{"entities": [udi, ...]}`` (features from the feature server; an
  unknown entity → 404 naming it; the answer adds ``"features"``: the online row scored per
  entity, with a streamed dataset's latest reading and rolling aggregates; a model trained on
  the aggregates scores them, an entity without them → 422, ``functions/predict/aggregates.py``)
  or ``{"instances": [{<raw input>: value, ...}]}`` (the contract's ``raw_inputs``, plus the
  aggregates for such a model; derived features are computed here) →
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
  ``rollout.started`` and ``model.rejected`` re-read the model's rollout tag (also polled): while
  a rollout runs, requests that pin no version are routed by it (``dataplane.answer``).

Platform readiness (``/health/readiness``) turns 200 once the replica is set up, champion or
not — ``faaspipe up`` waits for it and the supervisor caches it; whether a model is loaded is
what ``/v2/health/ready`` and ``/v2/models/<name>/ready`` answer (503 + reason until then).

Lean on purpose: numpy, xgboost, urllib3, minio, flask, kafka-python; no pandas/mlflow/sklearn.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from flask import Flask, Response, jsonify, request
from prometheus_client import Counter, Histogram

from events import (
    EventDataError,
    ModelPromoted,
    ModelRejected,
    RolloutStarted,
    UnknownEventType,
    event_data,
    validate_event,
)
from functions.predict import binary_tensors, dataplane
from functions.predict.aggregates import with_aggregates
from functions.predict.dataplane import Serving, init  # noqa: F401 - init: the runtime calls it
from functions.predict.inputs import BadInput, RawRow, parse_entities, rows_from_instances
from functions.predict.repository import Unavailable
from shared.cloudevents_io import InvalidCloudEvent, parse_http

log = logging.getLogger("faaspipe.predict")

PROMOTED = ModelPromoted.TYPE
ROLLOUT_CHANGES = (RolloutStarted.TYPE, ModelRejected.TYPE)  # re-read the model's rollout tag
MAX_BODY_BYTES = 8 * 1024 * 1024
REQUESTS = Counter("faaspipe_predict_requests_total", "Prediction requests", ["route", "status"])
ROWS = Counter("faaspipe_predict_rows_total", "Rows predicted", ["route"])
LATENCY = Histogram(
    "faaspipe_predict_seconds",
    "Server-side prediction latency (parse to response)",
    ["route"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
)


# --------------------------------------------------------------------------- helpers


def _error(status: int, message: str) -> tuple[Response, int]:
    return jsonify(error=message), status


def _json_body() -> dict[str, Any]:
    raw = request.get_data()
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise BadInput(f"request body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise BadInput("request body must be a JSON object")
    return body


def _fresh() -> bool:
    """``Cache-Control: no-cache`` or ``no-store``: the caller wants a fresh score."""
    directives = request.headers.get("Cache-Control", "").lower()
    return "no-cache" in directives or "no-store" in directives


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
    state = dataplane.state()
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
    fetched: list[dict[str, Any]] | None = None
    rows: list[RawRow]
    if has_entities:
        entities = parse_entities(body["entities"])
        model = dataplane.model(state, model_name)
        fetched = state.feature_server(contract.name).rows(entities)
        try:
            rows = rows_from_instances(contract, fetched)
        except BadInput as exc:
            raise BadInput(f"feature server returned an unusable row: {exc}", status=502) from exc
        # a model trained on the rolling aggregates scores the stream view's latest ones
        # (and carries the others it has, for a rollout's candidate that scores more of them)
        declared = contract.streaming.feature_names if contract.streaming else ()
        rows = with_aggregates(
            rows, fetched, model.aggregates, [f"entity {e}" for e in entities], carry=declared
        )
    else:
        rows = rows_from_instances(contract, body["instances"])
        model = dataplane.model(state, model_name)
        instances = body["instances"]
        rows = with_aggregates(
            rows, instances, model.aggregates, [f"instances[{i}]" for i in range(len(rows))]
        )
    rid = dataplane.request_id(request.headers.get("X-Request-Id"))
    result = dataplane.answer(state, model, rows, rid, fresh=_fresh())
    dataplane.log_predictions(state, result, route="json", rows=rows, entities=entities, started=started)
    ROWS.labels("json").inc(len(rows))
    response = jsonify(
        model_name=result.model.name,
        model_version=result.model.version,
        predictions=[
            {"probability": p, "label": y} for p, y in zip(result.probabilities, result.labels, strict=True)
        ],
        request_id=result.request_id,
        # the entity route echoes the online values it scored: the latest streamed reading's
        # features and rolling aggregates, where the dataset streams (window_readings, reading_id)
        **({"features": fetched} if fetched is not None else {}),
    )
    response.headers["X-Request-Id"] = result.request_id
    return response, 200


# --------------------------------------------------------------------------- Open Inference v2


def _v2_infer(name: str, version: str | None) -> tuple[Response, int]:
    state = dataplane.state()
    dataplane.model(state, name, version)  # an unknown model is a 404 before the body is read
    body = binary_tensors.read_request(request.get_data(), request.headers.get(binary_tensors.HEADER))
    if "inputs" not in body:
        raise BadInput("missing 'inputs': a list of tensors {name, shape, datatype, data}")
    requested = body.get("outputs")
    names = (
        [str(o.get("name")) for o in requested if isinstance(o, dict)] if isinstance(requested, list) else []
    )
    result, wanted = dataplane.infer_v2(
        state,
        name,
        version,
        body["inputs"],
        requested=names,
        request_id_hint=body.get("id") or request.headers.get("X-Request-Id"),
        route="v2",
        fresh=_fresh(),
    )
    ROWS.labels("v2").inc(len(result.labels))
    produced = result.outputs()
    outputs = [
        {"name": n, "datatype": produced[n][0], "shape": [len(produced[n][1])], "data": produced[n][1]}
        for n in wanted
    ]
    doc = {"model_name": result.model.name, "model_version": result.model.version, "id": result.request_id}
    doc["outputs"] = outputs
    payload, headers = binary_tensors.write_response(doc, binary_tensors.binary_outputs(body))
    response = Response(payload, headers=headers)
    response.headers["X-Request-Id"] = result.request_id
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
    state = dataplane.state()
    if event.get_type() in ROLLOUT_CHANGES:
        name = str((event_data(event) or {}).get("model_name", ""))
        if name in state.models.contracts:
            state.models.refresh_rollout(name)
        return Response(status=202)
    if event.get_type() != PROMOTED:
        return _error(
            400, f"predict handles only {[PROMOTED, *ROLLOUT_CHANGES]} events, got {event.get_type()}"
        )
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
        return jsonify(dataplane.server_metadata([binary_tensors.EXTENSION, "model_repository"]))

    @app.get("/v2/health/live")
    def live() -> Response:
        return jsonify(live=True)

    @app.get("/v2/health/ready")
    def ready() -> tuple[Response, int]:
        try:
            dataplane.model(dataplane.state())
        except Unavailable as exc:
            return jsonify(ready=False, error=str(exc)), 503
        return jsonify(ready=True), 200

    @app.get("/v2/models/<name>")
    @app.get("/v2/models/<name>/versions/<version>")
    def model_metadata(name: str, version: str | None = None) -> tuple[Response, int]:
        def call() -> tuple[Response, int]:
            state = dataplane.state()
            return jsonify(dataplane.metadata(state, dataplane.model(state, name, version))), 200

        return _answer("v2-metadata", time.perf_counter(), call)

    @app.get("/v2/models/<name>/ready")
    @app.get("/v2/models/<name>/versions/<version>/ready")
    def model_ready(name: str, version: str | None = None) -> tuple[Response, int]:
        def call() -> tuple[Response, int]:
            model = dataplane.model(dataplane.state(), name, version)
            return jsonify(name=model.name, version=model.version, ready=True), 200

        return _answer("v2-ready", time.perf_counter(), call)

    @app.post("/v2/repository/index")
    def repository_index() -> tuple[Response, int]:
        def call() -> tuple[Response, int]:
            body = request.get_json(silent=True) or {}
            ready_only = isinstance(body, dict) and body.get("ready") is True
            entries = [
                e.as_dict() for e in dataplane.state().models.index() if not ready_only or e.state == "READY"
            ]
            return jsonify(entries), 200

        return _answer("v2-repository", time.perf_counter(), call)

    @app.get("/v2/models")
    def models_list() -> tuple[Response, int]:
        def call() -> tuple[Response, int]:
            return jsonify(models=[e.as_dict() for e in dataplane.state().models.index()]), 200

        return _answer("v2-repository", time.perf_counter(), call)

    @app.post("/v2/repository/models/<name>/load")
    def repository_load(name: str) -> tuple[Response, int]:
        def call() -> tuple[Response, int]:
            models = dataplane.state().models
            model = models.load(models.resolve(name))
            return jsonify(name=model.name, version=model.version, state="READY"), 200

        return _answer("v2-repository", time.perf_counter(), call)

    @app.post("/v2/repository/models/<name>/unload")
    def repository_unload(name: str) -> tuple[Response, int]:
        def call() -> tuple[Response, int]:
            models = dataplane.state().models
            model = models.resolve(name)
            models.unload(model)
            return jsonify(name=model, state="UNLOADED"), 200

        return _answer("v2-repository", time.perf_counter(), call)

    @app.post("/v2/models/<name>/infer")
    @app.post("/v2/models/<name>/versions/<version>/infer")
    def infer(name: str, version: str | None = None) -> tuple[Response, int]:
        return _answer("v2", time.perf_counter(), lambda: _v2_infer(name, version))

    return app
