"""monitor: feature drift and performance drift of the served models.

* ``dev.faaspipe.prediction.logged.v1``, read from the prediction-log topic by a Kafka
  source → the prediction joins its model version's window; a closed window
  (``FAASPIPE_DRIFT_WINDOW_SIZE`` predictions, default 500, or
  ``FAASPIPE_DRIFT_WINDOW_SECONDS``, default 300, with at least ``FAASPIPE_DRIFT_MIN_WINDOW``)
  is tested against the version's ``reference.csv`` (KS + chi-square, see ``drift.py``);
  drift → ``dev.faaspipe.drift.detected.v1`` (kind ``feature``), emitted to the broker (a
  Kafka source drops replies).
* ``dev.faaspipe.object.created.v1`` for ``labels/…`` in the landing bucket → the labels are
  joined on the stored predictions (``request_id`` or ``udi``); ROC-AUC / F1 of the latest
  labelled window vs the holdout metrics in ``meta.json``; a drop beyond the tolerance →
  ``drift.detected`` (kind ``performance``). The labelled predictions are written as a file
  of the model's data contract to ``landing/<dataset>/production/`` (``production.py``), so
  ingest validates them into a dataset version of origin ``production``, the training data
  of the retrain; a performance drift is announced once that file was ingested (or after
  ``FAASPIPE_PRODUCTION_INGEST_WAIT_S``), so the retrain it starts finds it.
* ``dev.faaspipe.label.recorded.v1`` (one label or a small batch, by request id) → the same
  as a labels file: joined on the stored predictions, performance checked, the labelled rows
  written as a production file (stem ``events-<hash of source+id>``), so ingest validates them
  into the same ``production`` dataset. A truth outside the contract's label domain rejects
  the whole event (422, dead-lettered with the reason: nothing of it applied, nothing lost); a
  request id no stored prediction has yet is kept pending in the store and joined by a later
  label event once its prediction arrived (the prediction log is asynchronous).
* a prediction logged during a rollout (``rollout`` set) is also kept as a rollout
  observation; a timer (``FAASPIPE_ROLLOUT_CHECK_SECONDS``, default 2) judges each undecided
  rollout against its registry tag (``rollout.py``) and emits ``dev.faaspipe.rollout.decided.v1``
  once. Shadow rows (the candidate's mirrored answers) are only rollout observations: they
  never join the drift windows or the predictions the labels are joined on.

State: in the store (``store.py``: PostgreSQL at ``FAASPIPE_DATABASE_URL`` on the cluster, else
SQLite at ``$FAASPIPE_STATE_DIR/monitor/monitor.db``), never in a replica's memory. The open
windows are the stored predictions no window covered yet, and a window is claimed by exactly
one replica when it closes (``windows.py``); the judge of a rollout announces its decision
once under a fixed event id. So the monitor runs with several replicas, and a restart loses
at most the predictions still in flight in the broker (redelivered anyway).

Redelivery: the runtime drops duplicate events and replays the stored reply (idempotent), and
the store ignores an event id it already has, so a prediction never counts twice.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from minio.error import S3Error
from prometheus_client import Counter, Gauge, Histogram

from events import DriftDetected, LabelRecorded, ObjectCreated, PredictionLogged, RolloutDecided, rfc3339
from functions.monitor import production
from functions.monitor import rollout as judge
from functions.monitor.drift import DETECTOR_NAME, ReferenceCache
from functions.monitor.performance import (
    LabelsFileError,
    PerformanceConfig,
    PerformanceResult,
    evaluate,
    parse_labels_csv,
)
from functions.monitor.store import MonitorStore, RolloutObservation, StoredPrediction
from functions.monitor.windows import ClosedWindow, WindowConfig, Windows
from shared import layout, settings
from shared.cloudevents_io import CloudEvent
from shared.contracts import Contract, get_contract
from shared.emit import emit
from shared.errors import EventRejected
from shared.registry_alias import RegistryClient
from shared.rollout import ROLLOUT_TAG, Rollout
from shared.sqldb import DATABASE_URL_ENV

log = logging.getLogger("faaspipe.monitor")


SOURCE = "/faaspipe/functions/monitor"
LABELS_PREFIX = "labels/"
NAMESPACE = uuid.UUID("6f3c1e52-9d7a-4b8e-a1d2-5c0b7e9f4a10")

PREDICTIONS = Counter("faaspipe_monitor_predictions_total", "Logged predictions seen", ["outcome"])
WINDOW_FILL = Gauge("faaspipe_monitor_window_fill", "Predictions in the open window", ["model", "version"])
CHECKS = Counter(
    "faaspipe_monitor_drift_checks_total", "Drift checks run", ["model", "version", "kind", "outcome"]
)
CHECK_SECONDS = Histogram("faaspipe_monitor_check_seconds", "Duration of a drift check", ["kind"])
LABELS_JOINED = Counter("faaspipe_monitor_labels_joined_total", "Labels joined on a stored prediction")
LABELS_PENDING = Counter(
    "faaspipe_monitor_labels_pending_total", "Posted labels kept for a prediction not stored yet"
)
ROLLOUT_DECISIONS = Counter(
    "faaspipe_monitor_rollout_decisions_total", "Rollouts decided on live signals", ["model", "decision"]
)


class Monitor:
    def __init__(self, contract: Contract, state_dir: Path, p_val: float) -> None:
        self.contract = contract
        self.p_val = p_val
        self.s3 = settings.s3_client()
        self.performance = PerformanceConfig.from_env()
        self.production = production.ProductionConfig.from_env()
        self.store = MonitorStore(
            os.environ.get(DATABASE_URL_ENV) or state_dir / "monitor" / "monitor.db",
            int(os.environ.get("FAASPIPE_MONITOR_KEEP_PREDICTIONS", "100000")),
        )
        self.windows = Windows(WindowConfig.from_env(), self.store)
        self.references = ReferenceCache(self.s3, contract, p_val)
        self._meta: dict[tuple[str, str], dict[str, Any]] = {}
        self._stop = threading.Event()
        self._registry_client: RegistryClient | None = None

    # ------------------------------------------------------------------ predictions
    def on_prediction(self, event: CloudEvent) -> None:
        """Record one logged prediction; a window it closes is checked and drift emitted.

        Predictions arrive from a Kafka source, which drops replies: drift goes to the
        broker with ``emit``, not as a reply."""
        logged = PredictionLogged.from_event(event)
        predicted_at = event.get_time() or datetime.now(UTC)
        if logged.rollout is not None:
            new = self.record_rollout(event.get_id(), logged, predicted_at)
            if logged.rollout["variant"] == "shadow":  # not served: no window, no label join
                PREDICTIONS.labels("shadow" if new else "duplicate").inc()
                return
        stored = StoredPrediction(
            event_id=event.get_id(),
            request_id=logged.request_id,
            entity_id=None if logged.entity_id is None else str(logged.entity_id),
            model_name=logged.model_name,
            model_version=logged.model_version,
            probability=float(logged.output["probability"]),
            label=int(logged.output["label"]),
            predicted_at=predicted_at.isoformat(),
            inputs=dict(logged.inputs),
        )
        if not self.store.add_prediction(stored):
            PREDICTIONS.labels("duplicate").inc()
            return
        PREDICTIONS.labels("new").inc()
        closed = self.windows.after_insert((logged.model_name, logged.model_version))
        if closed is not None:
            self._emit_if_drift(closed)

    def check_window(self, window: ClosedWindow) -> CloudEvent | None:
        """Run the feature-drift tests on a closed window; the drift event, if any."""
        labels = (window.model_name, window.model_version)
        if window.reason == "expired":
            log.info(
                "%s v%s: dropping a window of %d predictions that never reached %d",
                *labels,
                window.size,
                self.windows.config.min_size,
            )
            CHECKS.labels(*labels, "feature", "expired").inc()
            return None
        started = time.perf_counter()
        try:
            detector = self.references.get(*labels)
        except S3Error as exc:
            log.warning("no drift reference for %s v%s (%s); window of %d skipped", *labels, exc, window.size)
            CHECKS.labels(*labels, "feature", "no_reference").inc()
            return None
        rows = [o.inputs for o in window.observations]
        try:
            result = detector.check(rows)
        except (KeyError, ValueError) as exc:
            log.warning("window of %s v%s has unusable inputs (%s); skipped", *labels, exc)
            CHECKS.labels(*labels, "feature", "bad_inputs").inc()
            return None
        CHECK_SECONDS.labels("feature").observe(time.perf_counter() - started)
        outcome = "drift" if result.is_drift else "no_drift"
        CHECKS.labels(*labels, "feature", outcome).inc()
        log.info(
            "%s v%s window of %d (%s, %s..%s): %s %s",
            *labels,
            window.size,
            window.reason,
            rfc3339(window.start),
            rfc3339(window.end),
            outcome,
            {f: round(p, 5) for f, p in result.p_values.items()},
        )
        if not result.is_drift:
            return None
        first, last = window.observations[0].event_id, window.observations[-1].event_id
        return DriftDetected(
            kind="feature",
            detector=DETECTOR_NAME,
            model_name=window.model_name,
            model_version=window.model_version,
            p_values=result.p_values,
            threshold=self.p_val,
            drifted_features=result.drifted,
            window={"start": rfc3339(window.start), "end": rfc3339(window.end), "size": window.size},
        ).to_event(
            source=SOURCE,
            subject=f"{window.model_name}/{window.model_version}",
            id=str(
                uuid.uuid5(
                    NAMESPACE,
                    f"feature/{window.model_name}/{window.model_version}/{first}/{last}/{window.size}",
                )
            ),
        )

    def _emit_if_drift(self, window: ClosedWindow) -> None:
        event = self.check_window(window)
        if event is not None:
            emit(event)

    def flush_due_windows(self) -> None:
        """Check windows whose time is up although no new prediction arrived."""
        for key, count in self.windows.fill().items():
            WINDOW_FILL.labels(*key).set(count)
        for window in self.windows.due():
            try:
                self._emit_if_drift(window)
            except Exception:  # noqa: BLE001 - the timer must keep running
                log.exception(
                    "time-based drift check of %s v%s failed", window.model_name, window.model_version
                )

    def run_timer(self) -> None:
        interval = max(1.0, min(30.0, self.windows.config.seconds / 5))
        while not self._stop.wait(interval):
            self.flush_due_windows()

    # ------------------------------------------------------------------ rollouts
    def record_rollout(self, event_id: str, logged: PredictionLogged, predicted_at: datetime) -> bool:
        """Keep a row of a running rollout; False if not one, or already kept (a redelivery)."""
        tag = logged.rollout
        if tag is None:
            return False
        return self.store.add_rollout_observation(
            RolloutObservation(
                event_id=event_id,
                rollout_id=tag["id"],
                model_name=logged.model_name,
                variant=tag["variant"],
                request_id=logged.request_id,
                probability=float(logged.output["probability"]),
                latency_ms=float(logged.latency_ms),
                candidate_error=bool(tag.get("candidate_error", False)),
                observed_at=predicted_at.isoformat(),
            )
        )

    def check_rollouts(self, now: datetime | None = None) -> None:
        """Judge every undecided rollout still running; announce each verdict once."""
        current: dict[str, Rollout | None] = {}
        for rollout_id, model_name in self.store.undecided_rollouts():
            try:
                if model_name not in current:
                    current[model_name] = self._running_rollout(model_name)
                rollout = current[model_name]
                if rollout is not None and rollout.id == rollout_id:
                    self._judge(rollout, now or datetime.now(UTC))
                else:  # it ended by other means (a person, a newer challenger): stop looking
                    self.store.record_rollout_decision(rollout_id, "ended", rfc3339(now or datetime.now(UTC)))
            except Exception:  # noqa: BLE001 - registry or broker trouble: the next round retries
                log.exception("rollout %s of %s not judged; next round", rollout_id, model_name)

    def _running_rollout(self, model_name: str) -> Rollout | None:
        """The model's rollout tag (RegistryError when unreadable: judged next round)."""
        text = self._registry().model_tag(model_name, ROLLOUT_TAG)
        return None if text is None else Rollout.from_json(text)

    def _judge(self, rollout: Rollout, now: datetime) -> None:
        if judge.elapsed_s(rollout, now) < rollout.policy.window_s:
            return  # not due: spare reading its rows
        champion, candidate = judge.split_samples(self.store.rollout_observations(rollout.id))
        verdict = judge.evaluate(rollout, champion, candidate, now)
        if verdict is None:
            return
        decided_at = rfc3339(now)
        emit(
            RolloutDecided(
                model_name=rollout.model_name,
                rollout_id=rollout.id,
                candidate_version=rollout.candidate,
                champion_version=rollout.champion,
                decision=verdict.decision,
                checks=verdict.checks,
                evidence=verdict.evidence,
                decided_by=f"monitor@{socket.gethostname()}/{os.getpid()}",
                decided_at=decided_at,
            ).to_event(
                source=SOURCE, subject=f"{rollout.model_name}/{rollout.candidate}", id=f"{rollout.id}.decided"
            )
        )
        self.store.record_rollout_decision(rollout.id, verdict.decision, decided_at)
        ROLLOUT_DECISIONS.labels(rollout.model_name, verdict.decision).inc()
        log.info(
            "rollout %s of %s v%s: %s; %s",
            rollout.id,
            rollout.model_name,
            rollout.candidate,
            verdict.decision,
            "; ".join(
                f"{c['name']} {'pass' if c['passed'] else 'FAIL'}: {c['detail']}" for c in verdict.checks
            ),
        )

    def _registry(self) -> RegistryClient:
        if self._registry_client is None:
            self._registry_client = RegistryClient(os.environ["MLFLOW_TRACKING_URI"])
        return self._registry_client

    def run_rollout_timer(self) -> None:
        interval = float(os.environ.get("FAASPIPE_ROLLOUT_CHECK_SECONDS", "2"))
        while not self._stop.wait(interval):
            try:
                self.check_rollouts()
            except Exception:  # noqa: BLE001 - the timer must keep running
                log.exception("rollout check failed; next round")

    # ------------------------------------------------------------------ labels
    def _model_meta(self, model_name: str, version: str) -> dict[str, Any]:
        key = (model_name, version)
        if key not in self._meta:
            meta_key = layout.serving_model(model_name, version, "meta.json")
            self._meta[key] = json.loads(settings.read_object(layout.MODELS, meta_key, self.s3))
        return self._meta[key]

    def on_labels(self, event: CloudEvent) -> CloudEvent | None:
        created = ObjectCreated.from_event(event)
        if created.bucket != layout.LANDING or not created.key.startswith(LABELS_PREFIX):
            return None
        data = settings.read_object(created.bucket, created.key, self.s3)
        try:
            labels, skipped = parse_labels_csv(data)
        except (LabelsFileError, UnicodeDecodeError) as exc:
            raise EventRejected(f"s3://{created.bucket}/{created.key}: {exc}") from exc
        labels_object = f"{created.key}@{created.version}"
        touched = self.store.join_labels(labels, labels_object)
        LABELS_JOINED.inc(len(labels))
        log.info(
            "labels s3://%s/%s: %d rows (%d skipped), model versions %s",
            created.bucket,
            created.key,
            len(labels),
            skipped,
            sorted(touched),
        )
        return self._after_join(event, labels_object, created.key, touched)

    def label_domain(self) -> tuple[int, ...]:
        """The truths the contract's label column admits."""
        values = self.contract.column(self.contract.label).values
        return tuple(int(v) for v in values) if values else (0, 1)

    def on_label_event(self, event: CloudEvent) -> CloudEvent | None:
        """``label.recorded``: join by request id, like a labels file (see the module docstring)."""
        recorded = LabelRecorded.from_event(event)
        domain = self.label_domain()
        bad = [(x["request_id"], x["truth"]) for x in recorded.labels if x["truth"] not in domain]
        if bad:
            raise EventRejected(
                f"label event {event.get_source()}#{event.get_id()}: truth not in the {self.contract.ref}"
                f" label domain {list(domain)} for {len(bad)} label(s), e.g. {bad[:5]}; nothing applied"
            )
        digest = uuid.uuid5(NAMESPACE, f"labels/{event.get_source()}/{event.get_id()}").hex[:12]
        labels_object = f"event:{event.get_source()}#{event.get_id()}"
        latest = {x["request_id"]: int(x["truth"]) for x in recorded.labels}  # a repeated id: the last wins
        touched, pending = self.store.join_label_event(list(latest.items()), labels_object)
        LABELS_JOINED.inc(len(latest) - len(pending))
        LABELS_PENDING.inc(len(pending))
        log.info(
            "label event %s: %d labels, %d kept pending (no prediction yet, e.g. %s), model versions %s",
            labels_object,
            len(latest),
            len(pending),
            pending[:3],
            sorted(touched),
        )
        return self._after_join(event, labels_object, f"events-{digest}", touched)

    def _after_join(
        self, event: CloudEvent, labels_object: str, labels_key: str, touched: set[tuple[str, str]]
    ) -> CloudEvent | None:
        """The labelled rows as a production file, then the performance checks they allow."""
        files = production.write_production(
            self.s3, self.store.labelled_rows(labels_object), labels_key, self.production
        )
        events = [
            e for e in (self.check_performance(m, v, event) for m, v in sorted(touched)) if e is not None
        ]
        if events and files:  # the retrain a drift starts trains on these rows: ingested first
            started = time.perf_counter()
            outcomes = production.wait_ingested(self.s3, files, self.production.ingest_wait_s)
            log.info("production files %s (%.1fs)", outcomes, time.perf_counter() - started)
        for extra in events[1:]:
            emit(extra)
        return events[0] if events else None

    def check_performance(self, model_name: str, version: str, cause: CloudEvent) -> CloudEvent | None:
        rows = self.store.labelled_window(model_name, version, self.performance.window)
        try:
            reference = self._model_meta(model_name, version)["metrics"]
        except (S3Error, KeyError) as exc:
            log.warning(
                "no holdout metrics for %s v%s (%s); performance not checked", model_name, version, exc
            )
            CHECKS.labels(model_name, version, "performance", "no_reference").inc()
            return None
        result: PerformanceResult | None = evaluate(rows, reference, self.performance)
        if result is None:
            CHECKS.labels(model_name, version, "performance", "too_few_labels").inc()
            log.info(
                "%s v%s: %d labelled predictions, too few (or one class) to judge",
                model_name,
                version,
                len(rows),
            )
            return None
        outcome = "drift" if result.degraded_metric else "no_drift"
        CHECKS.labels(model_name, version, "performance", outcome).inc()
        log.info(
            "%s v%s performance on %d labelled: roc_auc %.3f (holdout %.3f), f1 %.3f (holdout %.3f): %s",
            model_name,
            version,
            result.size,
            result.roc_auc,
            result.reference_roc_auc,
            result.f1,
            result.reference_f1,
            outcome,
        )
        if result.degraded_metric is None:
            return None
        metric = result.degraded_metric
        value, ref = (
            (result.roc_auc, result.reference_roc_auc)
            if metric == "roc_auc"
            else (result.f1, result.reference_f1)
        )
        times = sorted(r.predicted_at for r in rows)
        return DriftDetected(
            kind="performance",
            detector=metric,
            model_name=model_name,
            model_version=version,
            p_values={},
            threshold=self.performance.tolerance if metric == "roc_auc" else self.performance.f1_tolerance,
            drifted_features=[],
            metric={"name": metric, "value": value, "reference": ref},
            window={
                "start": rfc3339(datetime.fromisoformat(times[0])),
                "end": rfc3339(datetime.fromisoformat(times[-1])),
                "size": result.size,
            },
        ).to_event(
            source=SOURCE,
            subject=f"{model_name}/{version}",
            id=str(
                uuid.uuid5(
                    NAMESPACE, f"performance/{model_name}/{version}/{cause.get_source()}/{cause.get_id()}"
                )
            ),
        )


