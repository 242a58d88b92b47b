"""A stand-in champion for the serving tests: train, publish and register a small XGBoost model.

Two halves in one file:

* run as a script **in the train venv** (``.venvs/train/bin/python tests/fixtures_model.py
  publish --seed 1``) it trains a small XGBoost model on the AI4I CSV, writes exactly the
  serving artefacts train/promote publish (``layout.serving_model(name, version, ...)``:
  ``model.json``, ``meta.json``, ``reference.csv``), registers an MLflow model version and
  (unless ``--no-alias``) points the ``champion`` alias at it — artefacts first, alias last,
  as a real promotion does. It prints ``{"model_name", "version", "run_id", ...}`` as JSON.
* imported by the tests (platform venv): :func:`publish_models` runs the script for a stack,
  :func:`promote` moves the alias and announces it, :func:`wait_served` waits for predict,
  :func:`serving_stack` is the session stack or (``FAASPIPE_DEV_STATE_DIR``) a running one.

Versions it registers carry the tag ``faaspipe.fixture=true``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the script half runs in the train venv: stdlib imports only at module level
    import pytest

    from tests.conftest import Stack

REPO = Path(__file__).resolve().parent.parent
TRAIN_PYTHON = REPO / ".venvs" / "train" / "bin" / "python"
GENERATED_CSV = Path(tempfile.gettempdir()) / "faaspipe-fixture-ai4i-generated-2020.csv"


def dataset_csv() -> Path:
    """The real AI4I file when this machine has it (``$FAASPIPE_AI4I_CSV`` or ``../shared``), else
    an AI4I-style file from ``localdev/datagen.py`` (seed 2020, made once, written atomically)."""
    from localdev.datagen import generate, reference_dataset_path, write_csv

    real = reference_dataset_path()
    if real is not None:
        return real
    if not GENERATED_CSV.is_file():
        partial = GENERATED_CSV.with_suffix(f".{os.getpid()}.part")
        write_csv(partial, generate(10_000, seed=2020))
        partial.replace(GENERATED_CSV)
    return GENERATED_CSV


REFERENCE_ROWS = 2000
MODEL_NAME = "ai4i-machine-failure"  # contract.model_name of ai4i
TEST_CONTRACTS = REPO / "tests" / "contracts"  # FAASPIPE_CONTRACT_DIRS of the test stacks
LITE_MODEL_NAME = "ai4i-lite-failure"  # contract.model_name of tests/contracts/ai4i_lite.yaml


class _LazyHTTP:
    """A urllib3 pool created on first use (urllib3 is not needed by the script half)."""

    _pool: Any = None

    def request(self, *args: Any, **kwargs: Any) -> Any:
        if self._pool is None:
            import urllib3

            self._pool = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(connect=2, read=30))
        return self._pool.request(*args, **kwargs)


HTTP = _LazyHTTP()


# --------------------------------------------------------------------------- test side


def publish_models(
    env: dict[str, str],
    seeds: list[int],
    *,
    alias: str | None = "champion",
    contract: str = "ai4i",
    base_score: float | None = None,
) -> list[dict[str, Any]]:
    """Train + publish + register one fixture version per seed on the stack described by ``env``.

    ``alias`` (if any) goes to the first version only; the others are registered, unaliased.
    """
    args = [str(TRAIN_PYTHON), str(Path(__file__).resolve()), "publish", "--seeds", *map(str, seeds)]
    args += ["--no-alias"] if alias is None else ["--alias", alias]
    args += ["--contract", contract]
    args += [] if base_score is None else ["--base-score", str(base_score)]
    result = subprocess.run(
        args,
        cwd=REPO,
        env={
            **os.environ,
            **env,
            "PYTHONPATH": str(REPO),
            "FAASPIPE_CONTRACT_DIRS": str(TEST_CONTRACTS),
            "FAASPIPE_AI4I_CSV": str(dataset_csv()),
        },
        capture_output=True,
        text=True,
        timeout=600,
        stdin=subprocess.DEVNULL,
    )
    if result.returncode != 0:
        raise RuntimeError(f"fixture model publish failed:\n{result.stdout}\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def ai4i_rows() -> list[dict[str, Any]]:
    """The AI4I CSV as canonical rows (raw inputs typed, plus ``udi`` and ``machine_failure``)."""
    import csv

    from shared.contracts import get_contract

    contract = get_contract("ai4i")
    rename = {c.source: c.name for c in contract.columns}
    rows = []
    with dataset_csv().open(newline="") as handle:
        for raw in csv.DictReader(handle):
            row = {rename[k]: v for k, v in raw.items()}
            typed: dict[str, Any] = {
                n: row[n] if n in contract.categoricals else float(row[n]) for n in contract.raw_inputs
            }
            typed["udi"] = int(row["udi"])
            typed["machine_failure"] = int(row["machine_failure"])
            rows.append(typed)
    return rows


def serving_stack(request: pytest.FixtureRequest) -> Stack:
    """The session ``stack``, or the already-running stack in ``FAASPIPE_DEV_STATE_DIR`` (development)."""
    from tests.conftest import Stack

    dev = os.environ.get("FAASPIPE_DEV_STATE_DIR")
    if not dev:
        return request.getfixturevalue("stack")
    return Stack({**os.environ, "FAASPIPE_STATE_DIR": dev, "PYTHONPATH": str(REPO)}, Path(dev))


def function_env(stack: Stack) -> dict[str, str]:
    return stack.config.function_env()


def served_version(stack: Stack, model_name: str = MODEL_NAME) -> str | None:
    """The version the predict function reports (any replica), None without a champion."""
    resp = HTTP.request("GET", stack.config.function_url("predict") + f"v2/models/{model_name}")
    return json.loads(resp.data)["versions"][0] if resp.status == 200 else None


def set_alias(stack: Stack, version: str, alias: str = "champion", model_name: str = MODEL_NAME) -> None:
    """Move a registry alias over MLflow's REST API (what promote does)."""
    resp = HTTP.request(
        "POST",
        stack.config.url("mlflow") + "/api/2.0/mlflow/registered-models/alias",
        body=json.dumps({"name": model_name, "alias": alias, "version": version}).encode(),
        headers={"Content-Type": "application/json"},
    )
    assert resp.status == 200, resp.data


