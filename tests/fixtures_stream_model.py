"""A champion trained on the streamed rolling aggregates, for the streaming tests.

* run as a script **in the train venv** (``.venvs/train/bin/python tests/fixtures_stream_model.py
  ROWS.json``): the labelled rows (entity key, ``event_timestamp``, label, raw inputs) become a
  training frame (``modelling.prepare_frame``), the stream view's offline parts are joined onto
  it point-in-time by the pipeline's own code (``shared.stream_join.join_aggregates``, what
  ``modelling.load_training_frame`` calls), the model is fitted by train's ``train_final`` (its
  feature list: the contract's, then the aggregates) and published like a fixture model
  (``tests/fixtures_model.publish_trained``, alias ``champion``). It fails if the join did not
  give the aggregates. It prints ``{"model_name", "version", "meta", ...}`` as JSON.
* imported by the tests: :func:`publish_stream_model` runs it for a stack.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
TRAIN_PYTHON = REPO / ".venvs" / "train" / "bin" / "python"
TEST_CONTRACTS = REPO / "tests" / "contracts"
PARAMS = {"max_depth": 2, "eta": 0.3}
ROUNDS = 20


def publish_stream_model(env: dict[str, str], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Train on ``rows`` + their streamed aggregates, publish, alias ``champion`` (test side)."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump(rows, handle)
    try:
        result = subprocess.run(
            [str(TRAIN_PYTHON), str(Path(__file__).resolve()), handle.name],
            cwd=REPO,
            env={**os.environ, **env, "PYTHONPATH": str(REPO), "FAASPIPE_CONTRACT_DIRS": str(TEST_CONTRACTS)},
            capture_output=True,
            text=True,
            timeout=600,
            stdin=subprocess.DEVNULL,
        )
    finally:
        os.unlink(handle.name)
    if result.returncode != 0:
        raise RuntimeError(f"stream model publish failed:\n{result.stdout}\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def train_and_publish(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Train-venv side."""
    import pandas as pd

    from functions.train.fit import train_final
    from shared import feature_set, modelling
    from shared.contracts import get_contract
    from shared.stream_join import join_aggregates
    from tests.fixtures_model import publish_trained

    contract = get_contract("ai4i")
    frame = pd.DataFrame(rows)
    frame[modelling.EVENT_TIMESTAMP] = pd.to_datetime(frame[modelling.EVENT_TIMESTAMP], utc=True)
    frame = modelling.prepare_frame(contract, frame)
    joined = modelling.prepare_frame(contract, join_aggregates(contract, frame))
    aggregates = feature_set.aggregates_in(contract, joined.columns)
    if not aggregates:
        raise SystemExit(f"the stream did not cover the training rows: columns {list(joined.columns)}")
    train, holdout = modelling.split_holdout(contract, joined)
    trained = train_final(contract, train, holdout, PARAMS, best_iteration=ROUNDS - 1, seed=1)
    return publish_trained(
        {
            "contract": contract,
            "metrics": trained.metrics,
            "threshold": trained.threshold,
            "reference_csv": trained.reference.to_csv(index=False).encode(),
            "params": trained.params,
            "features": trained.features,
        },
        bytes(trained.booster.save_raw("json")),
        "champion",
        "fixture-stream",
    )


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    print(json.dumps(train_and_publish(json.loads(Path(sys.argv[1]).read_text()))))
