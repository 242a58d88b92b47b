"""The champion model of a replica: found in the MLflow registry, loaded from S3, hot-swapped.

The registry is read over MLflow's REST API with urllib3 (no mlflow client: the serving
image stays lean). A new version is loaded completely (artefacts, checks, Booster, one
warm-up prediction) before a single reference assignment makes it current, so requests in
flight keep the model object they started with and none fails during a swap.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import xgboost
from minio import Minio
from minio.error import S3Error
from prometheus_client import Counter, Gauge

from shared import feature_set, layout
from shared.contracts import Contract
from shared.registry_alias import RegistryClient
from shared.settings import read_object

log = logging.getLogger("faaspipe.predict.champion")

SWAPS = Counter("faaspipe_predict_model_swaps_total", "Champion models loaded and swapped in")
LOAD_FAILURES = Counter("faaspipe_predict_model_load_failures_total", "Champion lookups/loads that failed")
SERVED_VERSION = Gauge(
    "faaspipe_predict_model_version", "Model version served (1 = current)", ["model", "version"]
)


class ArtefactError(RuntimeError):
    """A registered version's serving artefacts are missing or do not fit the contract."""


@dataclass(frozen=True)
class LoadedModel:
    """One servable model version; immutable, so it can be shared by concurrent requests."""

    name: str
    version: str
    booster: xgboost.Booster
    threshold: float
    meta: dict[str, Any]
    size_bytes: int = 0  # estimated memory: the size of its model file
    aggregates: tuple[str, ...] = ()  # streamed rolling aggregates it scores after the contract's
    loaded_at: float = field(default_factory=time.time)

    def predict_proba(self, matrix: np.ndarray) -> np.ndarray:
        """Positive-class probabilities for an encoded float32 matrix (thread-safe in XGBoost)."""
        return self.booster.inplace_predict(matrix, validate_features=False)


def _get_object(s3: Minio, key: str) -> bytes:
    try:
        return read_object(layout.MODELS, key, s3)
    except S3Error as exc:
        if exc.code in ("NoSuchKey", "NoSuchBucket"):
            raise ArtefactError(f"serving artefact s3://{layout.MODELS}/{key} does not exist") from exc
        raise


def load_model(s3: Minio, contract: Contract, model_name: str, version: str) -> LoadedModel:
    """Load and check a version's ``meta.json`` + ``model.json``; warm it up with one prediction."""
    meta = json.loads(_get_object(s3, layout.serving_model(model_name, version, "meta.json")))
    try:
        if meta.get("contract") != contract.ref:
            raise ValueError(f"this server encodes {contract.ref}")
        aggregates = feature_set.model_aggregates(contract, meta.get("features", []))
    except ValueError as exc:
        raise ArtefactError(
            f"{model_name} v{version}: meta.json is for contract {meta.get('contract')!r} with features "
            f"{meta.get('features')}: {exc}"
        ) from None
    expected = feature_set.encoded_features(contract, aggregates)
    raw = _get_object(s3, layout.serving_model(model_name, version, "model.json"))
    booster = xgboost.Booster(model_file=bytearray(raw))
    booster.set_param({"nthread": 1})
    if booster.num_features() != len(expected):
        raise ArtefactError(
            f"{model_name} v{version}: booster has {booster.num_features()} features, expected {len(expected)}"
        )
    model = LoadedModel(
        model_name,
        version,
        booster,
        float(meta["threshold"]),
        meta,
        size_bytes=len(raw),
        aggregates=aggregates,
    )
    model.predict_proba(np.zeros((1, len(expected)), dtype=np.float32))  # warm-up before it serves
    return model


class ChampionHolder:
    """Holds the current champion; ``refresh`` swaps in a new one when the alias moved."""

    def __init__(
        self,
        contract: Contract,
        registry: RegistryClient,
        s3: Minio,
        *,
        model_name: str,
        alias: str = "champion",
    ) -> None:
        self.contract = contract
        self.registry = registry
        self.s3 = s3
        self.model_name = model_name
        self.alias = alias
        self.current: LoadedModel | None = None
        self.status = f"looking up the '{alias}' alias of registered model '{model_name}'"
        self._refresh_lock = threading.Lock()
        self._stop = threading.Event()

    @property
    def unavailable_reason(self) -> str:
        return f"no champion model loaded: {self.status}"

    def refresh(self) -> bool:
        """Look the alias up; load and swap in its version if it changed. True if swapped."""
        with self._refresh_lock:
            try:
                version = self.registry.alias_version(self.model_name, self.alias)
                if version is None:
                    self.status = (
                        f"registered model '{self.model_name}' has no '{self.alias}' alias in MLflow at "
                        f"{self.registry.tracking_uri} yet (promote a version)"
                    )
                    return False
                current = self.current
                if current is not None and current.version == version:
                    return False
                started = time.perf_counter()
                model = load_model(self.s3, self.contract, self.model_name, version)
            except Exception as exc:
                LOAD_FAILURES.inc()
                self.status = f"{type(exc).__name__}: {exc}"
                raise
            previous = self.current
            self.current = model  # the swap: one reference assignment
            self.status = f"serving {self.model_name} v{version}"
            SWAPS.inc()
            if previous is not None:
                SERVED_VERSION.labels(self.model_name, previous.version).set(0)
            SERVED_VERSION.labels(self.model_name, version).set(1)
            log.info(
                "champion %s v%s loaded in %.0f ms (was %s)",
                self.model_name,
                version,
                (time.perf_counter() - started) * 1000,
                previous.version if previous else "none",
            )
            return True

    def poll_forever(self, interval_s: float) -> None:
        """Background loop: every replica converges on the alias even if it missed the event."""
        while not self._stop.wait(interval_s):
            try:
                self.refresh()
            except Exception as exc:  # noqa: BLE001 - keep serving the current model; retry later
                log.warning(
                    "champion refresh failed (serving %s): %s",
                    self.current.version if self.current else "nothing",
                    exc,
                )

    def start_polling(self, interval_s: float) -> threading.Thread:
        thread = threading.Thread(
            target=self.poll_forever, args=(interval_s,), name="champion-poll", daemon=True
        )
        thread.start()
        return thread

    def stop(self) -> None:
        self._stop.set()
