"""The monitor's small SQLite store under ``$FAASPIPE_STATE_DIR/monitor/``.

* ``predictions``: the last N logged predictions (keyed by event id, so a redelivered event
  is recognised), with request id / entity id for the label join, their raw inputs, and
  whether a drift window already covered them. Rows not yet in a closed window rebuild the
  open windows after a restart, so a restart loses no window.
* ``labelled``: predictions joined with ground truth from labels files (one row per
  prediction; a re-delivered labels file overwrites, never double-counts).
* ``rollout_observations``: the rows of a running rollout (champion, candidate and shadow
  answers, candidate failures; keyed by event id), with the truth a labels file gave their
  request; shadow rows live only here, never in ``predictions``.
* ``rollout_decisions``: the rollouts the monitor decided, so each is announced once, also
  across restarts.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS predictions (
    event_id TEXT PRIMARY KEY,
    request_id TEXT NOT NULL,
    entity_id TEXT,
    model_name TEXT NOT NULL,
    model_version TEXT NOT NULL,
    probability REAL NOT NULL,
    label INTEGER NOT NULL,
    predicted_at TEXT NOT NULL,
    inputs TEXT NOT NULL,
    in_closed_window INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS predictions_request ON predictions(request_id);
CREATE INDEX IF NOT EXISTS predictions_entity ON predictions(entity_id);
CREATE INDEX IF NOT EXISTS predictions_open ON predictions(in_closed_window);
CREATE TABLE IF NOT EXISTS labelled (
    event_id TEXT PRIMARY KEY,
    model_name TEXT NOT NULL,
    model_version TEXT NOT NULL,
    probability REAL NOT NULL,
    label INTEGER NOT NULL,
    truth INTEGER NOT NULL,
    predicted_at TEXT NOT NULL,
    labels_object TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS labelled_model ON labelled(model_name, model_version, predicted_at);
CREATE TABLE IF NOT EXISTS rollout_observations (
    event_id TEXT PRIMARY KEY,
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
CREATE INDEX IF NOT EXISTS rollout_observations_rollout ON rollout_observations(rollout_id);
CREATE INDEX IF NOT EXISTS rollout_observations_request ON rollout_observations(request_id);
CREATE TABLE IF NOT EXISTS rollout_decisions (
    rollout_id TEXT PRIMARY KEY,
    decision TEXT NOT NULL,
    decided_at TEXT NOT NULL
);
"""


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
    def __init__(self, path: Path, keep_predictions: int = 100_000) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.keep = keep_predictions
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        self._lock = threading.Lock()
        self._inserts = 0

    def add_prediction(self, p: StoredPrediction) -> bool:
        """Store a prediction; False if this event id is already stored (a redelivery)."""
        with self._lock:
            cursor = self._db.execute(
                "INSERT OR IGNORE INTO predictions (event_id, request_id, entity_id, model_name, model_version,"
                " probability, label, predicted_at, inputs) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
                ),
            )
            self._inserts += 1
            if self._inserts % 1000 == 0:
                self._prune()
            return cursor.rowcount == 1

    def _prune(self) -> None:
        self._db.execute(
            "DELETE FROM predictions WHERE rowid <= (SELECT MAX(rowid) FROM predictions) - ?", (self.keep,)
        )
        for table in ("labelled", "rollout_observations"):
            self._db.execute(
                f"DELETE FROM {table} WHERE rowid <= (SELECT MAX(rowid) FROM {table}) - ?",  # noqa: S608
                (self.keep,),
            )

    def mark_closed(self, event_ids: Iterable[str]) -> None:
        ids = list(event_ids)
        with self._lock:
            self._db.execute("BEGIN")
            self._db.executemany(
                "UPDATE predictions SET in_closed_window = 1 WHERE event_id = ?", [(i,) for i in ids]
            )
            self._db.execute("COMMIT")

    def open_predictions(self) -> list[StoredPrediction]:
        """Predictions no closed window covered yet, oldest first (to rebuild windows)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT event_id, request_id, entity_id, model_name, model_version, probability, label,"
                " predicted_at, inputs FROM predictions WHERE in_closed_window = 0 ORDER BY rowid"
            ).fetchall()
        return [StoredPrediction(*row[:8], inputs=json.loads(row[8])) for row in rows]

    def join_labels(self, labels: list[tuple[str, str, int]], labels_object: str) -> set[tuple[str, str]]:
        """Join ``(key kind 'request_id'|'udi', key, truth)`` on the latest matching prediction.

        Returns the (model, version) pairs that got labelled rows.
        """
        touched: set[tuple[str, str]] = set()
        with self._lock:
            self._db.execute("BEGIN")
            try:
                for kind, key, truth in labels:
                    column = "request_id" if kind == "request_id" else "entity_id"
                    row = self._db.execute(
                        f"SELECT event_id, model_name, model_version, probability, label, predicted_at,"  # noqa: S608
                        f" request_id FROM predictions WHERE {column} = ?"
                        " ORDER BY predicted_at DESC, rowid DESC LIMIT 1",
                        (key,),
                    ).fetchone()
                    request_id = key if kind == "request_id" else None if row is None else row[6]
                    if request_id is not None:
                        self._db.execute(
                            "UPDATE rollout_observations SET truth = ? WHERE request_id = ?",
                            (truth, request_id),
                        )
                    if row is None:
                        continue
                    self._db.execute(
                        "INSERT OR REPLACE INTO labelled (event_id, model_name, model_version, probability, label,"
                        " truth, predicted_at, labels_object) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (*row[:5], truth, row[5], labels_object),
                    )
                    touched.add((row[1], row[2]))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return touched

    def labelled_window(self, model_name: str, model_version: str, size: int) -> list[LabelledRow]:
        """The latest ``size`` labelled predictions of a model version."""
        with self._lock:
            rows = self._db.execute(
                "SELECT probability, label, truth, predicted_at FROM labelled WHERE model_name = ? AND"
                " model_version = ? ORDER BY predicted_at DESC LIMIT ?",
                (model_name, model_version, size),
            ).fetchall()
        return [LabelledRow(*row) for row in rows]

    # ------------------------------------------------------------------ rollouts
    def add_rollout_observation(self, o: RolloutObservation) -> bool:
        """Store a rollout row; False if this event id is already stored (a redelivery)."""
        with self._lock:
            cursor = self._db.execute(
                "INSERT OR IGNORE INTO rollout_observations (event_id, rollout_id, model_name, variant,"
                " request_id, probability, latency_ms, candidate_error, observed_at, truth)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
            self._inserts += 1
            if self._inserts % 1000 == 0:
                self._prune()
            return cursor.rowcount == 1

    def rollout_observations(self, rollout_id: str) -> list[RolloutObservation]:
        """Every stored row of a rollout, oldest first, with the truth of labelled requests."""
        with self._lock:
            rows = self._db.execute(
                "SELECT event_id, rollout_id, model_name, variant, request_id, probability, latency_ms,"
                " candidate_error, observed_at, truth FROM rollout_observations WHERE rollout_id = ?"
                " ORDER BY rowid",
                (rollout_id,),
            ).fetchall()
        return [RolloutObservation(*row[:7], bool(row[7]), *row[8:]) for row in rows]

    def undecided_rollouts(self) -> list[tuple[str, str]]:
        """``(rollout id, model name)`` of the rollouts with observations and no decision yet."""
        with self._lock:
            rows = self._db.execute(
                "SELECT DISTINCT o.rollout_id, o.model_name FROM rollout_observations o"
                " LEFT JOIN rollout_decisions d ON d.rollout_id = o.rollout_id"
                " WHERE d.rollout_id IS NULL ORDER BY o.rollout_id"
            ).fetchall()
        return [(str(r), str(m)) for r, m in rows]

    def record_rollout_decision(self, rollout_id: str, decision: str, decided_at: str) -> bool:
        """Remember a rollout's decision; False if it was already decided (the first one stays)."""
        with self._lock:
            cursor = self._db.execute(
                "INSERT OR IGNORE INTO rollout_decisions (rollout_id, decision, decided_at) VALUES (?, ?, ?)",
                (rollout_id, decision, decided_at),
            )
            return cursor.rowcount == 1

    def rollout_decision(self, rollout_id: str) -> tuple[str, str] | None:
        """``(decision, decided_at)`` of a decided rollout, else None."""
        with self._lock:
            row = self._db.execute(
                "SELECT decision, decided_at FROM rollout_decisions WHERE rollout_id = ?", (rollout_id,)
            ).fetchone()
        return None if row is None else (str(row[0]), str(row[1]))

    def close(self) -> None:
        with self._lock:
            self._db.close()
