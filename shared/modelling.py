"""Modelling helpers shared by the tune, trial, train and promote functions (train environment only).

- data: the training frame of a dataset version (Feast point-in-time join), the stratified
  holdout, the vectorised encoding (``contract.encode`` for whole frames), a content checksum;
- models: XGBoost cross-validation with early stopping, out-of-fold predictions, the F1-optimal
  decision threshold, holdout metrics — always ``nthread=1`` (2-core boxes);
- storage: small JSON / Parquet helpers on the object store (``shared.layout`` keys);
- tracking: the MLflow experiment of a model, runs found by tags (for idempotent handlers).

pandas, numpy, xgboost, scikit-learn and mlflow are imported lazily, so this module imports
anywhere; calling the modelling functions needs the ``train`` environment.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared import feature_set, settings
from shared.contracts import Contract
from shared.errors import EventRejected

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    import pyarrow.parquet as pq
    import xgboost as xgb
    from minio import Minio
    from mlflow import MlflowClient
    from mlflow.entities import Run

log = logging.getLogger("faaspipe.modelling")

EVENT_TIMESTAMP = "event_timestamp"
HOLDOUT_FRACTION = 0.25
SEED = 42
CV_FOLDS = 5
MAX_ROUNDS = 1000
EARLY_STOPPING_ROUNDS = 50
BASE_PARAMS: dict[str, Any] = {
    "objective": "binary:logistic",
    "eval_metric": "auc",
    "tree_method": "hist",
    "nthread": 1,
}
INTEGER_PARAMS = frozenset({"max_depth", "max_bin", "max_leaves", "num_parallel_tree"})


# --------------------------------------------------------------------------- runtime


def rejection(message: str) -> Exception:
    """An ``EventRejected`` to raise: the event can never be processed (no retry)."""
    return EventRejected(message)


# --------------------------------------------------------------------------- data


def load_training_frame(contract: Contract, version: str) -> pd.DataFrame:
    """The training frame of a dataset version (:func:`load_training_set` without its lineage)."""
    return load_training_set(contract, version)[0]


def load_training_set(
    contract: Contract, version: str, parquet: pq.ParquetFile | None = None
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The training frame of a dataset version: entity key, event time, label, model features;
    and the lineage of the rows it holds (``shared.training_sample.Sample.lineage``).

    A version over its contract's ``training.max_rows`` is sampled (stratified, declared seed)
    before anything else is read. The Feast point-in-time join (``shared.feast_repo.training_set``)
    when that module is importable; otherwise the version's offline Parquet read directly (the
    same sample). A contract with a ``streaming:`` section gets its rolling aggregates joined too,
    when the stream covers the rows (``shared.stream_join``; the columns then include them, see
    ``shared.feature_set``). ``parquet``: the version's offline Parquet when it is local already
    (bench, tests); else it is streamed from the object store to a temporary file.
    """
    from shared import training_sample

    try:
        from shared.feast_repo import training_set
    except ImportError:
        log.warning("shared.feast_repo is not importable: reading the offline Parquet directly")
        with (
            contextlib.nullcontext(parquet) if parquet else training_sample.offline_file(contract, version)
        ) as local:
            sample = training_sample.plan(local, contract.sample_rule, version)
            rows = training_sample.read_rows(local, sample, local.schema_arrow.names).to_pandas()
        return prepare_frame(contract, rows), sample.lineage()
    joined, sample = training_set(contract, version, parquet)
    frame = prepare_frame(contract, joined)
    del joined
    if contract.streaming is None:
        return frame, sample.lineage()
    from shared.stream_join import join_aggregates

    return prepare_frame(contract, join_aggregates(contract, frame)), sample.lineage()


def read_offline_parquet(contract: Contract, version: str) -> pd.DataFrame:
    from shared import layout

    return parquet_from_bytes(get_bytes(layout.FEATURES, layout.offline_data(contract.name, version)))


def frame_from_csv(contract: Contract, path: str | Path) -> pd.DataFrame:
    """A raw file of the contract (source column names) as a training frame (for tests and notebooks)."""
    import pandas as pd

    return prepare_frame(contract, pd.read_csv(path))


