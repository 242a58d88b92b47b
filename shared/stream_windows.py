"""Rolling windows of streamed readings, kept in the functions' state database (not in a pod).

``FAASPIPE_DATABASE_URL`` (PostgreSQL, the cluster) or SQLite under the state dir (localdev):
every replica of stream-features sees the same windows, and a restarted replica loses nothing.

One entity's update is one transaction (:meth:`WindowStore.update`): the entity's row is locked
(PostgreSQL ``SELECT … FOR UPDATE``; SQLite's ``BEGIN IMMEDIATE`` locks the database), the reading
is inserted unless the same reading id is already there (a redelivered event changes nothing),
the entity's last ``window`` readings by event time are read and older ones deleted, and the
caller's ``publish`` (the online push) runs *inside* the lock, so two replicas' pushes for one
entity land in the order their windows were computed. Rows for the offline store are buffered
in the same transaction and handed out in batches by :meth:`WindowStore.take_offline`.
A batch of readings (:meth:`WindowStore.update_many`) has the effect of those updates one by
one, in one transaction: its entities are locked and their windows read once, each reading's
window is computed in memory, and only the rows that changed are written.
"""

from __future__ import annotations

import bisect
import json
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.sqldb import Database, connect

__all__ = ["Reading", "WindowStore", "open_store"]

