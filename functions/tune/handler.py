"""Tune: runs a hyper-parameter study as a conversation of events.

- ``features.materialised`` / ``retrain.requested`` → start a study: build the training frame
  (Feast point-in-time join), fix a stratified holdout, store both parts, open the MLflow parent
  run, write the study state and request the first ``parallelism`` trials (``trial.requested``).
- ``trial.finished`` → record the result, then either request the next point(s) from the
  Bayesian optimiser (rebuilt from the stored history) or, once a budget is spent or the score
  stopped improving, stop asking and complete the study when its running trials have reported:
  the handler's reply is ``tuning.study.completed``, exactly once per study. A watchdog closes
  studies whose last trials never report.

Idempotency: the study id is derived from the triggering event, trial events have ids derived
from (study, trial number), and every decision is re-derived from the state in S3, which is
written before any event leaves.

Several replicas (and threads) may handle events of one study at once: the state is changed
only by optimistic read-modify-write (``shared.concurrency.update``: conditional PUT on the
object's ETag, re-read and re-decide on a lost race). Each decision — a result recorded, trials
asked, the study closed — is taken by exactly one write that wins, and only the replica whose
write won acts on it (logs the trial on MLflow, sends the trial requests, replies
``study.completed``); a lost race sends nothing, so two replicas never hand out a trial twice,
exceed the parallelism or budget, or complete a study twice.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from datetime import datetime
from typing import Any

from events import (
    FeaturesMaterialised,
    RetrainRequested,
    StudyCompleted,
    TrialFinished,
    TrialRequested,
    rfc3339,
)
from functions.tune import study, window
from functions.tune.space import XGBOOST_SPACE, Dimension, initial_design, params_of, suggest
from shared import concurrency, contracts, layout, modelling, training_sample
from shared.cloudevents_io import CloudEvent
from shared.contracts import Contract, all_contracts
from shared.emit import emit

log = logging.getLogger("faaspipe.tune")

SOURCE = "/faaspipe/functions/tune"
WATCHDOG_INTERVAL_S = 15.0
WATCHDOG_GRACE_S = 60.0  # past the wall-time budget, a study's running trials are given up
UNSENT_GRACE_S = 30.0  # the watchdog sends a requested trial only when no replica sent it for this long
_closed_studies: set[str] = set()


def init() -> None:
    """Import the heavy modules before the replica reports ready; start the study watchdog."""
    import feast  # noqa: F401
    import mlflow  # noqa: F401
    import pandas  # noqa: F401
    import sklearn.model_selection  # noqa: F401
    import skopt  # noqa: F401

    modelling.warm_up_mlflow()

    interval = float(os.environ.get("FAASPIPE_TUNE_WATCHDOG_S", WATCHDOG_INTERVAL_S))
    if interval > 0:
        threading.Thread(target=_watchdog_loop, args=(interval,), name="study-watchdog", daemon=True).start()


def handle(event: CloudEvent) -> CloudEvent | None:
    kind = event.get_type()
    if kind == FeaturesMaterialised.TYPE:
        return _on_features_materialised(event)
    if kind == RetrainRequested.TYPE:
        return _on_retrain_requested(event)
    if kind == TrialFinished.TYPE:
        return _on_trial_finished(event)
    raise modelling.rejection(f"tune does not handle {kind}")


# --------------------------------------------------------------------------- starting a study


def _on_features_materialised(event: CloudEvent) -> None:
    data = FeaturesMaterialised.from_event(event)
    contract = all_contracts().get(data.dataset)
    if contract is None:
        raise modelling.rejection(f"no data contract for dataset {data.dataset!r}")
    if data.feature_view != contract.feature_view:
        log.info(
            "feature view %s is not the one model %s trains on; ignored",
            data.feature_view,
            contract.model_name,
        )
        return None
    _start_study(contract, data.version, data.feature_view, event)
    return None


def _on_retrain_requested(event: CloudEvent) -> None:
    data = RetrainRequested.from_event(event)
    contract = contract_for_model(data.model_name)
    latest = modelling.get_json(layout.FEATURES, layout.dataset_latest(contract.name))
    if not latest or not latest.get("version"):
        raise modelling.rejection(
            f"retrain of {data.model_name}: no materialised dataset ({layout.FEATURES}/"
            f"{layout.dataset_latest(contract.name)} is missing)"
        )
    log.info(
        "retrain of %s requested by %s (%s) on %s@%s",
        data.model_name,
        data.requested_by,
        data.reason,
        contract.name,
        latest["version"],
    )
    _start_study(
        contract, str(latest["version"]), str(latest.get("feature_view") or contract.feature_view), event
    )
    return None


def contract_for_model(model_name: str) -> Contract:
    contract = contracts.contract_for_model(model_name)
    if contract is None:
        raise modelling.rejection(f"no data contract declares model {model_name!r}")
    return contract


def _start_study(contract: Contract, version: str, feature_view: str, event: CloudEvent) -> None:
    study_id = study.study_id_for(contract.name, version, str(event.get_source()), str(event.get_id()))
    state = _load(study_id)
    if state is None:
        state = _create_study(study_id, contract, version, feature_view, event)
        if state is None:
            return  # another replica created it at the same moment: it sends the requests
        _emit_requested(state, [t["number"] for t in state["trials"]])
    else:
        log.info("study %s exists already (redelivery); not started again", study_id)
        _emit_requested(state, _unsent_for(state, time.time()))  # what a crash left unsent


def _create_study(
    study_id: str, contract: Contract, version: str, feature_view: str, event: CloudEvent
) -> dict[str, Any] | None:
    """The new study's state, written; None when another replica's creation won the race."""
    config = study.StudyConfig.from_env().with_pruner(_requested_pruner(event))
    started = time.perf_counter()
    parts = window.training_data(  # a retrain: reference + production rows, time holdout (window.py)
        contract,
        version,
        retrain=event.get_type() == RetrainRequested.TYPE,
        fraction=config.holdout_fraction,
        seed=config.seed,
    )
    frame, train, holdout = parts.frame, parts.train, parts.holdout
    for part, rows in (("train", train), ("holdout", holdout)):
        modelling.put_bytes(
            layout.MODELS,
            layout.study_data(study_id, part),
            modelling.parquet_bytes(rows),
            "application/vnd.apache.parquet",
        )
    data = {
        "train_key": layout.study_data(study_id, "train"),
        "holdout_key": layout.study_data(study_id, "holdout"),
        "rows_train": len(train),
        "rows_holdout": len(holdout),
        "positives_train": int(train[contract.label].sum()),
        "positives_holdout": int(holdout[contract.label].sum()),
        "checksum": modelling.frame_checksum(contract, frame),
        "train_checksum": modelling.frame_checksum(contract, train),
        "dataset_versions": parts.dataset_versions,
        "split": parts.split,
        "window": parts.window,
        "training_sample": parts.sample,  # the reference version's rows (shared/training_sample.py)
    }
    log.info(
        "study %s: %d train / %d holdout rows of %s@%s (%.1fs)",
        study_id,
        len(train),
        len(holdout),
        contract.name,
        version,
        time.perf_counter() - started,
    )
    trigger = {"type": event.get_type(), "source": str(event.get_source()), "id": str(event.get_id())}
    tracking = _parent_run(study_id, contract, version, feature_view, config, trigger, data)
    now = time.time()
    state = study.new_state(
        study_id=study_id,
        model_name=contract.model_name,
        contract=contract.ref,
        dataset=contract.name,
        dataset_version=version,
        feature_view=feature_view,
        trigger=trigger,
        config=config,
        space=[d.to_doc() for d in XGBOOST_SPACE],
        initial_points=initial_design(XGBOOST_SPACE, config.n_initial_points, config.seed),
        data=data,
        mlflow=tracking,
        created_at=rfc3339(),
        now=now,
    )
    _request_trials(state)
    try:
        _store().write(layout.study_state(study_id), state, expected=None)  # create, never replace
    except concurrency.Conflict:
        winner = _load(study_id) or {}
        log.info("study %s was started by another replica at the same time; left to it", study_id)
        if (winner.get("mlflow") or {}).get("parent_run_id") != tracking["parent_run_id"]:
            modelling.mlflow_client().delete_run(tracking["parent_run_id"])  # ours lost: no orphan
        return None
    log.info(
        "study %s started: %d trials, %d in parallel, %.0fs budget, patience %d",
        study_id,
        config.n_trials,
        config.parallelism,
        config.max_seconds,
        config.patience,
    )
    return state


def _requested_pruner(event: CloudEvent) -> str | None:
    """The pruner a ``retrain.requested`` asks for (None: the configured default)."""
    if event.get_type() != RetrainRequested.TYPE:
        return None
    return RetrainRequested.from_event(event).pruner


def _parent_run(
    study_id: str,
    contract: Contract,
    version: str,
    feature_view: str,
    config: study.StudyConfig,
    trigger: dict[str, str],
    data: dict[str, Any],
) -> dict[str, str]:
    """The study's MLflow parent run (found again on a redelivery, never created twice)."""
    from mlflow.entities import Param

    client = modelling.mlflow_client()
    experiment = modelling.experiment_id(client, contract.model_name)
    found = modelling.find_runs(client, experiment, {"faaspipe.study_id": study_id, "faaspipe.role": "study"})
    if found:
        return {"experiment_id": experiment, "parent_run_id": found[0].info.run_id}
    run = client.create_run(
        experiment,
        run_name=f"study {study_id}",
        tags={
            "faaspipe.role": "study",
            "faaspipe.study_id": study_id,
            "faaspipe.dataset": contract.name,
            "faaspipe.dataset_version": version,
            "faaspipe.dataset_checksum": data["checksum"],
            "faaspipe.dataset_versions": ",".join(data["dataset_versions"]),
            "faaspipe.split": data["split"],
            "faaspipe.feature_view": feature_view,
            "faaspipe.contract": contract.ref,
            "faaspipe.trigger_type": trigger["type"],
            "faaspipe.trigger_id": trigger["id"],
            **training_sample.lineage_tags(data.get("training_sample")),
        },
    )
    params = {f"study.{k}": v for k, v in config.to_doc().items()}
    params.update({f"space.{d.name}": f"{d.kind}[{d.low}, {d.high}] {d.prior}" for d in XGBOOST_SPACE})
    params.update({"data.rows_train": data["rows_train"], "data.rows_holdout": data["rows_holdout"]})
    client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()])
    return {"experiment_id": experiment, "parent_run_id": run.info.run_id}


