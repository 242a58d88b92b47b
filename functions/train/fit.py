"""The final model of a study: fit, decision threshold and holdout evaluation (no I/O).

- the threshold maximises F1 on out-of-fold predictions of the train part (the holdout is
  never used to choose anything);
- the model is fitted on the whole train part with the best parameters and the trial's mean
  best iteration (CV early stopping) as the number of rounds;
- the holdout gives ROC-AUC, PR-AUC (average precision), F1 at the threshold and the Brier score.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from shared import modelling
from shared.contracts import Contract

if TYPE_CHECKING:
    import pandas as pd
    import xgboost as xgb

REFERENCE_ROWS = 2000
DEFAULT_ROUNDS = 100


@dataclass
class TrainedModel:
    booster: xgb.Booster
    params: dict[str, Any]
    n_rounds: int
    threshold: float
    oof_f1: float
    metrics: dict[str, float]  # holdout: roc_auc, pr_auc, f1, threshold, brier
    reference: pd.DataFrame  # up to REFERENCE_ROWS train rows, contract.model_features
    input_example: pd.DataFrame  # a few encoded train rows (the model's input)
    features: list[str] = field(default_factory=list)  # encoded, in order (shared.feature_set)
    rows: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def train_final(
    contract: Contract,
    train: pd.DataFrame,
    holdout: pd.DataFrame,
    params: Mapping[str, Any],
    *,
    best_iteration: int | None,
    seed: int,
    cv_folds: int = modelling.CV_FOLDS,
    client: Any = None,
) -> TrainedModel:
    """``client``: a Dask client (``FAASPIPE_ENGINE=dask``): the folds and the final fit run on its
    workers (``functions.train.distributed``); None: in this process."""
    import time

    import pandas as pd

    started = time.perf_counter()
    features = modelling.frame_features(contract, train)  # the contract's, + streamed aggregates
    x_train, y_train = modelling.encode_frame(contract, train), modelling.labels(contract, train)
    x_hold, y_hold = modelling.encode_frame(contract, holdout), modelling.labels(contract, holdout)
    n_rounds = (int(best_iteration) + 1) if best_iteration is not None else DEFAULT_ROUNDS
    folds = modelling.stratified_folds(y_train, n_folds=cv_folds, seed=seed)
    if client is None:
        oof = modelling.out_of_fold_predictions(
            x_train, y_train, params, n_rounds=n_rounds, seed=seed, folds=folds
        )
        booster = modelling.fit_booster(
            x_train, y_train, params, n_rounds=n_rounds, seed=seed, feature_names=features
        )
    else:
        from functions.train import distributed

        oof = distributed.out_of_fold_predictions(
            client, x_train, y_train, params, n_rounds=n_rounds, seed=seed, folds=folds
        )
        booster = distributed.fit_booster(
            client, x_train, y_train, params, n_rounds=n_rounds, seed=seed, feature_names=features
        )
    threshold, oof_f1 = modelling.best_f1_threshold(y_train, oof)
    metrics = modelling.classification_metrics(y_hold, modelling.predict(booster, x_hold), threshold)
    reference = train.sample(n=min(REFERENCE_ROWS, len(train)), random_state=seed)[
        list(contract.model_features)
    ]  # the drift reference: the contract's features (what every prediction logs)
    example = pd.DataFrame(x_train[:5], columns=features)
    return TrainedModel(
        booster=booster,
        params=dict(params),
        n_rounds=n_rounds,
        threshold=threshold,
        oof_f1=oof_f1,
        metrics=metrics,
        reference=reference.reset_index(drop=True),
        input_example=example,
        features=features,
        rows={"train": len(train), "holdout": len(holdout), "holdout_positives": int(y_hold.sum())},
        seconds=time.perf_counter() - started,
    )
