"""Train: the final model of a completed study (``study.completed`` → ``model.registered``).

Fits the best parameters on the study's train part, picks the decision threshold on
out-of-fold predictions, evaluates on the holdout, logs an MLflow run (a child of the study's
parent run) with the model in XGBoost's own JSON format, registers a new version of the
contract's model with alias ``challenger`` and writes the serving artefacts the lean predict
function loads (``model.json``, ``meta.json``, ``reference.csv`` under ``layout.serving_model``).

Idempotency: a study has at most one registered version (version tag ``faaspipe.study_id``).
The tag ``faaspipe.serving_uri`` is written last: a version carrying it is complete and a
redelivery only answers again; a version without it is completed (artefacts, tags, alias).

Replicas: the same ``study.completed`` reaching two replicas (a redelivery racing the first
delivery, an idempotency record gone) must not register two versions, and MLflow cannot
register conditionally. So the look-up-then-register runs under a fenced lease per study in the
models bucket (``shared.concurrency.Lease``, conditional writes), renewed before each registry
write; the training itself, the expensive part, runs outside it (``_train_lock`` only keeps one
training per replica, for CPU). The replica that finds the version registered under the lease
answers with it and throws its own fit away.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from events import ModelRegistered, StudyCompleted
from functions.train.fit import TrainedModel, train_final
from shared import concurrency, engine, feature_set, layout, modelling, training_sample
from shared.cloudevents_io import CloudEvent
from shared.contracts import Contract, get_contract

log = logging.getLogger("faaspipe.train")

SOURCE = "/faaspipe/functions/train"
CHALLENGER = "challenger"
TAG_STUDY = "faaspipe.study_id"
TAG_SERVING_URI = "faaspipe.serving_uri"  # written last: the version is complete
_train_lock = threading.Lock()  # one training at a time per replica (2-core box)
LEASE_TTL_S = 180.0  # renewed before each write; registration takes seconds
LEASE_WAIT_S = 240.0  # another replica registering the same study (trigger timeout PT10M)


def init() -> None:
    import mlflow.xgboost  # noqa: F401
    import pandas  # noqa: F401
    import sklearn.metrics  # noqa: F401
    import xgboost  # noqa: F401

    modelling.warm_up_mlflow()


def handle(event: CloudEvent) -> CloudEvent:
    completed = StudyCompleted.from_event(event)
    log.info("study %s completed (%s): training its final model", completed.study_id, completed.stop_reason)
    state = modelling.get_json(layout.MODELS, layout.study_state(completed.study_id))
    if state is None:
        raise modelling.rejection(f"unknown study {completed.study_id!r}")
    if not state.get("completion"):
        raise modelling.rejection(f"study {completed.study_id!r} is not completed in its state")
    contract = get_contract(state["contract"].split("@")[0])
    with _train_lock:
        return _register(completed, state, contract)


def _register(completed: StudyCompleted, state: dict[str, Any], contract: Contract) -> CloudEvent:
    client = modelling.mlflow_client()
    name = contract.model_name
    version = _version_of_study(client, name, completed.study_id)
    if version is not None and version.tags.get(TAG_SERVING_URI):
        return _answer_again(client, state, contract, completed.study_id, version)
    trained = _train(completed, state, contract)
    with _registration_lease(completed.study_id) as lease:
        version = _version_of_study(client, name, completed.study_id)  # again, under the lease
        if version is not None and version.tags.get(TAG_SERVING_URI):
            return _answer_again(client, state, contract, completed.study_id, version)
        lease.check()
        run_id = _run_of(version) if version is not None else _new_run(client, state, contract)
        _log_training(client, run_id, state, trained)
        if version is None:
            lease.check()
            version = _log_and_register(run_id, state, contract, trained)
        number = str(version.version)
        meta = _write_serving_artefacts(contract, number, run_id, state, trained)
        _tag_version(client, contract, number, state, trained, run_id)
        lease.check()
        client.set_registered_model_alias(name, CHALLENGER, number)
        client.set_model_version_tag(name, number, TAG_SERVING_URI, _serving_uri(name, number))
    _terminate(client, run_id)
    log.info(
        "%s v%s registered (alias %s): holdout ROC-AUC %.5f, PR-AUC %.4f, F1 %.4f @ %.3f, Brier %.5f",
        name,
        number,
        CHALLENGER,
        trained.metrics["roc_auc"],
        trained.metrics["pr_auc"],
        trained.metrics["f1"],
        trained.threshold,
        trained.metrics["brier"],
    )
    return _registered_event(state, contract, number, run_id, meta["metrics"])


def _answer_again(
    client: Any, state: dict[str, Any], contract: Contract, study_id: str, version: Any
) -> CloudEvent:
    """The registered event of a study registered already (a redelivery, or another replica)."""
    name = contract.model_name
    log.info("study %s is registered already as %s v%s; answering again", study_id, name, version.version)
    meta = modelling.get_json(layout.MODELS, layout.serving_model(name, str(version.version), "meta.json"))
    run_id = _run_of(version)
    _terminate(client, run_id)
    return _registered_event(state, contract, str(version.version), run_id, meta["metrics"])


@contextmanager
def _registration_lease(study_id: str) -> Iterator[concurrency.Lease]:
    """The study's registration lease, held by one replica at a time (see the module docstring)."""
    store = concurrency.S3VersionedStore(modelling.s3(), layout.MODELS)
    owner = f"train@{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:8]}"
    lease = concurrency.Lease(store, f"locks/train/{study_id}.json", owner, LEASE_TTL_S)
    lease.acquire(LEASE_WAIT_S)
    try:
        yield lease
    finally:
        lease.release()


