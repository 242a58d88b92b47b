"""The final training on a Dask cluster (``FAASPIPE_ENGINE=dask``): the same parameters, the
same kind of model.

- the out-of-fold predictions: one task per fold on the workers (``modelling.fit_booster`` as
  in process, folds fitted side by side instead of one after the other);
- the final model: ``xgboost.dask.train`` over the train part split in one partition per
  worker (data-parallel ``hist``, gradients all-reduced by XGBoost's collective), with
  ``modelling.booster_params`` and ``nthread`` the workers' thread count. What comes back is a
  plain ``xgboost.Booster`` (``nthread`` reset to 1 like ``modelling.fit_booster``), logged to
  MLflow in XGBoost's JSON like the in-process one, so predict loads it unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from shared import modelling

if TYPE_CHECKING:
    import numpy as np
    import xgboost as xgb
    import xgboost.dask  # noqa: F401  (xgb.dask)

__all__ = ["fit_booster", "out_of_fold_predictions"]


def _fold(
    x: np.ndarray,
    y: np.ndarray,
    train_idx: Any,
    valid_idx: Any,
    params: Mapping[str, Any],
    n_rounds: int,
    seed: int,
) -> np.ndarray:
    booster = modelling.fit_booster(x[train_idx], y[train_idx], params, n_rounds=n_rounds, seed=seed)
    return modelling.predict(booster, x[valid_idx])


def out_of_fold_predictions(
    client: Any,
    x: np.ndarray,
    y: np.ndarray,
    params: Mapping[str, Any],
    *,
    n_rounds: int,
    seed: int,
    folds: Sequence[tuple[Any, Any]],
) -> np.ndarray:
    """``modelling.out_of_fold_predictions``, one fold per task on ``client``'s workers."""
    import numpy as np

    x_future, y_future = client.scatter([x, y], broadcast=True)
    futures = [
        client.submit(_fold, x_future, y_future, t, v, dict(params), n_rounds, seed, pure=False)
        for t, v in folds
    ]
    out = np.full(len(y), np.nan, dtype=np.float64)
    for (_, valid_idx), predictions in zip(folds, client.gather(futures), strict=True):
        out[valid_idx] = predictions
    if np.isnan(out).any():
        raise ValueError("folds do not cover every row")
    return out


def fit_booster(
    client: Any,
    x: np.ndarray,
    y: np.ndarray,
    params: Mapping[str, Any],
    *,
    n_rounds: int,
    seed: int,
    feature_names: Sequence[str] | None = None,
) -> xgb.Booster:
    """``modelling.fit_booster`` with ``xgboost.dask.train`` on ``client``'s workers."""
    import dask.array as da
    import xgboost as xgb
    import xgboost.dask  # noqa: F401  (xgb.dask)

    nthreads = client.nthreads()
    per_worker = max(1, min(nthreads.values()))
    rows = max(1, -(-len(y) // max(1, len(nthreads))))  # one partition per worker
    booster_params = {**modelling.booster_params(params, seed), "nthread": per_worker}
    with client.as_current():  # xgboost.dask checks the client's type against get_client()'s
        train = xgb.dask.DaskDMatrix(
            client,
            da.from_array(x, chunks=(rows, x.shape[1])),
            da.from_array(y, chunks=(rows,)),
            feature_names=list(feature_names) if feature_names else None,
        )
        output = xgb.dask.train(client, booster_params, train, num_boost_round=n_rounds)
    booster: xgb.Booster = output["booster"]
    booster.set_param({"nthread": 1})
    return booster