# --------------------------------------------------------------------------- trial results


def _on_trial_finished(event: CloudEvent) -> CloudEvent | None:
    result = TrialFinished.from_event(event)
    by = {"source": str(event.get_source()), "id": str(event.get_id())}
    now = time.time()

    def change(state: dict[str, Any] | None) -> tuple[dict[str, Any], dict[str, Any]]:
        """Record the result and decide what follows (pure: runs again on a lost race)."""
        if state is None:
            raise modelling.rejection(f"trial.finished for unknown study {result.study_id!r}")
        try:
            recorded = study.record_result(state, result.to_data(), at=rfc3339())
        except study.UnknownTrial as exc:
            raise modelling.rejection(str(exc)) from exc
        if study.is_closed(state):
            completion = state.get("completion")
            again = bool(completion and completion.get("by") == by)  # the completing event, again
            return state, {"recorded": recorded, "next": "reply_again" if again else "closed"}
        reason = study.decide_stop(state, now)
        if reason is not None:
            if not study.pending(state):
                return state, {"recorded": recorded, "next": _close_state(state, reason, by)}
            return state, {"recorded": recorded, "next": "waiting", "reason": reason}
        numbers = _request_trials(state)
        return state, {"recorded": recorded, "next": "requested", "numbers": numbers}

    outcome = _update(result.study_id, change)
    state, what = outcome.doc, outcome.result
    if what["recorded"]:
        entry = study.trial(state, result.trial_number)
        log.info(
            "study %s: trial %d %s score=%s (%.1fs)%s",
            result.study_id,
            result.trial_number,
            entry["status"],
            entry.get("score"),
            result.duration_s,
            " after completion" if entry.get("late") else "",
        )
        _track_trial(state, entry)
    else:
        log.info(
            "study %s: trial %d was already recorded; not counted again", result.study_id, result.trial_number
        )
    if what["next"] == "reply_again":
        return _completion_reply(state)
    if what["next"] == "closed":
        return None
    if what["next"] in ("completed", "failed"):
        return _after_close(state)
    if what["next"] == "waiting":
        running = [t["number"] for t in study.pending(state)]
        log.info(
            "study %s stops (%s): waiting for running trials %s", result.study_id, what["reason"], running
        )
        return None
    # our write asked for these trials: we send them. A repeat also sends what a crash left unsent
    # (unsent for UNSENT_GRACE_S: younger ones are being sent by the replica that asked for them).
    late = [] if what["recorded"] else _unsent_for(state, time.time())
    _emit_requested(state, [*what["numbers"], *late])
    return None


