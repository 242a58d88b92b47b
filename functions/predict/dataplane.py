"""predict's protocol-neutral data plane: the replica's state and what every route does with it.

The REST app (``functions/predict/app.py``) and the gRPC service
(``functions/predict/grpc_service.py``) are thin: they turn their wire format into the calls
here and the results back. Errors are :class:`BadInput` (with its HTTP status) and
:class:`Unavailable` (no model yet); each endpoint maps them to its protocol's codes.

While a rollout runs for a model (``shared/rollout.py``), :func:`answer` picks the side:
*canary* — the candidate answers the requests whose id hashes below its share (its failure
falls back to the champion, flagged ``candidate_error``); *shadow* — the champion answers and a
worker scores the same rows with the candidate off the response path and logs them as
``shadow``, never returned. Requests that pin a version are never routed.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Counter

from events import PredictionLogged, RolloutTag
from functions.predict import cache
from functions.predict.cache import CachedScorer
from functions.predict.champion import LoadedModel, RegistryClient
from functions.predict.features import FeatureServer
from functions.predict.inputs import BadInput, RawRow, encode_rows, rows_from_v2_inputs
from functions.predict.prediction_log import PredictionLogger
from functions.predict.repository import ModelRepository, Unavailable
from shared import settings
from shared.contracts import Contract, all_contracts, get_contract
from shared.rollout import Rollout

log = logging.getLogger("faaspipe.predict")

OUTPUTS = ("probability", "label")
MAX_REQUEST_ID = 128
SERVER_NAME = "faaspipe-predict"
SERVER_VERSION = "1"
SHADOW_QUEUE = 64  # mirrored requests waiting for the candidate; past it they are not mirrored

ROLLOUT_ANSWERS = Counter(
    "faaspipe_predict_rollout_answers_total",
    "Requests answered while a rollout runs, by side (candidate_error: the champion answered for it)",
    ["model", "variant"],
)


@dataclass
class Serving:
    """Everything a replica holds; built by :func:`init`."""

    models: ModelRepository
    default_model: str  # what a request naming no model gets (FAASPIPE_DATASET's model)
    feature_server_url: str  # the feature-server function's base URL
    logger: PredictionLogger
    scorer: CachedScorer = field(default_factory=lambda: CachedScorer(None))
    features: dict[str, FeatureServer] = field(default_factory=dict)
    shadow: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(max_workers=1, thread_name_prefix="shadow")
    )
    shadow_waiting: threading.BoundedSemaphore = field(
        default_factory=lambda: threading.BoundedSemaphore(SHADOW_QUEUE)
    )

    def feature_server(self, dataset: str) -> FeatureServer:
        if dataset not in self.features:
            self.features[dataset] = FeatureServer(self.feature_server_url, dataset)
        return self.features[dataset]


@dataclass(frozen=True)
class Inference:
    """One scored request: the model that answered and a probability and label per row."""

    model: LoadedModel
    request_id: str
    probabilities: list[float]
    labels: list[int]
    rollout: RolloutTag | None = None  # the side that answered, while a rollout runs

    def outputs(self) -> dict[str, tuple[str, list[Any]]]:
        """Output name → (datatype, flat data), as the model metadata lists them."""
        return {"probability": ("FP32", self.probabilities), "label": ("INT64", self.labels)}


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
    except Exception as exc:  # noqa: BLE001 - the poll retries; readiness reports why
        log.warning("no champion at start-up: %s", exc)
    poll_s = float(os.environ.get("FAASPIPE_CHAMPION_POLL_SECONDS", "10"))
    threading.Thread(target=_poll, args=(models, poll_s), name="champion-poll", daemon=True).start()
    _serving = Serving(models, default.model_name, settings.function_url("feature-server"), logger, scorer)


def _poll(models: ModelRepository, interval_s: float) -> None:
    """Every replica converges on the aliases even if it missed an event."""
    while True:
        time.sleep(interval_s)
        models.refresh_all()


def state() -> Serving:
    if _serving is None:
        raise Unavailable("predict is starting up")
    return _serving


def model(serving: Serving, name: str | None = None, version: str | None = None) -> LoadedModel:
    """The model a request names (a model or dataset name; none → the default model), read
    once: the whole request uses this one model object."""
    resolved = serving.default_model if name is None else serving.models.resolve(name)
    return serving.models.get(resolved, version)


def contract(serving: Serving, loaded: LoadedModel) -> Contract:
    return serving.models.contract(loaded.name)


def request_id(*candidates: Any) -> str:
    """The first candidate that is a usable id (1..128 characters), else a new one."""
    for value in candidates:
        if isinstance(value, str) and 0 < len(value) <= MAX_REQUEST_ID:
            return value
    return uuid.uuid4().hex


def score(serving: Serving, loaded: LoadedModel, rows: list[RawRow], *, fresh: bool = False) -> Inference:
    """Probabilities and labels of ``rows``: cached rows from the response cache, the rest scored
    in one call (``fresh`` skips the cache). The request id is filled in by the caller."""
    rules = contract(serving, loaded)

    def compute(indexes: list[int]) -> list[tuple[float, int]]:
        probabilities = loaded.predict_proba(
            encode_rows(rules, [rows[i] for i in indexes], loaded.aggregates)
        )
        probs = [min(1.0, max(0.0, float(p))) for p in probabilities]
        return [(p, 1 if p >= loaded.threshold else 0) for p in probs]

    if fresh:
        scored = compute(list(range(len(rows))))
    else:
        scored = serving.scorer.score(loaded.name, loaded.version, rows, compute)
    return Inference(loaded, "", [p for p, _ in scored], [y for _, y in scored])


def answer(
    serving: Serving,
    loaded: LoadedModel,
    rows: list[RawRow],
    rid: str,
    *,
    pinned: bool = False,
    fresh: bool = False,
) -> Inference:
    """Score request ``rid``: the champion ``loaded`` answers, or, while a rollout runs and the
    request pins no version, the side the rollout picks (see the module docstring)."""
    rollout = None if pinned else serving.models.rollout(loaded.name)
    if rollout is None or rollout.champion != loaded.version:
        scored = score(serving, loaded, rows, fresh=fresh)
        return Inference(loaded, rid, scored.probabilities, scored.labels)
    tag: RolloutTag = {"id": rollout.id, "variant": "champion", "candidate_version": rollout.candidate}
    if rollout.candidate_answers(rid):
        try:
            candidate = serving.models.get(loaded.name, rollout.candidate)
            scored = score(serving, candidate, rows, fresh=fresh)
        except Exception as exc:  # noqa: BLE001 - the champion answers instead; the monitor counts it
            log.warning("%s: canary v%s failed on %s: %s", loaded.name, rollout.candidate, rid, exc)
            tag["candidate_error"] = True
        else:
            ROLLOUT_ANSWERS.labels(loaded.name, "candidate").inc()
            return Inference(
                candidate, rid, scored.probabilities, scored.labels, {**tag, "variant": "candidate"}
            )
    scored = score(serving, loaded, rows, fresh=fresh)
    ROLLOUT_ANSWERS.labels(loaded.name, "candidate_error" if tag.get("candidate_error") else "champion").inc()
    return Inference(loaded, rid, scored.probabilities, scored.labels, tag)


def mirrors(serving: Serving, result: Inference) -> Rollout | None:
    """The shadow rollout ``result`` (a champion's answer) is to be mirrored to, if any."""
    rollout = serving.models.rollout(result.model.name)
    if (
        result.rollout is None
        or rollout is None
        or rollout.mode != "shadow"
        or rollout.id != result.rollout["id"]
    ):
        return None
    return rollout


def log_predictions(
    serving: Serving,
    result: Inference,
    *,
    route: str,
    rows: Sequence[RawRow],
    entities: list[int] | None,
    started: float,
) -> None:
    """One ``prediction.logged`` per row; row ``i`` of a batch is ``<request_id>-<i>``. Under a
    shadow rollout the rows are logged by the shadow worker, beside the candidate's."""
    latency_ms = (time.perf_counter() - started) * 1000
    rollout = mirrors(serving, result)
    if rollout is not None and serving.shadow_waiting.acquire(blocking=False):
        serving.shadow.submit(_shadow, serving, rollout, result, list(rows), entities, route, latency_ms)
        return
    serving.logger.log(_records(result, route, rows, entities, latency_ms))


def _shadow(
    serving: Serving,
    rollout: Rollout,
    result: Inference,
    rows: list[RawRow],
    entities: list[int] | None,
    route: str,
    latency_ms: float,
) -> None:
    """Score a served request with the candidate and log both sides (worker thread)."""
    try:
        started = time.perf_counter()
        records: list[PredictionLogged] = []
        try:
            candidate = serving.models.get(result.model.name, rollout.candidate)
            scored = score(serving, candidate, rows)
        except Exception as exc:  # noqa: BLE001 - counted as the candidate's error
            log.warning(
                "%s: shadow v%s failed on %s: %s",
                rollout.model_name,
                rollout.candidate,
                result.request_id,
                exc,
            )
            failed: RolloutTag = {
                "id": rollout.id,
                "variant": "champion",
                "candidate_version": rollout.candidate,
                "candidate_error": True,
            }
            served = Inference(result.model, result.request_id, result.probabilities, result.labels, failed)
            ROLLOUT_ANSWERS.labels(result.model.name, "candidate_error").inc()
        else:
            served = result
            shadow_tag: RolloutTag = {
                "id": rollout.id,
                "variant": "shadow",
                "candidate_version": rollout.candidate,
            }
            mirrored = Inference(
                candidate, result.request_id, scored.probabilities, scored.labels, shadow_tag
            )
            records = _records(mirrored, route, rows, entities, (time.perf_counter() - started) * 1000)
            ROLLOUT_ANSWERS.labels(result.model.name, "shadow").inc()
        serving.logger.log(_records(served, route, rows, entities, latency_ms) + records)
    finally:
        serving.shadow_waiting.release()


def _records(
    result: Inference, route: str, rows: Sequence[RawRow], entities: list[int] | None, latency_ms: float
) -> list[PredictionLogged]:
    single = len(rows) == 1
    return [
        PredictionLogged(
            request_id=result.request_id if single else f"{result.request_id}-{i}",
            model_name=result.model.name,
            model_version=result.model.version,
            route=route,  # type: ignore[arg-type]
            entity_id=entities[i] if entities else None,
            inputs=dict(row),
            output={"probability": result.probabilities[i], "label": result.labels[i]},  # type: ignore[typeddict-item]
            latency_ms=latency_ms,
            rollout=result.rollout,
        )
        for i, row in enumerate(rows)
    ]


def infer_v2(
    serving: Serving,
    name: str,
    version: str | None,
    inputs: Any,
    *,
    requested: Sequence[str] = (),
    request_id_hint: Any = None,
    route: str,
    fresh: bool = False,
) -> tuple[Inference, list[str]]:
    """An Open Inference Protocol infer call, whatever its wire: ``inputs`` are tensors as
    ``{"name", "datatype", "shape", "data"}`` with flat or nested data. Returns the result and
    the output names to answer with (all of them when none were requested)."""
    started = time.perf_counter()
    loaded = model(serving, name, version)
    unknown = sorted(set(requested) - set(OUTPUTS))
    if unknown:
        raise BadInput(f"outputs: unknown output(s) {unknown}; available: {list(OUTPUTS)}")
    rows = rows_from_v2_inputs(contract(serving, loaded), inputs)
    result = answer(
        serving, loaded, rows, request_id(request_id_hint), pinned=version is not None, fresh=fresh
    )
    log_predictions(serving, result, route=route, rows=rows, entities=None, started=started)
    wanted = [o for o in OUTPUTS if o in requested] if requested else list(OUTPUTS)
    return result, wanted


def metadata(serving: Serving, loaded: LoadedModel) -> dict[str, Any]:
    """The OIP model metadata of a loaded model (the REST JSON; gRPC copies its fields)."""
    rules = contract(serving, loaded)
    return {
        "name": loaded.name,
        "versions": [loaded.version],
        "platform": "xgboost_json",
        "inputs": [
            {"name": name, "datatype": "BYTES" if name in rules.categoricals else "FP32", "shape": [-1]}
            for name in rules.raw_inputs
        ],
        "outputs": [
            {"name": "probability", "datatype": "FP32", "shape": [-1]},
            {"name": "label", "datatype": "INT64", "shape": [-1]},
        ],
        "parameters": {
            "contract": rules.ref,
            "threshold": loaded.threshold,
            "categories": {k: list(v) for k, v in rules.categoricals.items()},
            "single_tensor_input": {
                "name": "input",
                "datatype": "FP32",
                "shape": [-1, len(rules.raw_inputs)],
                "columns": list(rules.raw_inputs),
                "categoricals_as": "index into categories",
            },
        },
    }


def server_metadata(extensions: Sequence[str]) -> Mapping[str, Any]:
    return {"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": list(extensions)}
