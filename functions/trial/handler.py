"""Trial: score one hyper-parameter point of a study (``trial.requested`` → ``trial.finished``).

Stratified k-fold CV of XGBoost on the study's train part (cached per study in the process):
early stopping on each fold's validation ROC-AUC, reporting the mean/std ROC-AUC and the mean
best iteration. Every trial is an MLflow child run of the study's parent run. A failing trial
replies ``status: failed`` with the error, so the study carries on.

Multi-fidelity: every ``report_every`` boosting rounds the trial records its best mean CV score
so far in the study's shared progress records (``functions.trial.progress``, in S3), emits
``tuning.trial.progress`` and asks the study's pruner (``median`` | ``successive_halving``)
whether to stop; a stopped trial replies ``status: pruned`` with the round, and its MLflow run
ends KILLED with the tag ``faaspipe.status=pruned``. With the pruner ``none`` a trial shares
nothing: no progress records, no ``tuning.trial.progress`` (its scores by round are still logged
in its MLflow run). Every run logs ``cpu_s``, the trial's
process CPU time.

Idempotency: the reply id is derived from (study, trial); a finished child run of the same
trial is answered from MLflow instead of being computed again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from events import TrialFinished, TrialProgress, TrialRequested
from functions.trial import progress
from shared import layout, modelling
from shared.cloudevents_io import CloudEvent
from shared.contracts import get_contract
from shared.emit import emit
from shared.errors import EventRejected

log = logging.getLogger("faaspipe.trial")

SOURCE = "/faaspipe/functions/trial"
CACHED_STUDIES = 4


@dataclass(frozen=True)
class StudyData:
    study_id: str
    x: Any  # float32 matrix, contract.encoded_features
    y: Any
    folds: list[tuple[Any, Any]]
    config: dict[str, Any]
    experiment_id: str
    parent_run_id: str
    dataset_version: str
    feature_view: str


_cache: OrderedDict[str, StudyData] = OrderedDict()
_cache_lock = threading.Lock()


def init() -> None:
    import mlflow  # noqa: F401
    import pandas  # noqa: F401
    import sklearn.model_selection  # noqa: F401
    import xgboost  # noqa: F401

    modelling.warm_up_mlflow()


def handle(event: CloudEvent) -> CloudEvent:
    request = TrialRequested.from_event(event)
    try:
        data = study_data(request.study_id)
    except EventRejected:
        raise
    except Exception as exc:  # noqa: BLE001 - the study goes on without this trial
        log.exception(
            "study %s trial %d: could not load the study's data", request.study_id, request.trial_number
        )
        return _failed(request, f"loading the study data: {type(exc).__name__}: {exc}"[:1000])
    previous = _finished_run(data, request.trial_number)
    if previous is not None:
        log.info(
            "study %s trial %d: answered from its finished run %s",
            request.study_id,
            request.trial_number,
            previous.info.run_id,
        )
        return _reply_from_run(request, previous)
    started = time.perf_counter()
    cpu_started = time.process_time()
    result: modelling.CvResult | None = None
    pruned: modelling.TrialPruned | None = None
    error: str | None = None
    reporter = progress.Reporter(
        _progress_store(),
        request.study_id,
        request.trial_number,
        pruner=request.pruner,
        report_every=request.report_every,
        on_report=lambda step, score, stop: _emit_progress(request, step, score, stop),
    )
    try:
        result = modelling.cross_validate(
            data.x,
            data.y,
            request.params,
            seed=request.seed,
            folds=data.folds,
            max_rounds=int(data.config["max_rounds"]),
            early_stopping_rounds=int(data.config["early_stopping_rounds"]),
            report_every=request.report_every,
            on_checkpoint=reporter,
        )
        reporter.finish("complete")
    except modelling.TrialPruned as exc:
        pruned = exc
    except progress.ProgressUnavailable:
        raise  # the object store, not the trial: the delivery is retried
    except Exception as exc:  # noqa: BLE001 - reported as a failed trial, the study goes on
        log.exception("study %s trial %d failed", request.study_id, request.trial_number)
        error = f"{type(exc).__name__}: {exc}"[:1000]
        _finish_quietly(reporter, "failed")
    duration = time.perf_counter() - started
    cpu_s = time.process_time() - cpu_started
    if pruned is not None:
        return _pruned_reply(data, request, reporter, pruned, duration, cpu_s)
    run_id = _log_run(data, request, result, error, duration, cpu_s=cpu_s, reporter=reporter)
    if result is not None:
        log.info(
            "study %s trial %d: CV ROC-AUC %.5f ± %.5f, best iteration %d, %.2fs",
            request.study_id,
            request.trial_number,
            result.score,
            result.score_std,
            result.best_iteration,
            duration,
        )
    return TrialFinished(
        study_id=request.study_id,
        trial_number=request.trial_number,
        params=request.params,
        status="ok" if result is not None else "failed",
        score=result.score if result is not None else None,
        score_std=result.score_std if result is not None else None,
        best_iteration=result.best_iteration if result is not None else None,
        run_id=run_id,
        duration_s=round(duration, 4),
        error=error,
    ).to_event(**_reply_attributes(request))


def _pruned_reply(
    data: StudyData,
    request: TrialRequested,
    reporter: progress.Reporter,
    pruned: modelling.TrialPruned,
    duration: float,
    cpu_s: float,
) -> CloudEvent:
    run_id = _log_run(data, request, None, None, duration, cpu_s=cpu_s, reporter=reporter, pruned=pruned)
    log.info(
        "study %s trial %d pruned (%s) at round %d: CV ROC-AUC so far %.5f, %.2fs",
        request.study_id,
        request.trial_number,
        request.pruner,
        pruned.step,
        pruned.score,
        duration,
    )
    return TrialFinished(
        study_id=request.study_id,
        trial_number=request.trial_number,
        params=request.params,
        status="pruned",
        score=pruned.score,
        run_id=run_id,
        duration_s=round(duration, 4),
        pruned_step=pruned.step,
    ).to_event(**_reply_attributes(request))


_store: progress.S3ProgressStore | None = None


def _progress_store() -> progress.S3ProgressStore:
    global _store
    if _store is None:
        _store = progress.S3ProgressStore()
    return _store


def _finish_quietly(reporter: progress.Reporter, state: str) -> None:
    try:
        reporter.finish(state)
    except Exception:  # noqa: BLE001 - only the record of a trial that failed anyway
        log.warning("could not record the end of trial %d", reporter.doc.number, exc_info=True)


def _emit_progress(request: TrialRequested, step: int, score: float, stop: bool) -> None:
    """``tuning.trial.progress`` (best effort: the decision is in the shared records already)."""
    try:
        emit(
            TrialProgress(
                study_id=request.study_id,
                trial_number=request.trial_number,
                step=step,
                score=score,
                pruner=request.pruner,
                pruned=stop,
            ).to_event(
                source=SOURCE,
                subject=request.study_id,
                id=f"{request.study_id}.trial.{request.trial_number}.progress.{step}",
                extensions={"partitionkey": request.study_id},
            )
        )
    except Exception:  # noqa: BLE001
        log.warning("could not emit the progress of trial %d at round %d", request.trial_number, step)


def _failed(request: TrialRequested, error: str) -> CloudEvent:
    return TrialFinished(
        study_id=request.study_id,
        trial_number=request.trial_number,
        params=request.params,
        status="failed",
        score=None,
        duration_s=0.0,
        error=error,
    ).to_event(**_reply_attributes(request))


def study_data(study_id: str) -> StudyData:
    """The study's encoded train part, folds and tracking ids (cached per study)."""
    with _cache_lock:
        if study_id in _cache:
            _cache.move_to_end(study_id)
            return _cache[study_id]
        state = modelling.get_json(layout.MODELS, layout.study_state(study_id))
        if state is None:
            raise modelling.rejection(f"unknown study {study_id!r}: no {layout.study_state(study_id)}")
        contract = get_contract(state["contract"].split("@")[0])
        train = modelling.parquet_from_bytes(modelling.get_bytes(layout.MODELS, state["data"]["train_key"]))
        y = modelling.labels(contract, train)
        config = state["config"]
        data = StudyData(
            study_id=study_id,
            x=modelling.encode_frame(contract, train),
            y=y,
            folds=modelling.stratified_folds(y, n_folds=int(config["cv_folds"]), seed=int(config["seed"])),
            config=config,
            experiment_id=state["mlflow"]["experiment_id"],
            parent_run_id=state["mlflow"]["parent_run_id"],
            dataset_version=state["dataset_version"],
            feature_view=state["feature_view"],
        )
        _cache[study_id] = data
        while len(_cache) > CACHED_STUDIES:
            _cache.popitem(last=False)
        return data


