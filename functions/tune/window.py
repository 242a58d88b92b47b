"""The data a study trains and is judged on.

- A first study (``features.materialised``): the materialised version, stratified holdout.
- A retrain (``retrain.requested``): a declared **window** = the reference version (the latest
  materialised one, read through Feast) plus the newest ``FAASPIPE_RETRAIN_PRODUCTION_ROWS``
  production rows (labelled predictions the monitor wrote, ingested as versions of origin
  ``production``, listed under ``layout.production_index``). The holdout is **time-based**: the
  newest ``FAASPIPE_RETRAIN_HOLDOUT_FRACTION`` of the production rows by event time, so the model
  is judged on the most recent data, which it never saw; the rest trains with the reference.
  With fewer than ``FAASPIPE_RETRAIN_MIN_PRODUCTION_ROWS`` production rows (or a holdout of one
  class, where ROC-AUC means nothing) the retrain falls back to the first study's data.

``dataset_versions`` names every version used, the reference first: it travels on the study's
state, ``study.completed``, ``model.registered``, the MLflow tags and the model's meta.json.
So does ``sample``, the lineage of the reference version's rows: a version over its contract's
``training.max_rows`` is sampled (``shared.training_sample``) before its join; in a retrain
window only the reference (training data) is sampled, the production rows (bounded by
``FAASPIPE_RETRAIN_PRODUCTION_ROWS``) never are, so the time holdout stays the newest slice.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from shared import feature_set, layout, modelling
from shared.contracts import Contract

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger("faaspipe.tune")

EVENT_TIMESTAMP = "event_timestamp"
VERSION_COLUMN = "_dataset_version"


@dataclass(frozen=True)
class WindowConfig:
    production_rows: int = 20_000
    min_production_rows: int = 300
    holdout_fraction: float = 0.25

    @classmethod
    def from_env(cls) -> WindowConfig:
        return cls(
            production_rows=int(os.environ.get("FAASPIPE_RETRAIN_PRODUCTION_ROWS", "20000")),
            min_production_rows=int(os.environ.get("FAASPIPE_RETRAIN_MIN_PRODUCTION_ROWS", "300")),
            holdout_fraction=float(os.environ.get("FAASPIPE_RETRAIN_HOLDOUT_FRACTION", "0.25")),
        )


@dataclass
class TrainingData:
    frame: pd.DataFrame  # everything used (train + holdout)
    train: pd.DataFrame
    holdout: pd.DataFrame
    dataset_versions: list[str]  # the reference version first
    split: str  # "stratified" | "time"
    window: dict[str, object]  # what was declared and found (kept in the study state)
    sample: dict[str, object] | None = None  # the reference version's rows: the sample's lineage


def first_study(contract: Contract, version: str, *, fraction: float, seed: int) -> TrainingData:
    frame, sample = modelling.load_training_set(contract, version)
    train, holdout = modelling.split_holdout(contract, frame, fraction=fraction, seed=seed)
    return TrainingData(frame, train, holdout, [version], "stratified", {"reference": version}, sample)


def production_versions(contract: Contract) -> list[dict[str, object]]:
    """The ingested production versions of the dataset (their index documents), oldest first."""
    prefix = layout.production_index(contract.name)
    docs = []
    for item in modelling.s3().list_objects(layout.FEATURES, prefix=prefix, recursive=True):
        doc = modelling.get_json(layout.FEATURES, str(item.object_name))
        if doc and doc.get("contract") == contract.ref:
            docs.append(doc)
    return sorted(docs, key=lambda d: (str(d["event_time_max"]), str(d["version"])))


def production_frame(contract: Contract, versions: list[dict[str, object]]) -> pd.DataFrame:
    """The rows of those versions (training columns + their version), one per entity (the
    latest labelled), in event-time order."""
    import pandas as pd

    frames = []
    for doc in versions:
        rows = modelling.prepare_frame(
            contract, modelling.read_offline_parquet(contract, str(doc["version"]))
        )
        rows[VERSION_COLUMN] = str(doc["version"])
        frames.append(rows)
    if not frames:
        return pd.DataFrame(columns=[contract.entity_key, EVENT_TIMESTAMP, contract.label, VERSION_COLUMN])
    frame = pd.concat(frames, ignore_index=True)
    frame = frame.drop_duplicates(subset=[contract.entity_key], keep="last")
    return frame.sort_values([EVENT_TIMESTAMP, contract.entity_key], kind="stable").reset_index(drop=True)


def _utc(frame: pd.DataFrame) -> pd.DataFrame:
    """The same event-time type in every part (Feast's join and the Parquet may differ in unit)."""
    import pandas as pd

    frame = frame.copy()
    frame[EVENT_TIMESTAMP] = pd.to_datetime(frame[EVENT_TIMESTAMP], utc=True).astype("datetime64[ns, UTC]")
    return frame


def split_by_time(frame: pd.DataFrame, fraction: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(older part, newest ``fraction``) of a frame sorted by event time."""
    n_holdout = max(1, math.ceil(len(frame) * fraction))
    return frame.iloc[:-n_holdout], frame.iloc[-n_holdout:]


def retrain_window(
    contract: Contract, reference: str, config: WindowConfig, *, fallback_fraction: float, seed: int
) -> TrainingData:
    import pandas as pd

    versions = production_versions(contract)
    production = production_frame(contract, versions).tail(config.production_rows)
    declared = {
        "reference": reference,
        "production_rows": config.production_rows,
        "min_production_rows": config.min_production_rows,
        "holdout_fraction": config.holdout_fraction,
        "production_versions_found": [str(d["version"]) for d in versions],
        "production_rows_found": len(production),
    }
    if len(production) < config.min_production_rows:
        log.info(
            "retrain of %s: %d production rows (< %d): training on %s alone",
            contract.name,
            len(production),
            config.min_production_rows,
            reference,
        )
        data = first_study(contract, reference, fraction=fallback_fraction, seed=seed)
        data.window = {**declared, "fallback": "too few production rows"}
        return data
    older, holdout = split_by_time(production, config.holdout_fraction)
    if holdout[contract.label].nunique() < 2:
        log.warning(
            "retrain of %s: the recent holdout has one class: training on %s alone", contract.name, reference
        )
        data = first_study(contract, reference, fraction=fallback_fraction, seed=seed)
        data.window = {**declared, "fallback": "recent holdout of one class"}
        return data
    # the reference version is training data only: sampled under the contract's rule (the
    # holdout, the newest production rows, is never sampled and stays the newest slice)
    base, sample = modelling.load_training_set(contract, reference)
    # one feature set for the whole window: production rows are not joined with the stream (yet),
    # so a window with them trains on the contract's features (shared/feature_set.py)
    base = base.drop(columns=list(feature_set.aggregates_in(contract, base.columns)))
    base = base[~base[contract.entity_key].isin(production[contract.entity_key])]  # production's label wins
    used = list(dict.fromkeys(production[VERSION_COLUMN]))
    columns = list(base.columns)
    base, older, holdout = (_utc(part[columns]) for part in (base, older, holdout))
    train = pd.concat([base, older], ignore_index=True)
    holdout = holdout.reset_index(drop=True)
    frame = pd.concat([train, holdout], ignore_index=True)
    window = {
        **declared,
        "production_versions": used,
        "rows_reference": len(base),
        "rows_production_train": len(older),
        "rows_holdout": len(holdout),
        "holdout_from": str(holdout[EVENT_TIMESTAMP].min()),
        "holdout_to": str(holdout[EVENT_TIMESTAMP].max()),
    }
    log.info(
        "retrain of %s: window %s + %d production rows of %s; time holdout = the newest %d rows",
        contract.name,
        reference,
        len(production),
        used,
        len(holdout),
    )
    return TrainingData(frame, train, holdout, [reference, *used], "time", window, sample)


def training_data(
    contract: Contract, version: str, *, retrain: bool, fraction: float, seed: int
) -> TrainingData:
    """A study's data: the window of a retrain, or the version's stratified split."""
    if not retrain:
        return first_study(contract, version, fraction=fraction, seed=seed)
    return retrain_window(contract, version, WindowConfig.from_env(), fallback_fraction=fraction, seed=seed)