def promote(stack: Stack, version: str, previous: str | None, model_name: str = MODEL_NAME) -> None:
    """Move ``champion`` to ``version`` and announce it with ``model.promoted`` (as promote does)."""
    from events import ModelPromoted, rfc3339

    set_alias(stack, version, model_name=model_name)
    event = ModelPromoted(
        model_name=model_name,
        version=version,
        previous_version=previous,
        gates=[],
        decided_by="tests",
        decided_at=rfc3339(),
    ).to_event(source="/tests/serving", subject=model_name)
    resp = stack.post_event(event)
    assert resp.status == 202, resp.data


def wait_served(stack: Stack, version: str, timeout: float = 60.0, model_name: str = MODEL_NAME) -> None:
    """Until predict serves ``version`` on every replica (a few answers in a row agree)."""
    from tests.conftest import wait_until

    wait_until(
        lambda: all(served_version(stack, model_name) == version for _ in range(4)),
        timeout,
        interval=0.5,
        what=f"predict to serve version {version}",
    )


# --------------------------------------------------------------------------- train-venv side


def _load_frame(path: Path, name: str):  # type: ignore[no-untyped-def]
    import pandas as pd

    from shared.contracts import get_contract

    contract = get_contract(name)
    frame = pd.read_csv(path).rename(columns={c.source: c.name for c in contract.columns})
    derived = contract.derive({name: frame[name] for name in frame.columns})
    for name in contract.derived:
        frame[name] = derived[name]
    return contract, frame


def _encoded(contract, frame):  # type: ignore[no-untyped-def]
    import numpy as np

    columns = []
    for feature in contract.model_features:
        if feature in contract.categoricals:
            columns.extend((frame[feature] == v).astype("float64") for v in contract.categoricals[feature])
        else:
            columns.append(frame[feature].astype("float64"))
    return np.column_stack(columns)


def _train(seed: int, contract_name: str) -> dict[str, Any]:
    import numpy as np
    import xgboost as xgb
    from sklearn.metrics import average_precision_score, brier_score_loss, f1_score, roc_auc_score
    from sklearn.model_selection import train_test_split

    contract, frame = _load_frame(dataset_csv(), contract_name)
    train, holdout = train_test_split(frame, test_size=0.2, random_state=seed, stratify=frame[contract.label])
    features = list(contract.encoded_features)
    dtrain = xgb.DMatrix(_encoded(contract, train), label=train[contract.label], feature_names=features)
    dhold = xgb.DMatrix(_encoded(contract, holdout), label=holdout[contract.label], feature_names=features)
    params = {
        "objective": "binary:logistic",
        "eval_metric": "auc",
        "max_depth": 4,
        "eta": 0.15,
        "subsample": 0.9,
        "seed": seed,
        "nthread": 1,
    }
    booster = xgb.train(params, dtrain, num_boost_round=80)
    proba = booster.predict(dhold)
    truth = holdout[contract.label].to_numpy()
    thresholds = np.linspace(0.05, 0.95, 91)
    f1s = [f1_score(truth, proba >= t) for t in thresholds]
    threshold = float(thresholds[int(np.argmax(f1s))])
    metrics = {
        "roc_auc": float(roc_auc_score(truth, proba)),
        "pr_auc": float(average_precision_score(truth, proba)),
        "f1": float(max(f1s)),
        "threshold": threshold,
        "brier": float(brier_score_loss(truth, proba)),
    }
    reference = train.sample(n=min(REFERENCE_ROWS, len(train)), random_state=seed)[
        list(contract.model_features)
    ]
    return {
        "contract": contract,
        "booster": booster,
        "metrics": metrics,
        "threshold": threshold,
        "reference_csv": reference.to_csv(index=False).encode(),
        "params": params,
    }


