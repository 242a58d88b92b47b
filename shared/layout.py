"""Where things live in object storage. One place, so every function agrees.

Buckets: ``landing`` (users drop files), ``quarantine`` (rejected files + reports),
``features`` (offline store, Feast registry), ``models`` (studies, serving artefacts, audit),
``predictions`` (batch scoring output).
"""

from __future__ import annotations

LANDING = "landing"
QUARANTINE = "quarantine"
FEATURES = "features"
MODELS = "models"
PREDICTIONS = "predictions"
SCORE_DIR = "score"
PRODUCTION_DIR = "production"


def offline_data(dataset: str, version: str) -> str:
    """Object key (features bucket) of a dataset version's validated rows."""
    return f"offline/{dataset}/version={version}/data.parquet"


def stream_prefix(dataset: str) -> str:
    """Key prefix (features bucket) of the offline Parquet parts of a dataset's streamed features."""
    return f"stream/{dataset}/"


def stream_part(dataset: str, first: int, last: int) -> str:
    """Object key (features bucket) of one part: buffered rows ``first``..``last`` (a rewrite after
    a crash between the write and the buffer's delete writes the same key again)."""
    return f"{stream_prefix(dataset)}part-{first:012d}-{last:012d}.parquet"


def dataset_latest(dataset: str) -> str:
    """Object key (features bucket): JSON of the last features.materialised data of a dataset."""
    return f"datasets/{dataset}/latest.json"


def quarantined(key: str) -> tuple[str, str]:
    """Object keys (quarantine bucket) of a rejected file and of its violation report."""
    return f"files/{key}", f"reports/{key}.report.json"


def score_prefix(landing_prefix: str) -> str:
    """Landing prefix of a dataset's files to score (``<landing_prefix>score/``), not to ingest."""
    return f"{landing_prefix.rstrip('/')}/{SCORE_DIR}/"


def production_prefix(landing_prefix: str) -> str:
    """Landing prefix of a dataset's labelled production rows (``<landing_prefix>production/``),
    written by the monitor and ingested like any file (origin ``production``)."""
    return f"{landing_prefix.rstrip('/')}/{PRODUCTION_DIR}/"


def production_index(dataset: str, version: str = "") -> str:
    """Object key (features bucket): JSON of one ingested production version (rows, event-time
    range, source); without a version, the dataset's prefix of them. Training windows list it."""
    return f"datasets/{dataset}/production/{version + '.json' if version else ''}"


def batch_output(dataset: str, relative_key: str, run: str, file: str) -> str:
    """Object key (predictions bucket) of one output file of one scored input object version.

    ``relative_key`` is the input key below the dataset's score prefix; ``run`` identifies the
    object version (so a re-drop of new content gets new keys, a re-delivery the same ones).
    Files: ``predictions.parquet``, ``rejected.csv``, ``report.json`` (written last).
    """
    return f"{dataset}/{relative_key}/{run}/{file}"


def study_state(study_id: str) -> str:
    return f"studies/{study_id}/state.json"


def study_progress(study_id: str, trial_number: int | None = None) -> str:
    """Object key (models bucket): a trial's intermediate scores (``<n>.json``); the prefix of all
    the study's when ``trial_number`` is None."""
    prefix = f"studies/{study_id}/progress/"
    return prefix if trial_number is None else f"{prefix}{trial_number}.json"


def study_data(study_id: str, part: str) -> str:
    """``part`` is ``train`` or ``holdout``."""
    return f"studies/{study_id}/{part}.parquet"


def serving_model(model_name: str, version: str, file: str = "model.json") -> str:
    """Object key (models bucket): serving artefacts of a registered version.

    ``model.json`` (XGBoost's own format), ``meta.json`` (features, threshold, metrics),
    ``reference.csv`` (a sample of its training features: the drift reference).
    """
    return f"serving/{model_name}/{version}/{file}"


def audit_record(model_name: str, version: str) -> str:
    return f"audit/{model_name}/{version}.json"


def rollout_history(model_name: str, rollout_id: str = "") -> str:
    """One object per rollout (models bucket): which version served which share, from when to
    when, and how it ended. Without an id: the model's prefix."""
    return f"rollouts/{model_name}/{rollout_id + '.json' if rollout_id else ''}"


def retrain_state(model_name: str) -> str:
    return f"retrain/{model_name}.json"