OFFLINE_LOCK_KEY = 0x73747265  # PostgreSQL advisory lock of the offline buffer's takers ("stre")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS stream_entities (
    dataset TEXT NOT NULL,
    entity BIGINT NOT NULL,
    PRIMARY KEY (dataset, entity)
);
CREATE TABLE IF NOT EXISTS stream_readings (
    dataset TEXT NOT NULL,
    entity BIGINT NOT NULL,
    reading_id TEXT NOT NULL,
    event_time DOUBLE PRECISION NOT NULL,
    vals TEXT NOT NULL,
    PRIMARY KEY (dataset, entity, reading_id)
);
CREATE INDEX IF NOT EXISTS stream_readings_by_time ON stream_readings (dataset, entity, event_time)
"""


@dataclass(frozen=True)
class Reading:
    reading_id: str
    event_time: float  # seconds since the epoch
    values: dict[str, Any]


class WindowStore:
    """Per-entity rolling windows and the offline buffer, shared by every replica."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.db.script(_SCHEMA)
        # seq names the offline parts, so it must never be reused: SQLite's INTEGER PRIMARY KEY
        # restarts after the table was emptied, AUTOINCREMENT does not (PostgreSQL's BIGSERIAL never does)
        serial = db.serial if db.postgres else "INTEGER PRIMARY KEY AUTOINCREMENT"
        self.db.execute(
            f"CREATE TABLE IF NOT EXISTS stream_offline (seq {serial}, dataset TEXT NOT NULL,"
            " added REAL NOT NULL, row_json TEXT NOT NULL)"
        )

    def update(
        self,
        dataset: str,
        entity: int,
        reading: Reading,
        window: int,
        publish: Callable[[list[Reading]], Mapping[str, Any] | None],
    ) -> tuple[list[Reading], bool]:
        """Add ``reading`` to the entity's window and call ``publish(window)`` (oldest first)
        under the entity's lock; a non-None return is buffered for the offline store.

        Returns (window, new): ``new`` is False for a reading id the window already had or a
        reading older than the whole window (nothing is published then)."""
        seen: list[list[Reading]] = []

        def publish_all(windows: list[tuple[int, list[Reading]]]) -> list[Mapping[str, Any]]:
            row = publish(windows[0][1])
            return [] if row is None else [row]

        (new,) = self.update_many(dataset, [(entity, reading)], window, publish_all, seen)
        return seen[0], new

    def update_many(
        self,
        dataset: str,
        items: Sequence[tuple[int, Reading]],
        window: int,
        publish: Callable[[list[tuple[int, list[Reading]]]], Sequence[Mapping[str, Any]]],
        windows_out: list[list[Reading]] | None = None,
    ) -> list[bool]:
        """:meth:`update` for several (entity, reading) in one transaction, in order: the
        entities' rows are locked (sorted, so replicas never deadlock), each reading enters its
        entity's window, then ``publish`` gets the (entity, window) of every new reading in
        order, once, still under the locks; the rows it returns are buffered for the offline
        store. Returns, per item, whether the reading was new.

        The effect is that of adding the readings one by one (insert unless the id is there,
        keep the last ``window`` by event time, ties by reading id): the batch's entities'
        windows are read once, each reading's window is computed in memory, and only the
        difference (readings kept that were not stored, stored ones that fell out) is written."""
        news: list[bool] = []
        published: list[tuple[int, list[Reading]]] = []
        with self.db.transaction() as db:
            entities = sorted({e for e, _ in items})
            self._lock_entities(db, dataset, entities)
            stored = self._read_windows(db, dataset, entities)
            current = {e: dict(rows) for e, rows in stored.items()}  # reading id -> reading
            ordered = {e: sorted(rows.values(), key=_order) for e, rows in stored.items()}
            for entity, reading in items:
                rows, latest = current[entity], ordered[entity]
                inserted = reading.reading_id not in rows
                if inserted:
                    rows[reading.reading_id] = reading
                    bisect.insort(latest, reading, key=_order)
                if len(latest) > window:  # the oldest fall out
                    for old in latest[:-window]:
                        del rows[old.reading_id]
                    del latest[:-window]
                new = inserted and reading.reading_id in rows
                news.append(new)
                latest = list(latest)  # this reading's window, as it is now
                if windows_out is not None:
                    windows_out.append(latest)
                if new:
                    published.append((entity, latest))
            gone = [(dataset, e, rid) for e in entities for rid in stored[e] if rid not in current[e]]
            if gone:
                db.executemany(
                    "DELETE FROM stream_readings WHERE dataset = ? AND entity = ? AND reading_id = ?", gone
                )
            added = [
                (dataset, e, r.reading_id, r.event_time, json.dumps(r.values))
                for e in entities
                for rid, r in current[e].items()
                if rid not in stored[e]
            ]
            if added:
                db.executemany(
                    "INSERT INTO stream_readings (dataset, entity, reading_id, event_time, vals)"
                    " VALUES (?, ?, ?, ?, ?)",
                    added,
                )
            if published:
                offline = publish(published)
                if offline:
                    now = time.time()
                    db.executemany(
                        "INSERT INTO stream_offline (dataset, added, row_json) VALUES (?, ?, ?)",
                        [(dataset, now, json.dumps(dict(row))) for row in offline],
                    )
        return news

    @staticmethod
    def _lock_entities(db: Database, dataset: str, entities: list[int]) -> None:
        """Create the entities' rows if missing and lock them, in ``entities``' (sorted) order."""
        db.executemany(
            "INSERT INTO stream_entities (dataset, entity) VALUES (?, ?) ON CONFLICT DO NOTHING",
            [(dataset, e) for e in entities],
        )
        if db.postgres:
            for chunk in _chunks(entities):
                db.execute(
                    "SELECT entity FROM stream_entities WHERE dataset = ? AND entity IN"
                    f" ({', '.join('?' * len(chunk))}) ORDER BY entity FOR UPDATE",
                    (dataset, *chunk),
                )

    @staticmethod
    def _read_windows(db: Database, dataset: str, entities: list[int]) -> dict[int, dict[str, Reading]]:
        """Every stored reading of the entities (their windows), by reading id."""
        out: dict[int, dict[str, Reading]] = {e: {} for e in entities}
        for chunk in _chunks(entities):
            rows, _ = db.execute(
                "SELECT entity, reading_id, event_time, vals FROM stream_readings WHERE dataset = ?"
                f" AND entity IN ({', '.join('?' * len(chunk))})",
                (dataset, *chunk),
            )
            for entity, reading_id, event_time, vals in rows:
                out[int(entity)][reading_id] = Reading(reading_id, float(event_time), _values(vals))
        return out

    def window(self, dataset: str, entity: int) -> list[Reading]:
        rows, _ = self.db.execute(
            "SELECT reading_id, event_time, vals FROM stream_readings WHERE dataset = ? AND entity = ?"
            " ORDER BY event_time, reading_id",
            (dataset, entity),
        )
        return [Reading(r[0], float(r[1]), json.loads(r[2])) for r in rows]

    def take_offline(
        self,
        dataset: str,
        min_rows: int,
        max_age_s: float,
        write: Callable[[int, int, list[dict[str, Any]]], None],
        limit: int = 50_000,
    ) -> int:
        """Hand the buffered offline rows to ``write(first_seq, last_seq, rows)`` when there are
        at least ``min_rows`` or the oldest waited ``max_age_s``; delete them once ``write``
        returned (in one transaction: a failed write keeps them). Returns the rows written."""
        with self.db.transaction() as db:
            if db.postgres:  # one taker at a time (SQLite: BEGIN IMMEDIATE already is)
                db.execute("SELECT pg_advisory_xact_lock(?)", (OFFLINE_LOCK_KEY,))
            stats, _ = db.execute(
                "SELECT COUNT(*), MIN(added) FROM stream_offline WHERE dataset = ?",
                (dataset,),
            )
            count, oldest = stats[0]
            if not count or (count < min_rows and time.time() - float(oldest) < max_age_s):
                return 0
            rows, _ = db.execute(
                "SELECT seq, row_json FROM stream_offline WHERE dataset = ? ORDER BY seq LIMIT ?",
                (dataset, limit),
            )
            first, last = int(rows[0][0]), int(rows[-1][0])
            write(first, last, [json.loads(r[1]) for r in rows])
            db.execute(
                "DELETE FROM stream_offline WHERE dataset = ? AND seq >= ? AND seq <= ?",
                (dataset, first, last),
            )
        return len(rows)


_DECODED: dict[str, dict[str, Any]] = {}
DECODED_MAX = 50_000  # a window's readings are read again by each batch that touches the entity


def _values(text: str) -> dict[str, Any]:
    """A stored reading's values, decoded once per process (by their JSON text: a row's text
    never changes, and nobody mutates a window's values)."""
    values = _DECODED.get(text)
    if values is None:
        if len(_DECODED) >= DECODED_MAX:
            _DECODED.clear()
        values = _DECODED[text] = json.loads(text)
    return values


def _order(reading: Reading) -> tuple[float, str]:
    """A window's order: event time, then reading id (code points: SQLite's and PostgreSQL's "C")."""
    return (reading.event_time, reading.reading_id)


def _chunks(entities: list[int], size: int = 500) -> Iterator[list[int]]:
    for i in range(0, len(entities), size):
        yield entities[i : i + size]


def open_store(url_or_path: str | Path) -> WindowStore:
    """A :class:`WindowStore` on a PostgreSQL URL, a ``sqlite:///`` URL or a SQLite file path."""
    return WindowStore(connect(url_or_path))