def _reply_attributes(request: TrialRequested) -> dict[str, Any]:
    return {
        "source": SOURCE,
        "subject": request.study_id,
        "id": f"{request.study_id}.trial.{request.trial_number}.finished",
        "extensions": {"partitionkey": request.study_id},
    }


def _run_tags(data: StudyData, number: int) -> dict[str, str]:
    return {
        "faaspipe.role": "trial",
        "faaspipe.study_id": data.study_id,
        "faaspipe.trial_number": str(number),
    }


def _finished_run(data: StudyData, number: int) -> Any | None:
    """A finished child run of this trial (from an earlier delivery), successful or pruned, if any."""
    try:
        runs = modelling.find_runs(modelling.mlflow_client(), data.experiment_id, _run_tags(data, number))
    except Exception:  # noqa: BLE001 - without tracking, compute again
        log.warning("could not look for an earlier run of trial %d", number, exc_info=True)
        return None
    runs = [r for r in runs if _is_ok(r) or _is_pruned(r)]
    return runs[-1] if runs else None


def _is_ok(run: Any) -> bool:
    return bool(
        run.data.tags.get("faaspipe.status") == "ok"
        and run.info.status == "FINISHED"
        and "cv_roc_auc" in run.data.metrics
    )


def _is_pruned(run: Any) -> bool:
    return bool(
        run.data.tags.get("faaspipe.status") == "pruned"
        and run.info.status == "KILLED"
        and "faaspipe.pruned_step" in run.data.tags
        and "pruned_cv_roc_auc" in run.data.metrics
    )