def _request_trials(state: dict[str, Any]) -> list[int]:
    """Ask the optimiser for as many points as keep ``parallelism`` trials running (in the state
    only: they are sent once the state is written); the numbers asked."""
    numbers = study.numbers_to_request(state)
    space = [Dimension.from_doc(d) for d in state["space"]]
    for number in numbers:
        x = _next_point(state, space, number)
        study.add_request(state, x, params_of(space, x), at=rfc3339())
    return numbers


def _next_point(state: dict[str, Any], space: list[Dimension], number: int) -> list[float | int]:
    if number < len(state["initial_points"]):
        return list(state["initial_points"][number])
    config = study.config_of(state)
    ordered = sorted(state["trials"], key=lambda t: t["number"])
    # a pruned trial counts with its last intermediate score (a pessimistic one, as Optuna's TPE ranks it)
    done = [(t["x"], t["score"]) for t in ordered if t["status"] in ("ok", "pruned")]
    running = [t["x"] for t in ordered if t["status"] == "requested"]
    started = time.perf_counter()
    x = suggest(space, done, running, seed=config.seed + number, acq_func=config.acq_func)
    log.info(
        "study %s: trial %d suggested by the GP from %d results, %d running (%.2fs)",
        state["study_id"],
        number,
        len(done),
        len(running),
        time.perf_counter() - started,
    )
    return x


