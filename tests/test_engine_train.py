"""The final training on the Dask engine (unit, a local dask.distributed cluster in the train
environment): same params and rounds, a plain Booster that loads from XGBoost JSON, and the
same out-of-fold threshold (the folds run the in-process code on the workers)."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from tests.conftest import REPO


def test_xgboost_dask_training_gives_the_in_process_kind_of_model() -> None:
    python = REPO / ".venvs" / "train" / "bin" / "python"
    if not python.exists():
        pytest.skip("no train environment (make envs)")
    done = subprocess.run(
        [str(python), "-m", "tests.engine_train_check"],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=500,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    doc = json.loads(done.stdout.strip().splitlines()[-1])
    assert doc["workers"] == 2 and doc["type"] == "Booster"
    local, dask = doc["params"]
    assert local == dask and doc["rounds"][0] == doc["rounds"][1] == 40
    assert doc["features"][0] == doc["features"][1]
    assert doc["same_predictions_after_load"]
    assert doc["oof_f1"][0] == doc["oof_f1"][1] and doc["threshold"][0] == doc["threshold"][1]
    assert abs(doc["roc_auc"][0] - doc["roc_auc"][1]) < 0.02, doc["roc_auc"]