def _train(completed: StudyCompleted, state: dict[str, Any], contract: Contract) -> TrainedModel:
    completion = state["completion"]
    best_iteration = completion.get("best_iteration")
    if best_iteration is None:
        best_iteration = next(
            (t.get("best_iteration") for t in state["trials"] if t["number"] == completion["best_trial"]),
            None,
        )
    train = modelling.parquet_from_bytes(modelling.get_bytes(layout.MODELS, state["data"]["train_key"]))
    holdout = modelling.parquet_from_bytes(modelling.get_bytes(layout.MODELS, state["data"]["holdout_key"]))
    config = state["config"]
    client = None
    if engine.settings().dask:  # FAASPIPE_ENGINE=dask: folds and the final fit on the cluster
        from shared.engine import cluster

        client = cluster.client()
        log.info(
            "study %s: final model on the Dask engine (%d workers)",
            completed.study_id,
            len(client.nthreads()),
        )
    trained = train_final(
        contract,
        train,
        holdout,
        completed.best_params,
        best_iteration=best_iteration,
        seed=int(config["seed"]),
        cv_folds=int(config["cv_folds"]),
        client=client,
    )
    log.info(
        "study %s: final model trained in %.1fs (%d rounds, threshold %.3f from OOF F1 %.4f)",
        completed.study_id,
        trained.seconds,
        trained.n_rounds,
        trained.threshold,
        trained.oof_f1,
    )
    return trained


def dataset_versions(state: dict[str, Any]) -> list[str]:
    """Every dataset version the study trained and was judged on (older states: its one version)."""
    return list(state["data"].get("dataset_versions") or [state["dataset_version"]])


def sample_lineage(state: dict[str, Any]) -> dict[str, Any] | None:
    """The lineage of the reference version's rows the study used (None: a state from before sampling)."""
    return state["data"].get("training_sample")


# --------------------------------------------------------------------------- MLflow


