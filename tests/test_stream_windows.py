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