def _close_state(state: dict[str, Any], reason: str, by: dict[str, str]) -> str:
    """Complete the study in its state (fail it when no trial succeeded): "completed" | "failed"."""
    if study.best_trial(state) is None:
        study.fail(state, reason, by=by, at=rfc3339())
        return "failed"
    study.complete(state, reason, by=by, at=rfc3339())
    return "completed"


def _after_close(state: dict[str, Any]) -> CloudEvent | None:
    """What the replica whose write closed the study does: the reply, or the failure's record."""
    if state.get("failure"):
        failure = state["failure"]
        log.error(
            "study %s stopped (%s) without any successful trial: %s",
            state["study_id"],
            failure["stop_reason"],
            failure["errors"],
        )
        _terminate_parent(state, "FAILED")
        return None
    completion = state["completion"]
    log.info(
        "study %s completed (%s) after %d trials: best trial %d, CV ROC-AUC %.5f",
        state["study_id"],
        completion["stop_reason"],
        completion["n_trials"],
        completion["best_trial"],
        completion["best_score"],
    )
    return _completion_reply(state)


def _completion_reply(state: dict[str, Any]) -> CloudEvent:
    """The study.completed reply (same id every time), after closing the parent run."""
    completion = state["completion"]
    _terminate_parent(state, "FINISHED")
    return StudyCompleted(
        study_id=state["study_id"],
        parent_run_id=state["mlflow"]["parent_run_id"],
        dataset_version=state["dataset_version"],
        feature_view=state["feature_view"],
        best_params=completion["best_params"],
        best_score=completion["best_score"],
        n_trials=completion["n_trials"],
        stop_reason=completion["stop_reason"],
        n_pruned=int(completion.get("n_pruned", 0)),
        dataset_versions=dataset_versions(state),
        training_sample=state["data"].get("training_sample"),
    ).to_event(source=SOURCE, subject=state["study_id"], id=f"{state['study_id']}.completed")