def _version_of_study(client: Any, name: str, study_id: str) -> Any | None:
    from mlflow.exceptions import MlflowException

    try:
        versions = client.search_model_versions(f"name = '{name}' and tags.`{TAG_STUDY}` = '{study_id}'")
    except MlflowException as exc:
        if "RESOURCE_DOES_NOT_EXIST" in str(exc):
            return None
        raise
    versions = sorted(versions, key=lambda v: int(v.version))
    if len(versions) > 1:
        log.warning("study %s has %d registered versions; using the first", study_id, len(versions))
    return versions[0] if versions else None


def _run_of(version: Any) -> str:
    """The training run of a version (the tag first: a version registered from a logged model
    may not carry the run id itself)."""
    return str(version.tags.get("faaspipe.run_id") or version.run_id)


def _new_run(client: Any, state: dict[str, Any], contract: Contract) -> str:
    experiment = state["mlflow"]["experiment_id"]
    tags = {"faaspipe.study_id": state["study_id"], "faaspipe.role": "train"}
    for stale in modelling.find_runs(client, experiment, tags):
        if stale.info.status == "RUNNING":  # an attempt that died before registering
            client.set_terminated(stale.info.run_id, "FAILED")
    run = client.create_run(
        experiment,
        run_name=f"train {state['study_id']}",
        tags={
            **tags,
            "mlflow.parentRunId": state["mlflow"]["parent_run_id"],
            "faaspipe.dataset_version": state["dataset_version"],
            "faaspipe.dataset_versions": ",".join(dataset_versions(state)),
            "faaspipe.dataset_checksum": state["data"]["checksum"],
            "faaspipe.feature_view": state["feature_view"],
            "faaspipe.contract": contract.ref,
            **training_sample.lineage_tags(sample_lineage(state)),
        },
    )
    return str(run.info.run_id)


def _log_training(client: Any, run_id: str, state: dict[str, Any], trained: TrainedModel) -> None:
    from mlflow.entities import Metric, Param

    stamp = int(time.time() * 1000)
    metrics = {f"holdout_{k}": v for k, v in trained.metrics.items()}
    metrics.update(
        oof_f1=trained.oof_f1,
        cv_roc_auc=float(state["completion"]["best_score"]),
        train_seconds=trained.seconds,
    )
    params = {**trained.params, "n_rounds": trained.n_rounds, "seed": state["config"]["seed"]}
    existing = client.get_run(run_id).data.params
    client.log_batch(
        run_id,
        metrics=[Metric(k, float(v), stamp, 0) for k, v in metrics.items()],
        params=[Param(k, str(v)) for k, v in params.items() if k not in existing],
    )


def _log_and_register(run_id: str, state: dict[str, Any], contract: Contract, trained: TrainedModel) -> Any:
    import mlflow
    import mlflow.xgboost
    import xgboost
    from mlflow.models import infer_signature

    example = trained.input_example
    signature = infer_signature(example, modelling.predict(trained.booster, example.to_numpy()))
    with mlflow.start_run(run_id=run_id):
        info = mlflow.xgboost.log_model(
            trained.booster,
            name="model",
            model_format="json",
            signature=signature,
            input_example=example,
            # explicit: MLflow's requirement inference imports the whole environment (~40 s)
            pip_requirements=[f"xgboost=={xgboost.__version__}", f"mlflow=={mlflow.__version__}"],
        )
    version = mlflow.register_model(
        info.model_uri, contract.model_name, tags={TAG_STUDY: state["study_id"], "faaspipe.run_id": run_id}
    )
    log.info(
        "registered %s v%s from run %s (%s)", contract.model_name, version.version, run_id, info.model_uri
    )
    return version