def _put(s3, key: str, data: bytes, content_type: str) -> None:  # type: ignore[no-untyped-def]
    import io

    from shared import layout

    s3.put_object(layout.MODELS, key, io.BytesIO(data), len(data), content_type=content_type)


def publish(
    seed: int, alias: str | None, contract_name: str = "ai4i", base_score: float | None = None
) -> dict[str, Any]:
    """Train on ``seed``, register a version, write its serving artefacts, then set ``alias``.

    ``base_score`` replaces the trained model's base score (a probability): every margin moves
    by the same amount, so the ranking and ROC-AUC stay, and the probabilities are miscalibrated:
    a model that passes the offline gates and is worse on live traffic."""
    trained = _train(seed, contract_name)
    model_json = bytes(trained["booster"].save_raw("json"))
    if base_score is not None:
        doc = json.loads(model_json)
        params = doc["learner"]["learner_model_param"]
        params["base_score"] = (
            f"[{base_score:E}]" if params["base_score"].startswith("[") else f"{base_score:E}"
        )
        model_json = json.dumps(doc).encode()
    return publish_trained(trained, model_json, alias, f"fixture-seed-{seed}")


def publish_trained(
    trained: dict[str, Any], model_json: bytes, alias: str | None, run_name: str
) -> dict[str, Any]:
    """Register a trained model (``trained``: contract, metrics, threshold, reference_csv, params,
    and optionally ``features``, its encoded feature list) and write its serving artefacts."""
    from datetime import UTC, datetime

    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from shared import layout
    from shared.settings import s3_client

    contract = trained["contract"]
    name = contract.model_name
    mlflow.set_experiment("faaspipe-serving-fixtures")
    with mlflow.start_run(run_name=run_name) as run:
        mlflow.log_params({k: v for k, v in trained["params"].items() if k != "nthread"})
        mlflow.log_metrics(trained["metrics"])
        mlflow.log_text(model_json.decode(), "model/model.json")
    client = MlflowClient()
    try:
        client.create_registered_model(name)
    except MlflowException as exc:
        if "already exists" not in str(exc).lower() and "RESOURCE_ALREADY_EXISTS" not in str(exc):
            raise
    version = client.create_model_version(
        name, f"runs:/{run.info.run_id}/model", run.info.run_id, tags={"faaspipe.fixture": "true"}
    ).version
    meta = {
        "model_name": name,
        "version": str(version),
        "contract": contract.ref,
        "features": list(trained.get("features") or contract.encoded_features),
        "raw_inputs": list(contract.raw_inputs),
        "threshold": trained["threshold"],
        "metrics": trained["metrics"],
        "run_id": run.info.run_id,
        "study_id": run_name,
        "dataset_version": "fixture",
        "trained_at": datetime.now(UTC).isoformat(),
    }
    s3 = s3_client()
    _put(s3, layout.serving_model(name, str(version), "model.json"), model_json, "application/json")
    _put(s3, layout.serving_model(name, str(version), "reference.csv"), trained["reference_csv"], "text/csv")
    _put(
        s3,
        layout.serving_model(name, str(version), "meta.json"),
        json.dumps(meta).encode(),
        "application/json",
    )
    if alias:
        client.set_registered_model_alias(name, alias, str(version))
    return {
        "model_name": name,
        "version": str(version),
        "run_id": run.info.run_id,
        "alias": alias,
        "meta": meta,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    pub = sub.add_parser("publish", help="train, publish serving artefacts, register (and alias) a version")
    pub.add_argument("--seeds", type=int, nargs="+", default=[0])
    pub.add_argument("--alias", default="champion", help="alias set on the first version")
    pub.add_argument("--no-alias", action="store_true")
    pub.add_argument("--contract", default="ai4i", help="the data contract whose model is trained")
    pub.add_argument("--base-score", type=float, help="replace the base score: a miscalibrated model")
    args = parser.parse_args(argv)
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    alias = None if args.no_alias else args.alias
    results = [
        publish(seed, alias if i == 0 else None, args.contract, args.base_score)
        for i, seed in enumerate(args.seeds)
    ]
    print(json.dumps(results))


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