def dataset_versions(state: dict[str, Any]) -> list[str]:
    """Every dataset version a study used (states before windows: its one version)."""
    return list(state["data"].get("dataset_versions") or [state["dataset_version"]])


# --------------------------------------------------------------------------- tracking


def _track_trial(state: dict[str, Any], entry: dict[str, Any]) -> None:
    """The study's curve on the parent run (best effort: the child run has the details)."""
    from mlflow.entities import Metric

    if entry["status"] != "ok" or entry.get("late"):
        return
    best = study.best_trial(state)
    stamp = int(time.time() * 1000)
    metrics = [Metric("trial_cv_roc_auc", entry["score"], stamp, entry["number"])]
    if best is not None:
        metrics.append(Metric("best_cv_roc_auc", best["score"], stamp, entry["finish_seq"]))
    try:
        modelling.mlflow_client().log_batch(state["mlflow"]["parent_run_id"], metrics=metrics)
    except Exception:  # noqa: BLE001 - tracking must not stop the study
        log.warning("could not log trial %d on the parent run", entry["number"], exc_info=True)


def _terminate_parent(state: dict[str, Any], status: str) -> None:
    from mlflow.entities import Metric

    client = modelling.mlflow_client()
    run_id = state["mlflow"]["parent_run_id"]
    if client.get_run(run_id).info.status == status:
        return
    outcome = state.get("completion") or state.get("failure") or {}
    stamp = int(time.time() * 1000)
    metrics = [Metric("n_trials", float(len(study.finished(state))), stamp, 0)]
    if state.get("completion"):
        metrics.append(Metric("best_cv_roc_auc_final", float(outcome["best_score"]), stamp, 0))
        client.set_tag(run_id, "faaspipe.best_trial", str(outcome["best_trial"]))
    client.log_batch(run_id, metrics=metrics)
    client.set_tag(run_id, "faaspipe.stop_reason", str(outcome.get("stop_reason")))
    client.log_dict(run_id, state, "study_state.json")
    client.set_terminated(run_id, status)


# --------------------------------------------------------------------------- state and events


_state_store: concurrency.S3VersionedStore | None = None


def _store() -> concurrency.S3VersionedStore:
    global _state_store
    if _state_store is None:
        _state_store = concurrency.S3VersionedStore(modelling.s3(), layout.MODELS)
    return _state_store


def _load(study_id: str) -> dict[str, Any] | None:
    return modelling.get_json(layout.MODELS, layout.study_state(study_id))


def _update(study_id: str, change: Any) -> concurrency.Outcome[Any]:
    """Read-modify-write of the study state with a conditional PUT (see the module docstring)."""
    return concurrency.update(_store(), layout.study_state(study_id), change)