def prepare_frame(contract: Contract, frame: pd.DataFrame) -> pd.DataFrame:
    """Canonical names, derived features, only the columns training needs (the contract's, and
    the streamed aggregates when the frame has them), sorted by entity key."""
    import pandas as pd

    frame = frame.rename(columns={c.source: c.name for c in contract.columns if c.source in frame.columns})
    missing_derived = [name for name in contract.derived if name not in frame.columns]
    if missing_derived:
        derived = contract.derive({name: frame[name] for name in frame.columns})
        for name in missing_derived:
            frame[name] = pd.Series(derived[name], index=frame.index).astype("float64")
    if EVENT_TIMESTAMP not in frame.columns:
        unit = {"minutes": "min", "seconds": "s", "hours": "h", "days": "D"}[contract.timestamp_unit]
        offsets = pd.to_timedelta(frame[contract.timestamp_source].astype("int64"), unit=unit)
        frame[EVENT_TIMESTAMP] = pd.Timestamp(contract.timestamp_origin) + offsets
    columns = [contract.entity_key, EVENT_TIMESTAMP, contract.label, *model_columns(contract, frame)]
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"training frame of {contract.ref} lacks columns {missing}")
    out = frame[columns].sort_values(contract.entity_key, kind="stable").reset_index(drop=True)
    out[contract.label] = out[contract.label].astype("int64")
    return out