def _tag_version(
    client: Any, contract: Contract, version: str, state: dict[str, Any], trained: TrainedModel, run_id: str
) -> None:
    tags = {
        TAG_STUDY: state["study_id"],
        "faaspipe.dataset_version": state["dataset_version"],
        "faaspipe.dataset_versions": ",".join(dataset_versions(state)),
        "faaspipe.split": str(state["data"].get("split", "stratified")),
        "faaspipe.dataset_checksum": state["data"]["checksum"],
        "faaspipe.feature_view": state["feature_view"],
        "faaspipe.contract": contract.ref,
        "faaspipe.run_id": run_id,
        "faaspipe.holdout_roc_auc": f"{trained.metrics['roc_auc']:.6f}",
        "faaspipe.holdout_pr_auc": f"{trained.metrics['pr_auc']:.6f}",
        "faaspipe.threshold": f"{trained.threshold:.6f}",
        "faaspipe.feature_set": feature_set.label(feature_set.model_aggregates(contract, trained.features)),
        **training_sample.lineage_tags(sample_lineage(state)),
    }
    for key, value in tags.items():
        client.set_model_version_tag(contract.model_name, version, key, value)
    # the run too: its signature lists the features, the tag names the set (contract[+stream])
    client.set_tag(run_id, "faaspipe.feature_set", tags["faaspipe.feature_set"])


def _terminate(client: Any, run_id: str | None) -> None:
    if run_id and client.get_run(run_id).info.status != "FINISHED":
        client.set_terminated(run_id, "FINISHED")


# --------------------------------------------------------------------------- serving artefacts


def _serving_uri(name: str, version: str) -> str:
    return f"s3://{layout.MODELS}/{layout.serving_model(name, version, '')}"


def _write_serving_artefacts(
    contract: Contract, version: str, run_id: str, state: dict[str, Any], trained: TrainedModel
) -> dict[str, Any]:
    name = contract.model_name
    metrics = {
        **trained.metrics,
        "oof_f1": trained.oof_f1,
        "cv_roc_auc": float(state["completion"]["best_score"]),
    }
    meta = {
        "model_name": name,
        "version": version,
        "contract": contract.ref,
        "features": trained.features,  # the contract's encoded features, + streamed aggregates
        "feature_set": feature_set.label(feature_set.model_aggregates(contract, trained.features)),
        "raw_inputs": list(contract.raw_inputs),
        "threshold": trained.threshold,
        "metrics": metrics,
        "run_id": run_id,
        "study_id": state["study_id"],
        "dataset_version": state["dataset_version"],
        "dataset_versions": dataset_versions(state),
        "training_sample": sample_lineage(state),
        "split": state["data"].get("split", "stratified"),
        "holdout_key": state["data"]["holdout_key"],
        "dataset_checksum": state["data"]["checksum"],
        "feature_view": state["feature_view"],
        "params": trained.params,
        "n_rounds": trained.n_rounds,
        "rows": trained.rows,
        "trained_at": datetime.now(UTC).isoformat(),
        "trained_by": f"train@{os.uname().nodename}/{os.getpid()}",
    }
    model_json = bytes(trained.booster.save_raw("json"))
    reference = trained.reference.to_csv(index=False).encode()
    modelling.put_bytes(
        layout.MODELS, layout.serving_model(name, version, "model.json"), model_json, "application/json"
    )
    modelling.put_bytes(
        layout.MODELS, layout.serving_model(name, version, "reference.csv"), reference, "text/csv"
    )
    # meta.json last: a reader that finds it finds the whole set
    modelling.put_json(layout.MODELS, layout.serving_model(name, version, "meta.json"), meta)
    return meta


def _registered_event(
    state: dict[str, Any], contract: Contract, version: str, run_id: str, metrics: dict[str, Any]
) -> CloudEvent:
    name = contract.model_name
    return ModelRegistered(
        model_name=name,
        version=version,
        run_id=run_id,
        model_uri=f"models:/{name}/{version}",
        study_id=state["study_id"],
        dataset_checksum=state["data"]["checksum"],
        feature_view=state["feature_view"],
        metrics={k: float(metrics[k]) for k in ("roc_auc", "pr_auc", "f1", "threshold", "brier")},
        dataset_versions=dataset_versions(state),
        training_sample=sample_lineage(state),
    ).to_event(source=SOURCE, subject=f"{name}/{version}", id=f"{state['study_id']}.registered")
