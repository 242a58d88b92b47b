"""Feature drift: alibi-detect tests of a window of predictions against the model's reference.

* numeric model features (derived ones computed from the logged raw inputs with
  ``contract.derive``) → ``KSDrift`` (p_val 0.05, Bonferroni over the features: each
  feature's threshold is ``p_val / n_features``);
* categoricals (``type``) → ``ChiSquareDrift`` on category indices (p_val 0.05).

The reference is the version's ``reference.csv`` (training rows written by train),
loaded once per model version and kept with its fitted detectors.
"""

from __future__ import annotations

import csv
import io
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
from minio import Minio

from shared import layout
from shared.contracts import Contract, contract_for_model
from shared.settings import read_object

log = logging.getLogger("faaspipe.monitor.drift")

DETECTOR_NAME = "ks+chisquare"


@dataclass(frozen=True)
class FeatureDriftResult:
    p_values: dict[str, float]
    thresholds: dict[str, float]
    drifted: list[str]

    @property
    def is_drift(self) -> bool:
        return bool(self.drifted)


def numeric_features(contract: Contract) -> list[str]:
    return [f for f in contract.model_features if f not in contract.categoricals]


def feature_columns(contract: Contract, rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Raw-input rows → model feature columns (numeric float64, categoricals as category index)."""
    columns: dict[str, Any] = {}
    for name in contract.raw_inputs:
        if name in contract.categoricals:
            columns[name] = np.asarray([row[name] for row in rows], dtype=object)
        else:
            columns[name] = np.asarray([float(row[name]) for row in rows], dtype=np.float64)
    derived = contract.derive(columns)
    out: dict[str, np.ndarray] = {}
    for feature in contract.model_features:
        if feature in contract.categoricals:
            values = list(contract.categoricals[feature])
            codes = np.asarray(
                [values.index(v) if v in values else -1 for v in derived[feature]], dtype=np.int64
            )
            if (codes < 0).any():
                raise ValueError(f"{feature}: values outside {values}")
            out[feature] = codes
        else:
            out[feature] = np.asarray(derived[feature], dtype=np.float64)
    return out


def read_reference_csv(data: bytes, contract: Contract) -> list[dict[str, Any]]:
    """``reference.csv`` (canonical names, ``type`` as its letter) → raw-input rows."""
    reader = csv.DictReader(io.StringIO(data.decode()))
    missing = [n for n in contract.raw_inputs if n not in (reader.fieldnames or [])]
    if missing:
        raise ValueError(f"reference.csv lacks columns {missing}")
    return [
        {n: row[n] if n in contract.categoricals else float(row[n]) for n in contract.raw_inputs}
        for row in reader
    ]


class FeatureDriftDetector:
    """Fitted KS + chi-square detectors for one reference sample."""

    def __init__(self, contract: Contract, reference_rows: list[dict[str, Any]], p_val: float = 0.05) -> None:
        from alibi_detect.cd import ChiSquareDrift, KSDrift  # heavy import: only where used

        self.contract = contract
        self.p_val = p_val
        self.numeric = numeric_features(contract)
        self.categorical = [f for f in contract.model_features if f in contract.categoricals]
        ref = feature_columns(contract, reference_rows)
        self.ks = KSDrift(
            np.column_stack([ref[f] for f in self.numeric]), p_val=p_val, correction="bonferroni"
        )
        self.chi2 = {
            f: ChiSquareDrift(
                ref[f].reshape(-1, 1), p_val=p_val, categories_per_feature={0: len(contract.categoricals[f])}
            )
            for f in self.categorical
        }
        self.reference_size = len(reference_rows)

    def check(self, rows: list[dict[str, Any]]) -> FeatureDriftResult:
        window = feature_columns(self.contract, rows)
        result = self.ks.predict(np.column_stack([window[f] for f in self.numeric]), drift_type="batch")[
            "data"
        ]
        p_values = {f: float(p) for f, p in zip(self.numeric, result["p_val"], strict=True)}
        thresholds = dict.fromkeys(self.numeric, float(result["threshold"]))
        for feature, detector in self.chi2.items():
            chi = detector.predict(window[feature].reshape(-1, 1), drift_type="batch")["data"]
            p_values[feature] = float(chi["p_val"][0])
            thresholds[feature] = float(chi["threshold"])
        p_values = {f: min(1.0, max(0.0, p)) for f, p in p_values.items()}
        drifted = [f for f in self.contract.model_features if p_values[f] < thresholds[f]]
        return FeatureDriftResult(p_values, thresholds, drifted)


class ReferenceCache:
    """Detectors per (model, version), fitted on first use from the version's reference.csv."""

    def __init__(self, s3: Minio, contract: Contract, p_val: float, max_versions: int = 8) -> None:
        self.s3 = s3
        self.contract = contract
        self.p_val = p_val
        self.max_versions = max_versions
        self._detectors: OrderedDict[tuple[str, str], FeatureDriftDetector] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, model_name: str, version: str) -> FeatureDriftDetector:
        key = (model_name, version)
        with self._lock:
            if key in self._detectors:
                self._detectors.move_to_end(key)
                return self._detectors[key]
            object_key = layout.serving_model(model_name, version, "reference.csv")
            data = read_object(layout.MODELS, object_key, self.s3)
            contract = contract_for_model(model_name) or self.contract  # each model its own features
            detector = FeatureDriftDetector(contract, read_reference_csv(data, contract), self.p_val)
            log.info(
                "drift reference for %s v%s: %d rows from %s",
                model_name,
                version,
                detector.reference_size,
                object_key,
            )
            self._detectors[key] = detector
            while len(self._detectors) > self.max_versions:
                self._detectors.popitem(last=False)
            return detector