def split_holdout(
    contract: Contract, frame: pd.DataFrame, *, fraction: float = HOLDOUT_FRACTION, seed: int = SEED
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Stratified (on the label) train / holdout parts, deterministic for a given frame and seed."""
    from sklearn.model_selection import train_test_split

    train, holdout = train_test_split(
        frame, test_size=fraction, stratify=frame[contract.label], random_state=seed, shuffle=True
    )
    return train.reset_index(drop=True), holdout.reset_index(drop=True)


def model_columns(contract: Contract, frame: pd.DataFrame) -> list[str]:
    """The frame's model features before encoding: the contract's, then its streamed aggregates."""
    return [*contract.model_features, *feature_set.aggregates_in(contract, frame.columns)]


def frame_features(contract: Contract, frame: pd.DataFrame) -> list[str]:
    """The encoded features a model trained on ``frame`` has (``shared.feature_set``)."""
    return list(feature_set.encoded_features(contract, feature_set.aggregates_in(contract, frame.columns)))


def encode_frame(contract: Contract, frame: pd.DataFrame) -> np.ndarray:
    """``contract.encode`` for a whole frame, then its streamed aggregates (if it has them): a
    float32 matrix in :func:`frame_features` order."""
    import numpy as np

    columns: list[np.ndarray] = []
    for feature in model_columns(contract, frame):
        values = frame[feature]
        if feature in contract.categoricals:
            columns.extend((values == v).to_numpy(dtype=np.float32) for v in contract.categoricals[feature])
        else:
            columns.append(values.to_numpy(dtype=np.float32))
    return np.column_stack(columns).astype(np.float32, copy=False)


def labels(contract: Contract, frame: pd.DataFrame) -> np.ndarray:
    import numpy as np

    return frame[contract.label].to_numpy(dtype=np.int32)


def frame_checksum(contract: Contract, frame: pd.DataFrame) -> str:
    """SHA-256 (hex) of the frame's entity key, label and model features (with the streamed
    aggregates, if any), in entity-key order."""
    columns = [contract.entity_key, contract.label, *model_columns(contract, frame)]
    ordered = frame[columns].sort_values(contract.entity_key, kind="stable")
    text = ordered.to_csv(index=False, float_format="%.10g", lineterminator="\n")
    return hashlib.sha256(text.encode()).hexdigest()


# --------------------------------------------------------------------------- models


@dataclass(frozen=True)
class CvResult:
    """Stratified k-fold CV, the folds boosted in lockstep and stopped on their mean validation AUC."""

    score: float  # mean validation ROC-AUC across folds at ``best_iteration``
    score_std: float
    best_iteration: int  # 0-based iteration of the best mean validation ROC-AUC
    fold_scores: tuple[float, ...]
    rounds: int  # rounds boosted before early stopping

    @property
    def n_rounds(self) -> int:
        """Boosting rounds that reach ``best_iteration``."""
        return self.best_iteration + 1


class TrialPruned(Exception):  # noqa: N818 - Optuna's name for the same thing
    """A checkpoint callback stopped the cross-validation: the trial is pruned at ``step``."""

    def __init__(self, step: int, score: float, rounds: int) -> None:
        super().__init__(f"pruned at round {step} (mean CV score so far {score:.5f})")
        self.step = step
        self.score = score
        self.rounds = rounds


Checkpoint = Callable[[int, float], bool]
"""Called every ``report_every`` rounds with (rounds so far, best mean CV score so far); True prunes."""


def booster_params(params: Mapping[str, Any], seed: int) -> dict[str, Any]:
    """XGBoost training parameters: the fixed base (binary:logistic, AUC, hist, nthread=1) + ``params``."""
    out = {**BASE_PARAMS, "seed": int(seed)}
    for name, value in params.items():
        out[name] = int(round(float(value))) if name in INTEGER_PARAMS else value
    out["nthread"] = 1
    return out


def stratified_folds(y: np.ndarray, *, n_folds: int = CV_FOLDS, seed: int = SEED) -> list[tuple[Any, Any]]:
    import numpy as np
    from sklearn.model_selection import StratifiedKFold

    splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros(len(y)), y))


def _dmatrix(x: np.ndarray, y: np.ndarray | None, feature_names: Sequence[str] | None) -> xgb.DMatrix:
    import xgboost as xgb

    return xgb.DMatrix(x, label=y, feature_names=list(feature_names) if feature_names else None, nthread=1)


def cross_validate(
    x: np.ndarray,
    y: np.ndarray,
    params: Mapping[str, Any],
    *,
    seed: int = SEED,
    folds: Sequence[tuple[Any, Any]] | None = None,
    max_rounds: int = MAX_ROUNDS,
    early_stopping_rounds: int = EARLY_STOPPING_ROUNDS,
    report_every: int = 0,
    on_checkpoint: Checkpoint | None = None,
) -> CvResult:
    """Stratified k-fold CV of XGBoost: mean/std validation ROC-AUC at the best iteration.

    As ``xgboost.cv`` does, the folds are boosted in lockstep and stopped together once their
    *mean* validation AUC has not improved for ``early_stopping_rounds``: one best iteration for
    all folds (the number of rounds the final model gets), and a score not inflated by picking
    each fold's own lucky iteration. Unlike ``xgboost.cv`` only the validation folds are scored.

    Multi-fidelity: every ``report_every`` rounds (when > 0) ``on_checkpoint(rounds, score)`` gets
    the best mean validation score so far — what the trial would report if it stopped there — and
    may stop the trial by returning True (``TrialPruned`` is raised).
    """
    import numpy as np
    import xgboost as xgb

    folds = folds if folds is not None else stratified_folds(y, seed=seed)
    full = booster_params(params, seed)
    metric = str(full["eval_metric"])
    parts = [
        (_dmatrix(x[train_idx], y[train_idx], None), _dmatrix(x[valid_idx], y[valid_idx], None))
        for train_idx, valid_idx in folds
    ]
    boosters = [xgb.Booster(full, [dtrain, dvalid]) for dtrain, dvalid in parts]
    history: list[list[float]] = []
    best = -1
    for iteration in range(max_rounds):
        scores = []
        for booster, (dtrain, dvalid) in zip(boosters, parts, strict=True):
            booster.update(dtrain, iteration)
            scores.append(_eval_value(booster.eval(dvalid, "valid", iteration), metric))
        history.append(scores)
        if best < 0 or np.mean(scores) > np.mean(history[best]):
            best = iteration
        elif iteration - best >= early_stopping_rounds:
            break
        if on_checkpoint is not None and report_every > 0 and (iteration + 1) % report_every == 0:
            so_far = float(np.mean(history[best]))
            if on_checkpoint(iteration + 1, so_far):
                raise TrialPruned(iteration + 1, so_far, len(history))
    at_best = history[best]
    return CvResult(
        score=float(np.mean(at_best)),
        score_std=float(np.std(at_best)),
        best_iteration=best,
        fold_scores=tuple(float(s) for s in at_best),
        rounds=len(history),
    )


def _eval_value(line: str, metric: str) -> float:
    """``'[3]\\tvalid-auc:0.97'`` → 0.97."""
    for field in line.split("\t")[1:]:
        name, _, value = field.rpartition(":")
        if name.endswith(f"-{metric}"):
            return float(value)
    raise ValueError(f"no {metric} in XGBoost evaluation {line!r}")


def fit_booster(
    x: np.ndarray,
    y: np.ndarray,
    params: Mapping[str, Any],
    *,
    n_rounds: int,
    seed: int = SEED,
    feature_names: Sequence[str] | None = None,
) -> xgb.Booster:
    import xgboost as xgb

    booster = xgb.train(booster_params(params, seed), _dmatrix(x, y, feature_names), num_boost_round=n_rounds)
    booster.set_param({"nthread": 1})
    return booster


def predict(booster: xgb.Booster, x: np.ndarray) -> np.ndarray:
    """Positive-class probabilities (the booster's ``binary:logistic`` output)."""
    return booster.inplace_predict(x, validate_features=False)


def out_of_fold_predictions(
    x: np.ndarray,
    y: np.ndarray,
    params: Mapping[str, Any],
    *,
    n_rounds: int,
    seed: int = SEED,
    folds: Sequence[tuple[Any, Any]] | None = None,
) -> np.ndarray:
    """Each row's probability from a model fitted (``n_rounds``, no early stopping) without its fold."""
    import numpy as np

    folds = folds if folds is not None else stratified_folds(y, seed=seed)
    out = np.full(len(y), np.nan, dtype=np.float64)
    for train_idx, valid_idx in folds:
        booster = fit_booster(x[train_idx], y[train_idx], params, n_rounds=n_rounds, seed=seed)
        out[valid_idx] = predict(booster, x[valid_idx])
    if np.isnan(out).any():
        raise ValueError("folds do not cover every row")
    return out


def best_f1_threshold(y: np.ndarray, proba: np.ndarray) -> tuple[float, float]:
    """The probability threshold maximising F1 (predict 1 when ``proba >= threshold``), and that F1."""
    import numpy as np
    from sklearn.metrics import precision_recall_curve

    precision, recall, thresholds = precision_recall_curve(y, proba)
    precision, recall = precision[:-1], recall[:-1]  # the last point has no threshold
    denominator = precision + recall
    f1 = np.divide(2 * precision * recall, denominator, out=np.zeros_like(denominator), where=denominator > 0)
    best = int(np.argmax(f1))
    return float(min(max(thresholds[best], 0.0), 1.0)), float(f1[best])


def classification_metrics(y: np.ndarray, proba: np.ndarray, threshold: float) -> dict[str, float]:
    """ROC-AUC, PR-AUC (average precision), F1 at ``threshold``, Brier score, and the threshold."""
    from sklearn.metrics import average_precision_score, brier_score_loss, f1_score, roc_auc_score

    return {
        "roc_auc": float(roc_auc_score(y, proba)),
        "pr_auc": float(average_precision_score(y, proba)),
        "f1": float(f1_score(y, proba >= threshold, zero_division=0)),
        "threshold": float(threshold),
        "brier": float(brier_score_loss(y, proba)),
    }


# --------------------------------------------------------------------------- storage


@functools.cache
def s3() -> Minio:
    """One MinIO client per process (thread-safe; the environment does not change)."""
    return settings.s3_client()


def get_bytes(bucket: str, key: str) -> bytes:
    return settings.read_object(bucket, key, s3())


def get_bytes_or_none(bucket: str, key: str) -> bytes | None:
    from minio.error import S3Error

    try:
        return get_bytes(bucket, key)
    except S3Error as exc:
        if exc.code in ("NoSuchKey", "NoSuchBucket"):
            return None
        raise


def put_bytes(bucket: str, key: str, data: bytes, content_type: str) -> None:
    s3().put_object(bucket, key, io.BytesIO(data), len(data), content_type=content_type)


def get_json(bucket: str, key: str) -> Any | None:
    """The JSON document at ``key``, or None when there is none."""
    data = get_bytes_or_none(bucket, key)
    return None if data is None else json.loads(data)


def put_json(bucket: str, key: str, doc: Any) -> None:
    put_bytes(bucket, key, json.dumps(doc, indent=1, sort_keys=True).encode(), "application/json")


def parquet_bytes(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False, engine="pyarrow")
    return buffer.getvalue()


def parquet_from_bytes(data: bytes) -> pd.DataFrame:
    import pandas as pd

    return pd.read_parquet(io.BytesIO(data), engine="pyarrow")


# --------------------------------------------------------------------------- tracking


def warm_up_mlflow() -> None:
    """Pay MLflow's one-off costs in ``init``, not in the first event: its first REST call imports
    the request-header plugin registry, which scans every installed package's entry points (~8 s
    in the train environment)."""
    import mlflow  # noqa: F401
    import mlflow.tracking.request_header.registry  # noqa: F401


def mlflow_client() -> MlflowClient:
    from mlflow import MlflowClient

    return MlflowClient()


def experiment_id(client: MlflowClient, name: str) -> str:
    """The id of the experiment ``name``, created if missing (tolerates a concurrent create)."""
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found is not None:
        return str(found.experiment_id)
    try:
        return str(client.create_experiment(name))
    except MlflowException:
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return str(found.experiment_id)


def find_runs(client: MlflowClient, experiment: str, tags: Mapping[str, str]) -> list[Run]:
    """Runs of ``experiment`` carrying all ``tags`` (oldest first)."""
    clauses = [f"tags.`{key}` = '{_quote(value)}'" for key, value in tags.items()]
    return list(
        client.search_runs(
            [experiment], " and ".join(clauses), max_results=100, order_by=["attributes.start_time ASC"]
        )
    )


def _quote(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace("'", "\\'")