def _emit_requested(state: dict[str, Any], numbers: list[int]) -> None:
    """Send ``trial.requested`` for those of ``numbers`` not sent yet, then mark them sent.

    The replica whose write asked for a trial sends it; others send it only once it stayed
    unsent for ``UNSENT_GRACE_S`` (the asker died). Ids are derived from (study, trial), so the
    rare resend is a duplicate the trial function's idempotency drops, never a second trial."""
    waiting = [t for t in study.unemitted(state) if t["number"] in numbers]
    for entry in waiting:
        emit(
            TrialRequested(
                study_id=state["study_id"],
                trial_number=entry["number"],
                params=entry["params"],
                dataset_version=state["dataset_version"],
                feature_view=state["feature_view"],
                seed=int(study.config_of(state).seed),
                pruner=study.config_of(state).pruner,
                report_every=study.config_of(state).pruner_report_every,
            ).to_event(
                source=SOURCE,
                subject=state["study_id"],
                id=f"{state['study_id']}.trial.{entry['number']}",
                extensions={"partitionkey": state["study_id"]},
            )
        )
    if not waiting:
        return
    sent = {t["number"] for t in waiting}

    def mark(current: dict[str, Any] | None) -> tuple[dict[str, Any] | None, None]:
        todo = [t for t in (current or {}).get("trials", []) if t["number"] in sent and not t.get("emitted")]
        for entry in todo:
            entry["emitted"] = True
        return (current if todo else None), None

    _update(state["study_id"], mark)
    for entry in waiting:
        entry["emitted"] = True
    log.info("study %s: requested trials %s", state["study_id"], sorted(sent))


def _unsent_for(state: dict[str, Any], now: float) -> list[int]:
    """Requested trials nobody sent for ``UNSENT_GRACE_S`` (the replica that asked for them died)."""
    late = []
    for entry in study.unemitted(state):
        asked = datetime.fromisoformat(str(entry["requested_at"]).replace("Z", "+00:00")).timestamp()
        if now - asked >= UNSENT_GRACE_S:
            late.append(entry["number"])
    return late


# --------------------------------------------------------------------------- watchdog


def _watchdog_loop(interval: float) -> None:
    while True:
        time.sleep(interval)
        try:
            watchdog_pass(time.time())
        except Exception:  # noqa: BLE001 - try again next time
            log.warning("study watchdog pass failed", exc_info=True)


def _open_study_ids() -> list[str]:
    prefix, suffix = layout.study_state("\0").split("\0")
    keys = (o.object_name for o in modelling.s3().list_objects(layout.MODELS, prefix=prefix, recursive=True))
    ids = (k[len(prefix) : -len(suffix)] for k in keys if k.endswith(suffix))
    return [i for i in ids if i and "/" not in i and i not in _closed_studies]


def watchdog_pass(now: float) -> list[str]:
    """Move studies on that no event will move on; returns the ids acted on.

    - trial requests a crash left unsent (for ``UNSENT_GRACE_S``) are sent (normally the
      redelivered event does it);
    - a study past its wall-time budget (plus a grace period) whose running trials never
      reported — lost, dead-lettered — is completed (with the reason it was stopping for, else
      ``budget_time``; ``study.completed`` is emitted, same id as ever), or failed when no trial
      succeeded. Every replica runs this pass: the conditional write decides which one closes.
    """
    acted: list[str] = []
    for study_id in _open_study_ids():
        state = _load(study_id)
        if state is None or study.is_closed(state):
            _closed_studies.add(study_id)
            continue
        unsent = _unsent_for(state, now)
        if unsent:
            _emit_requested(state, unsent)
            acted.append(study_id)
        if now - float(state["created_ts"]) < study.config_of(state).max_seconds + WATCHDOG_GRACE_S:
            continue

        def close(current: dict[str, Any] | None) -> tuple[dict[str, Any] | None, str | None]:
            if current is None or study.is_closed(current):
                return None, None
            reason = (current.get("stopping") or {}).get("reason") or "budget_time"
            by = {"source": f"{SOURCE}/watchdog", "id": f"{current['study_id']}.{reason}"}
            return current, _close_state(current, reason, by)

        outcome = _update(study_id, close)
        _closed_studies.add(study_id)
        if not outcome.written:
            continue  # closed meanwhile, by an event or another replica's watchdog
        waiting = [t["number"] for t in study.pending(outcome.doc)]
        log.warning(
            "study %s was past its time budget with trials %s still running: closed", study_id, waiting
        )
        reply = _after_close(outcome.doc)
        if reply is not None:
            emit(reply)
        acted.append(study_id)
    return acted
