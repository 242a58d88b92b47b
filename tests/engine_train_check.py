"""Run in the train environment by tests/test_engine_train.py: the final training in process and
on the Dask engine (a LocalCluster), same data, params and seed; prints a JSON summary."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import pandas as pd
import xgboost as xgb

from functions.train.fit import train_final
from localdev.datagen import generate
from shared import modelling
from shared.contracts import get_contract
from shared.engine import EngineSettings
from shared.engine import cluster as engine_cluster

PARAMS = {"max_depth": 4, "eta": 0.2, "min_child_weight": 2}


def main() -> None:
    contract = get_contract("ai4i")
    frame = modelling.prepare_frame(contract, pd.DataFrame(generate(3000, 7)))
    train, holdout = modelling.split_holdout(contract, frame, seed=3)
    local = train_final(contract, train, holdout, PARAMS, best_iteration=39, seed=3, cv_folds=3)
    client = engine_cluster.new(EngineSettings("dask", None, workers=2, threads=1))
    try:
        workers = len(client.nthreads())
        dask = train_final(
            contract, train, holdout, PARAMS, best_iteration=39, seed=3, cv_folds=3, client=client
        )
    finally:
        engine_cluster.close(client)
    with tempfile.TemporaryDirectory() as tmp:  # what MLflow and the serving artefacts hold
        path = Path(tmp) / "model.json"
        dask.booster.save_model(path)
        loaded = xgb.Booster(model_file=str(path))
    x_hold = modelling.encode_frame(contract, holdout)
    same_predictions = bool(
        (modelling.predict(loaded, x_hold) == modelling.predict(dask.booster, x_hold)).all()
    )

    def params_of(booster: xgb.Booster) -> dict[str, str]:
        config = json.loads(booster.save_config())["learner"]["gradient_booster"]["tree_train_param"]
        return {k: config[k] for k in ("max_depth", "eta", "min_child_weight")}

    print(
        json.dumps(
            {
                "workers": workers,
                "type": type(loaded).__name__,
                "rounds": [local.booster.num_boosted_rounds(), dask.booster.num_boosted_rounds()],
                "params": [params_of(local.booster), params_of(dask.booster)],
                "features": [local.booster.feature_names, loaded.feature_names],
                "roc_auc": [local.metrics["roc_auc"], dask.metrics["roc_auc"]],
                "oof_f1": [local.oof_f1, dask.oof_f1],
                "threshold": [local.threshold, dask.threshold],
                "same_predictions_after_load": same_predictions,
            }
        )
    )


if __name__ == "__main__":
    sys.exit(main())