_monitor: Monitor | None = None


def init() -> None:
    global _monitor
    from alibi_detect.cd import KSDrift  # noqa: F401 - pay the slow first import before reporting ready

    contract = get_contract(os.environ.get("FAASPIPE_DATASET", "ai4i"))
    state_dir = Path(os.environ.get("FAASPIPE_STATE_DIR", ".faaspipe"))
    monitor = Monitor(contract, state_dir, float(os.environ.get("FAASPIPE_DRIFT_P_VAL", "0.05")))
    threading.Thread(target=monitor.run_timer, name="drift-timer", daemon=True).start()
    threading.Thread(target=monitor.run_rollout_timer, name="rollout-judge", daemon=True).start()
    _monitor = monitor
    log.info("monitor ready: windows %s, performance %s", monitor.windows.config, monitor.performance)


def handle(event: CloudEvent) -> CloudEvent | None:
    if _monitor is None:
        raise RuntimeError("monitor is not initialised")
    if event.get_type() == PredictionLogged.TYPE:
        _monitor.on_prediction(event)
        return None
    if event.get_type() == ObjectCreated.TYPE:
        return _monitor.on_labels(event)
    if event.get_type() == LabelRecorded.TYPE:
        return _monitor.on_label_event(event)
    raise EventRejected(f"monitor does not handle {event.get_type()}")