def _reply_from_run(request: TrialRequested, run: Any) -> CloudEvent:
    metrics = run.data.metrics
    if _is_pruned(run):
        return TrialFinished(
            study_id=request.study_id,
            trial_number=request.trial_number,
            params=request.params,
            status="pruned",
            score=float(metrics["pruned_cv_roc_auc"]),
            run_id=run.info.run_id,
            duration_s=float(metrics.get("duration_s", 0.0)),
            pruned_step=int(run.data.tags["faaspipe.pruned_step"]),
        ).to_event(**_reply_attributes(request))
    return TrialFinished(
        study_id=request.study_id,
        trial_number=request.trial_number,
        params=request.params,
        status="ok",
        score=float(metrics["cv_roc_auc"]),
        score_std=float(metrics.get("cv_roc_auc_std", 0.0)),
        best_iteration=int(metrics.get("best_iteration", 0)),
        run_id=run.info.run_id,
        duration_s=float(metrics.get("duration_s", 0.0)),
    ).to_event(**_reply_attributes(request))


def _log_run(
    data: StudyData,
    request: TrialRequested,
    result: modelling.CvResult | None,
    error: str | None,
    duration: float,
    *,
    cpu_s: float,
    reporter: progress.Reporter,
    pruned: modelling.TrialPruned | None = None,
) -> str | None:
    """The trial's MLflow child run (best effort: a tracking outage does not fail the trial).

    A pruned trial's run ends KILLED, tagged ``faaspipe.status=pruned`` and
    ``faaspipe.pruned_step``, with its last intermediate score as ``pruned_cv_roc_auc``."""
    from mlflow.entities import Metric, Param, RunTag

    try:
        client = modelling.mlflow_client()
        run = client.create_run(
            data.experiment_id,
            run_name=f"trial-{request.trial_number:03d}",
            tags={
                "mlflow.parentRunId": data.parent_run_id,
                **_run_tags(data, request.trial_number),
                "faaspipe.dataset_version": data.dataset_version,
                "faaspipe.feature_view": data.feature_view,
            },
        )
        stamp = int(time.time() * 1000)
        metrics = [Metric("duration_s", duration, stamp, 0), Metric("cpu_s", cpu_s, stamp, 0)]
        metrics += [
            Metric("cv_roc_auc_progress", v, stamp, k) for k, v in sorted(reporter.doc.values.items())
        ]
        if pruned is not None:
            metrics += [
                Metric("pruned_cv_roc_auc", pruned.score, stamp, 0),
                Metric("rounds", float(pruned.rounds), stamp, 0),
            ]
        if result is not None:
            metrics += [
                Metric("cv_roc_auc", result.score, stamp, 0),
                Metric("cv_roc_auc_std", result.score_std, stamp, 0),
                Metric("best_iteration", float(result.best_iteration), stamp, 0),
            ]
            metrics += [Metric("fold_roc_auc", s, stamp, i) for i, s in enumerate(result.fold_scores)]
            metrics.append(Metric("rounds", float(result.rounds), stamp, 0))
        params = [Param(k, str(v)) for k, v in sorted(request.params.items())]
        params += [Param("seed", str(request.seed)), Param("cv_folds", str(len(data.folds)))]
        params += [Param("pruner", request.pruner), Param("report_every", str(request.report_every))]
        status = "pruned" if pruned is not None else "ok" if result is not None else "failed"
        tags = [RunTag("faaspipe.status", status)]
        if pruned is not None:
            tags.append(RunTag("faaspipe.pruned_step", str(pruned.step)))
        if error:
            tags.append(RunTag("faaspipe.error", error[:4000]))
        client.log_batch(run.info.run_id, metrics=metrics, params=params, tags=tags)
        end = {"pruned": "KILLED", "ok": "FINISHED", "failed": "FAILED"}[status]
        client.set_terminated(run.info.run_id, end)
        return str(run.info.run_id)
    except Exception:  # noqa: BLE001
        log.warning("could not log the MLflow run of trial %d", request.trial_number, exc_info=True)
        return None
