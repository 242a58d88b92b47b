"""Rolling windows in the state database (SQLite, and the machine's PostgreSQL when it answers),
several replicas at once (threads with their own connections), redeliveries, late readings."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shared.stream_windows import Reading, WindowStore, open_store
from tests.services import fresh_database, postgres_url, postgres_user


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'windows.db'}"
        return
    user, problem = postgres_user()
    if user is None:
        pytest.skip(str(problem))
    with fresh_database(user) as name:
        yield postgres_url(user, name)


def reading(n: int, t: float | None = None) -> Reading:
    return Reading(f"r{n:05d}", float(n if t is None else t), {"torque_nm": float(n)})


def keep(store: WindowStore, entity: int, r: Reading, window: int = 3) -> tuple[list[float], bool]:
    latest, new = store.update("ai4i", entity, r, window, lambda w: {"last": w[-1].reading_id})
    return [x.values["torque_nm"] for x in latest], new


def test_the_window_keeps_the_last_n_by_event_time(url: str) -> None:
    store = open_store(url)
    assert keep(store, 1, reading(1)) == ([1.0], True)
    assert keep(store, 1, reading(2)) == ([1.0, 2.0], True)
    assert keep(store, 1, reading(3)) == ([1.0, 2.0, 3.0], True)
    assert keep(store, 1, reading(4)) == ([2.0, 3.0, 4.0], True)
    assert [r.values["torque_nm"] for r in store.window("ai4i", 1)] == [2.0, 3.0, 4.0]  # older deleted
    assert keep(store, 2, reading(9)) == ([9.0], True)  # entities apart


def test_a_redelivered_or_too_late_reading_changes_nothing(url: str) -> None:
    store = open_store(url)
    for n in (5, 6, 7):
        keep(store, 1, reading(n))
    published: list[Any] = []
    latest, new = store.update("ai4i", 1, reading(6), 3, published.append)
    assert not new and not published and [r.event_time for r in latest] == [5.0, 6.0, 7.0]
    latest, new = store.update("ai4i", 1, reading(1), 3, published.append)  # older than the window
    assert not new and not published and [r.event_time for r in latest] == [5.0, 6.0, 7.0]
    latest, new = store.update("ai4i", 1, reading(8, t=5.5), 3, published.append)  # late, inside
    assert new and [r.event_time for r in latest] == [5.5, 6.0, 7.0]


def test_replicas_updating_one_entity_lose_no_reading(url: str) -> None:
    """Four "replicas" (own connections) add 25 readings each to one entity's window of 100."""
    stores = [open_store(url) for _ in range(4)]
    sizes: list[int] = []

    def replica(k: int) -> None:
        for n in range(25):
            latest, _ = stores[k].update(
                "ai4i", 7, reading(k * 100 + n, t=float(k * 25 + n)), 100, lambda w: None
            )
            sizes.append(len(latest))

    threads = [threading.Thread(target=replica, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(stores[0].window("ai4i", 7)) == 100
    assert sorted(sizes) == list(range(1, 101))  # each update saw every earlier one


def test_offline_rows_are_taken_in_batches_once(url: str) -> None:
    store = open_store(url)
    for n in range(5):
        keep(store, n + 1, reading(n))
    taken: list[tuple[int, int, int]] = []
    assert store.take_offline("ai4i", 10, 3600, lambda a, b, rows: taken.append((a, b, len(rows)))) == 0
    assert store.take_offline("ai4i", 5, 3600, lambda a, b, rows: taken.append((a, b, len(rows)))) == 5
    assert taken[0][2] == 5 and taken[0][1] - taken[0][0] == 4
    assert store.take_offline("ai4i", 1, 0, lambda a, b, rows: taken.append((a, b, len(rows)))) == 0

    def broken(a: int, b: int, rows: list[dict[str, Any]]) -> None:
        raise OSError("S3 is down")

    keep(store, 9, reading(50))
    with pytest.raises(OSError):
        store.take_offline("ai4i", 1, 0, broken)
    assert store.take_offline("ai4i", 1, 0, lambda a, b, rows: taken.append((a, b, len(rows)))) == 1


def test_offline_parts_never_reuse_a_sequence_number(url: str) -> None:
    """Parts are named by their rows' sequence numbers: an emptied buffer must not start again at 1."""
    store = open_store(url)
    taken: list[tuple[int, int]] = []
    for n in range(3):
        keep(store, 1, reading(n))
        store.take_offline("ai4i", 1, 0, lambda a, b, rows: taken.append((a, b)))
    assert taken == sorted(set(taken)) and len({a for a, _ in taken}) == 3
    assert all(b < a2 for (_, b), (a2, _) in zip(taken, taken[1:], strict=False))


def one_by_one(
    store: WindowStore,
    dataset: str,
    items: list[tuple[int, Reading]],
    window: int,
    publish: Any,
    windows_out: list[list[Reading]],
) -> list[bool]:
    """The statement-per-reading ``update_many`` this replaced (commit 6b2915b), kept as the
    reference: each reading inserted, its window selected, the older rows deleted."""
    import json
    import time

    news: list[bool] = []
    published: list[tuple[int, list[Reading]]] = []
    with store.db.transaction() as db:
        for entity in sorted({e for e, _ in items}):
            db.execute(
                "INSERT INTO stream_entities (dataset, entity) VALUES (?, ?) ON CONFLICT DO NOTHING",
                (dataset, entity),
            )
        for entity, r in items:
            _, inserted = db.execute(
                "INSERT INTO stream_readings (dataset, entity, reading_id, event_time, vals)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (dataset, entity, r.reading_id, r.event_time, json.dumps(r.values)),
            )
            rows, _ = db.execute(
                "SELECT reading_id, event_time, vals FROM stream_readings WHERE dataset = ? AND entity = ?"
                " ORDER BY event_time DESC, reading_id DESC LIMIT ?",
                (dataset, entity, window),
            )
            latest = [Reading(x[0], float(x[1]), json.loads(x[2])) for x in reversed(rows)]
            if len(rows) == window:
                oldest = latest[0]
                db.execute(
                    "DELETE FROM stream_readings WHERE dataset = ? AND entity = ?"
                    " AND (event_time < ? OR (event_time = ? AND reading_id < ?))",
                    (dataset, entity, oldest.event_time, oldest.event_time, oldest.reading_id),
                )
            new = inserted == 1 and any(x.reading_id == r.reading_id for x in latest)
            news.append(new)
            windows_out.append(latest)
            if new:
                published.append((entity, latest))
        if published:
            offline = publish(published)
            if offline:
                db.executemany(
                    "INSERT INTO stream_offline (dataset, added, row_json) VALUES (?, ?, ?)",
                    [(dataset, time.time(), json.dumps(dict(row))) for row in offline],
                )
    return news


def test_a_batch_has_the_effect_of_its_readings_one_by_one(url: str, tmp_path: Path) -> None:
    """Random batches (ties in event time, ids repeated inside a batch and across batches, late
    readings, a shrunk window) through ``update_many`` and through the statement-per-reading
    reference: the same flags, windows, published windows, offline rows and stored rows."""
    import random

    rng = random.Random(7)
    reference = open_store(f"sqlite:///{tmp_path / 'reference.db'}")
    store = open_store(url)

    def publisher(log: list[Any]) -> Any:
        def publish(windows: list[tuple[int, list[Reading]]]) -> list[dict[str, Any]]:
            log.append(windows)
            return [{"entity": e, "ids": [r.reading_id for r in w], "n": len(w)} for e, w in windows]

        return publish

    sent: list[Reading] = []
    flags: list[bool] = []
    for batch in range(40):
        window = 5 if batch < 25 else 3  # the contract's window shrank: stored windows are longer
        items: list[tuple[int, Reading]] = []
        for _ in range(rng.randint(1, 30)):
            if sent and rng.random() < 0.2:  # a redelivery (possibly of another entity's id)
                again = rng.choice(sent)
                items.append((int(again.values["entity"]), again))
                continue
            entity = rng.randint(1, 6)
            r = Reading(
                f"/src/{rng.randint(0, 10**6):07d}",
                float(batch * 4 + rng.randint(0, 12)) + rng.choice([0.0, 0.5]),  # many ties, some late
                {"entity": entity, "torque_nm": rng.uniform(0, 80), "type": rng.choice("LMH")},
            )
            sent.append(r)
            items.append((entity, r))
        want_log: list[Any] = []
        got_log: list[Any] = []
        want_windows: list[list[Reading]] = []
        got_windows: list[list[Reading]] = []
        want = one_by_one(reference, "ai4i", items, window, publisher(want_log), want_windows)
        got = store.update_many("ai4i", items, window, publisher(got_log), got_windows)
        assert got == want, batch
        flags += got
        assert got_windows == want_windows, batch
        assert got_log == want_log, batch
        stored = (
            "SELECT entity, reading_id, event_time, vals FROM stream_readings ORDER BY entity, reading_id"
        )
        assert store.db.execute(stored)[0] == reference.db.execute(stored)[0], batch
    offline = "SELECT dataset, row_json FROM stream_offline ORDER BY seq"
    assert store.db.execute(offline)[0] == reference.db.execute(offline)[0]
    assert 0.1 < flags.count(False) / len(flags) < 0.6  # redeliveries and late readings were in it
