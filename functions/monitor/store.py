"""The monitor's store: SQLite under ``$FAASPIPE_STATE_DIR/monitor/`` locally, or PostgreSQL
when ``FAASPIPE_DATABASE_URL`` is set (the cluster: a pod's filesystem is lost on restart).

* ``monitor_predictions``: the last N logged predictions (keyed by event id, so a redelivered
  event is recognised), with request id / entity id for the label join, their raw inputs, and
  whether a drift window already covered them. Rows not yet in a closed window rebuild the
  open windows after a restart, so a restart loses no window.
* ``monitor_labelled``: predictions joined with ground truth from labels files (one row per
  prediction; a re-delivered labels file overwrites, never double-counts).
* ``monitor_pending_labels``: labels posted as events (``label.recorded``) whose request id no
  stored prediction has yet (the prediction log is a separate, asynchronous path): kept, one
  per request id, and joined by a later label event once the prediction is stored; dropped
  after ``pending_label_days`` (a label whose prediction never comes must not be kept forever).
* ``monitor_rollout_observations``: the rows of a running rollout (champion, candidate and
  shadow answers, candidate failures; keyed by event id), with the truth a labels file gave
  their request; shadow rows live only here, never in ``monitor_predictions``.
* ``monitor_rollout_decisions``: the rollouts the monitor decided, so each is announced once,
  also across restarts and replicas (the first insert wins).

The SQL is written once for both databases (``shared/sqldb.py``); ``seq`` orders rows.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from functions.monitor.windows import ClosedWindow, ModelKey, Observation, WindowConfig
from shared.sqldb import connect

SCHEMA = """
CREATE TABLE IF NOT EXISTS monitor_predictions (
    seq {serial},
    event_id TEXT NOT NULL UNIQUE,
    request_id TEXT NOT NULL,
    entity_id TEXT,
    model_name TEXT NOT NULL,
    model_version TEXT NOT NULL,
    probability REAL NOT NULL,
    label INTEGER NOT NULL,
    predicted_at TEXT NOT NULL,
    inputs TEXT NOT NULL,
    stored_at REAL NOT NULL,
    in_closed_window INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS monitor_predictions_request ON monitor_predictions(request_id);
CREATE INDEX IF NOT EXISTS monitor_predictions_entity ON monitor_predictions(entity_id);
CREATE INDEX IF NOT EXISTS monitor_predictions_open
    ON monitor_predictions(in_closed_window, model_name, model_version, seq);
CREATE TABLE IF NOT EXISTS monitor_labelled (
    seq {serial},
    event_id TEXT NOT NULL UNIQUE,
    model_name TEXT NOT NULL,
    model_version TEXT NOT NULL,
    probability REAL NOT NULL,
    label INTEGER NOT NULL,
    truth INTEGER NOT NULL,
    predicted_at TEXT NOT NULL,
    labels_object TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS monitor_labelled_model ON monitor_labelled(model_name, model_version, predicted_at);
CREATE TABLE IF NOT EXISTS monitor_pending_labels (
    request_id TEXT PRIMARY KEY,
    truth INTEGER NOT NULL,
    labels_object TEXT NOT NULL,
    received_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS monitor_rollout_observations (
    seq {serial},
    event_id TEXT NOT NULL UNIQUE,
    rollout_id TEXT NOT NULL,
    model_name TEXT NOT NULL,
    variant TEXT NOT NULL,
    request_id TEXT NOT NULL,
    probability REAL NOT NULL,
    latency_ms REAL NOT NULL,
    candidate_error INTEGER NOT NULL,
    observed_at TEXT NOT NULL,
    truth INTEGER
);
CREATE INDEX IF NOT EXISTS monitor_rollout_observations_rollout ON monitor_rollout_observations(rollout_id);
CREATE INDEX IF NOT EXISTS monitor_rollout_observations_request ON monitor_rollout_observations(request_id);
CREATE TABLE IF NOT EXISTS monitor_rollout_decisions (
    rollout_id TEXT PRIMARY KEY,
    decision TEXT NOT NULL,
    decided_at TEXT NOT NULL
)
"""


class _LostClaim(Exception):
    """Another replica claimed some of a window's rows first."""


@dataclass(frozen=True)
class StoredPrediction:
    event_id: str
    request_id: str
    entity_id: str | None
    model_name: str
    model_version: str
    probability: float
    label: int
    predicted_at: str
    inputs: dict[str, Any]


@dataclass(frozen=True)
class LabelledRow:
    probability: float
    label: int
    truth: int
    predicted_at: str


@dataclass(frozen=True)
class ProductionRow:
    """A labelled prediction with its inputs: one row of production training data."""

    seq: int  # the prediction's sequence number in the store (stable: a udi when it has none)
    entity_id: str | None
    model_name: str
    inputs: dict[str, Any]
    truth: int
    predicted_at: str


@dataclass(frozen=True)
class RolloutObservation:
    event_id: str
    rollout_id: str
    model_name: str
    variant: str  # champion | candidate | shadow
    request_id: str
    probability: float
    latency_ms: float
    candidate_error: bool
    observed_at: str
    truth: int | None = None  # from a labels file, joined by request id


class MonitorStore:
    def __init__(
        self, where: Path | str, keep_predictions: int = 100_000, pending_label_days: float = 7.0
    ) -> None:
        """``where``: a SQLite file, or a ``postgresql://`` URL (``shared/sqldb.py``)."""
        self.db = connect(where)
        self.keep = keep_predictions
        self.pending_label_s = pending_label_days * 86400.0
        self.db.script(SCHEMA.format(serial=self.db.serial))
        self._inserts = 0

    def add_prediction(self, p: StoredPrediction, stored_at: float | None = None) -> bool:
        """Store a prediction; False if this event id is already stored (a redelivery).

        ``stored_at`` (wall-clock seconds, default now) starts the window it opens."""
        _, count = self.db.execute(
            "INSERT INTO monitor_predictions (event_id, request_id, entity_id, model_name, model_version,"
            " probability, label, predicted_at, inputs, stored_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT DO NOTHING",
            (
                p.event_id,
                p.request_id,
                p.entity_id,
                p.model_name,
                p.model_version,
                p.probability,
                p.label,
                p.predicted_at,
                json.dumps(p.inputs),
                time.time() if stored_at is None else stored_at,
            ),
        )
        self._count_insert()
        return count == 1

    def _count_insert(self) -> None:
        self._inserts += 1
        if self._inserts % 1000 == 0:
            self._prune()

    def _prune(self) -> None:
        for table in ("monitor_predictions", "monitor_labelled", "monitor_rollout_observations"):
            self.db.execute(
                f"DELETE FROM {table} WHERE seq <= (SELECT MAX(seq) FROM {table}) - ?",  # noqa: S608
                (self.keep,),
            )

    def open_counts(self) -> dict[ModelKey, tuple[int, float]]:
        """Per model version with open rows: (rows no window covered yet, when the first was stored)."""
        rows, _ = self.db.execute(
            "SELECT model_name, model_version, COUNT(*), MIN(stored_at) FROM monitor_predictions"
            " WHERE in_closed_window = 0 GROUP BY model_name, model_version"
        )
        return {(str(m), str(v)): (int(n), float(first)) for m, v, n, first in rows}

    def claim_window(self, key: ModelKey, config: WindowConfig, now: float) -> ClosedWindow | None:
        """Close ``key``'s open window if it is due, for this caller only.

        In one transaction: read the open rows (oldest first, at most ``config.size``), decide
        (``WindowConfig.reason_to_close``), and mark them covered only where no one else did;
        if another replica claimed any of them meanwhile, nothing is claimed (it checks them).
        """
        try:
            rows, reason = self._claim(key, config, now)
        except _LostClaim:
            return None
        if not rows or reason is None:
            return None
        observations = tuple(
            Observation(str(r[1]), datetime.fromisoformat(str(r[2])), json.loads(r[3])) for r in rows
        )
        return ClosedWindow(key[0], key[1], observations, reason)

    def _claim(
        self, key: ModelKey, config: WindowConfig, now: float
    ) -> tuple[list[tuple[Any, ...]], str | None]:
        with self.db.transaction():
            rows, _ = self.db.execute(
                "SELECT seq, event_id, predicted_at, inputs, stored_at FROM monitor_predictions"
                " WHERE in_closed_window = 0 AND model_name = ? AND model_version = ? ORDER BY seq LIMIT ?",
                (key[0], key[1], config.size),
            )
            if not rows:
                return rows, None
            reason = config.reason_to_close(len(rows), now - min(float(r[4]) for r in rows))
            if reason is None:
                return rows, None
            seqs = [r[0] for r in rows]
            marks = ",".join("?" * len(seqs))
            _, claimed = self.db.execute(
                f"UPDATE monitor_predictions SET in_closed_window = 1"  # noqa: S608
                f" WHERE in_closed_window = 0 AND seq IN ({marks})",
                seqs,
            )
            if claimed != len(seqs):
                raise _LostClaim  # rolls the transaction back: another replica has these rows
        return rows, reason

    def open_predictions(self) -> list[StoredPrediction]:
        """Predictions no closed window covered yet, oldest first (to rebuild windows)."""
        rows, _ = self.db.execute(
            "SELECT event_id, request_id, entity_id, model_name, model_version, probability, label,"
            " predicted_at, inputs FROM monitor_predictions WHERE in_closed_window = 0 ORDER BY seq"
        )
        return [StoredPrediction(*row[:8], inputs=json.loads(row[8])) for row in rows]

    def join_labels(self, labels: list[tuple[str, str, int]], labels_object: str) -> set[tuple[str, str]]:
        """Join ``(key kind 'request_id'|'udi', key, truth)`` on the latest matching prediction.

        Returns the (model, version) pairs that got labelled rows.
        """
        with self.db.transaction():
            touched, _ = self._join(labels, labels_object)
        return touched

    def _join(
        self, labels: list[tuple[str, str, int]], labels_object: str
    ) -> tuple[set[tuple[str, str]], set[str]]:
        """``join_labels`` inside the caller's transaction; also the keys no prediction has."""
        touched: set[tuple[str, str]] = set()
        missing: set[str] = set()
        for kind, key, truth in labels:
            column = "request_id" if kind == "request_id" else "entity_id"
            found, _ = self.db.execute(
                f"SELECT event_id, model_name, model_version, probability, label, predicted_at,"  # noqa: S608
                f" request_id FROM monitor_predictions WHERE {column} = ?"
                " ORDER BY predicted_at DESC, seq DESC LIMIT 1",
                (key,),
            )
            row = found[0] if found else None
            request_id = key if kind == "request_id" else None if row is None else row[6]
            if request_id is not None:
                self.db.execute(
                    "UPDATE monitor_rollout_observations SET truth = ? WHERE request_id = ?",
                    (truth, request_id),
                )
            if row is None:
                missing.add(key)
                continue
            self.db.execute(
                "INSERT INTO monitor_labelled (event_id, model_name, model_version, probability, label,"
                " truth, predicted_at, labels_object) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (event_id) DO UPDATE SET model_name = excluded.model_name,"
                " model_version = excluded.model_version, probability = excluded.probability,"
                " label = excluded.label, truth = excluded.truth, predicted_at = excluded.predicted_at,"
                " labels_object = excluded.labels_object",
                (*row[:5], truth, row[5], labels_object),
            )
            touched.add((row[1], row[2]))
        return touched, missing

    def join_label_event(
        self, labels: list[tuple[str, int]], labels_object: str, now: float | None = None
    ) -> tuple[set[tuple[str, str]], list[str]]:
        """Join the ``(request id, truth)`` of a label event, and the pending labels whose
        prediction arrived since, under ``labels_object``; keep the unknown ones pending.

        One transaction: a pending label is taken by exactly one event (the replica whose
        delete removed it), so it lands in one production file. Returns the touched
        (model, version) pairs and the request ids left pending."""
        known = {request_id for request_id, _ in labels}
        at = time.time() if now is None else now
        with self.db.transaction():
            self.db.execute(
                "DELETE FROM monitor_pending_labels WHERE received_at < ?", (at - self.pending_label_s,)
            )
            ready, _ = self.db.execute(
                "SELECT l.request_id, l.truth, l.labels_object FROM monitor_pending_labels l"
                " WHERE EXISTS (SELECT 1 FROM monitor_predictions p WHERE p.request_id = l.request_id)"
                " ORDER BY l.received_at"
            )
            late = []
            for request_id, truth, origin in ready:
                _, taken = self.db.execute(
                    "DELETE FROM monitor_pending_labels WHERE request_id = ? AND labels_object = ?",
                    (request_id, origin),
                )
                if taken == 1 and request_id not in known:
                    late.append(("request_id", str(request_id), int(truth)))
            current = [("request_id", r, t) for r, t in labels]
            touched, missing = self._join(late + current, labels_object)
            pending = [r for _, r, _ in current if r in missing]
            for request_id, truth in labels:
                if request_id in missing:
                    self.db.execute(
                        "INSERT INTO monitor_pending_labels (request_id, truth, labels_object, received_at)"
                        " VALUES (?, ?, ?, ?) ON CONFLICT (request_id) DO UPDATE SET truth = excluded.truth,"
                        " labels_object = excluded.labels_object, received_at = excluded.received_at",
                        (request_id, truth, labels_object, at),
                    )
        return touched, pending

    def pending_labels(self) -> dict[str, int]:
        """Request id → truth of the labels still waiting for their prediction."""
        rows, _ = self.db.execute("SELECT request_id, truth FROM monitor_pending_labels")
        return {str(r): int(t) for r, t in rows}

    def labelled_window(self, model_name: str, model_version: str, size: int) -> list[LabelledRow]:
        """The latest ``size`` labelled predictions of a model version."""
        rows, _ = self.db.execute(
            "SELECT probability, label, truth, predicted_at FROM monitor_labelled WHERE model_name = ? AND"
            " model_version = ? ORDER BY predicted_at DESC LIMIT ?",
            (model_name, model_version, size),
        )
        return [LabelledRow(*row) for row in rows]

    def labelled_rows(self, labels_object: str) -> list[ProductionRow]:
        """The predictions a labels object labelled, with their inputs, in prediction order."""
        rows, _ = self.db.execute(
            "SELECT p.seq, p.entity_id, p.model_name, p.inputs, l.truth, p.predicted_at"
            " FROM monitor_labelled l JOIN monitor_predictions p ON p.event_id = l.event_id"
            " WHERE l.labels_object = ? ORDER BY p.predicted_at, p.seq",
            (labels_object,),
        )
        return [
            ProductionRow(int(seq), entity, model, json.loads(inputs), int(truth), at)
            for seq, entity, model, inputs, truth, at in rows
        ]

    # ------------------------------------------------------------------ rollouts
    def add_rollout_observation(self, o: RolloutObservation) -> bool:
        """Store a rollout row; False if this event id is already stored (a redelivery)."""
        _, count = self.db.execute(
            "INSERT INTO monitor_rollout_observations (event_id, rollout_id, model_name, variant,"
            " request_id, probability, latency_ms, candidate_error, observed_at, truth)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (
                o.event_id,
                o.rollout_id,
                o.model_name,
                o.variant,
                o.request_id,
                o.probability,
                o.latency_ms,
                int(o.candidate_error),
                o.observed_at,
                o.truth,
            ),
        )
        self._count_insert()
        return count == 1

    def rollout_observations(self, rollout_id: str) -> list[RolloutObservation]:
        """Every stored row of a rollout, oldest first, with the truth of labelled requests."""
        rows, _ = self.db.execute(
            "SELECT event_id, rollout_id, model_name, variant, request_id, probability, latency_ms,"
            " candidate_error, observed_at, truth FROM monitor_rollout_observations WHERE rollout_id = ?"
            " ORDER BY seq",
            (rollout_id,),
        )
        return [RolloutObservation(*row[:7], bool(row[7]), *row[8:]) for row in rows]

    def undecided_rollouts(self) -> list[tuple[str, str]]:
        """``(rollout id, model name)`` of the rollouts with observations and no decision yet."""
        rows, _ = self.db.execute(
            "SELECT DISTINCT o.rollout_id, o.model_name FROM monitor_rollout_observations o"
            " LEFT JOIN monitor_rollout_decisions d ON d.rollout_id = o.rollout_id"
            " WHERE d.rollout_id IS NULL ORDER BY o.rollout_id"
        )
        return [(str(r), str(m)) for r, m in rows]

    def record_rollout_decision(self, rollout_id: str, decision: str, decided_at: str) -> bool:
        """Remember a rollout's decision; False if it was already decided (the first one stays)."""
        _, count = self.db.execute(
            "INSERT INTO monitor_rollout_decisions (rollout_id, decision, decided_at) VALUES (?, ?, ?)"
            " ON CONFLICT DO NOTHING",
            (rollout_id, decision, decided_at),
        )
        return count == 1

    def rollout_decision(self, rollout_id: str) -> tuple[str, str] | None:
        """``(decision, decided_at)`` of a decided rollout, else None."""
        rows, _ = self.db.execute(
            "SELECT decision, decided_at FROM monitor_rollout_decisions WHERE rollout_id = ?", (rollout_id,)
        )
        return None if not rows else (str(rows[0][0]), str(rows[0][1]))

    def close(self) -> None:
        self.db.close()
