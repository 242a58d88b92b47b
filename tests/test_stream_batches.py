"""stream-features' batch of readings (records of the readings topic, ``handle_batch``) on a real
SQLite window store: each reading is checked on its own, the good ones are written in one
transaction with one online push, and a redelivered batch changes nothing. The online push and
the broker are the function's collaborators here (recorded), not faked infrastructure: the
Kafka and Feast halves run on a real stack in tests/test_stream_features.py."""

from __future__ import annotations

import base64
import threading
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from functions.stream_features.delivery import dead_letter_event, deliver
from functions.stream_features.handler import StreamFeatures
from shared.cloudevents_io import CloudEvent
from shared.contracts import Contract
from shared.stream_windows import Reading, open_store
from shared.topology import Delivery

SOURCE = "/tests/stream-batches"
T0 = datetime(2026, 1, 1, tzinfo=UTC)


class Recorder:
    def __init__(self) -> None:
        self.pushes: list[list[tuple[int, list[str]]]] = []
        self.posted: list[CloudEvent] = []

    def push(self, contract: Contract, windows: list[tuple[int, list[Reading]]]) -> list[dict[str, Any]]:
        self.pushes.append([(e, [r.reading_id for r in w]) for e, w in windows])
        return [{"entity": e, "reading_id": w[-1].reading_id} for e, w in windows]

    def post(self, event: CloudEvent) -> None:
        self.posted.append(event)


def reading(n: int, entity: int, **values: Any) -> CloudEvent:
    data = {
        "dataset": "ai4i",
        "reading": {
            "udi": entity,
            "type": "M",
            "air_temperature_k": 299.0,
            "process_temperature_k": 309.5,
            "rotational_speed_rpm": 1500.0,
            "torque_nm": 40.0 + n,
            "tool_wear_min": 100.0,
            **values,
        },
    }
    attributes = {
        "type": "dev.faaspipe.sensor.reading.v1",
        "source": SOURCE,
        "id": f"r{n}",
        "time": T0 + timedelta(seconds=n),
        "datacontenttype": "application/json",
    }
    return CloudEvent(attributes, data)


@pytest.fixture
def function(tmp_path: Path) -> tuple[StreamFeatures, Recorder]:
    recorder = Recorder()
    fn = StreamFeatures(
        open_store(tmp_path / "windows.db"), 10_000, 3600.0, push=recorder.push, post=recorder.post
    )
    yield fn, recorder
    fn.batcher.close()


def test_a_bad_reading_in_a_batch_is_rejected_with_its_reason_and_the_rest_stored(
    function: tuple[StreamFeatures, Recorder],
) -> None:
    fn, recorder = function
    batch = [reading(1, 7), reading(2, 8), reading(3, 7, torque_nm=-5.0), reading(4, 7), reading(5, 8)]
    assert fn.handle_batch(batch) == ["accepted", "accepted", "rejected", "accepted", "accepted"]
    (rejected,) = recorder.posted
    assert rejected.get_type() == "dev.faaspipe.sensor.reading.rejected.v1"
    data = rejected.get_data()
    assert data["reading_id"] == "r3" and data["reading_source"] == SOURCE
    assert [(r["field"], r["rule"]) for r in data["reasons"]] == [("torque_nm", "min")]
    assert [r.reading_id for r in fn.store.window("ai4i", 7)] == [f"{SOURCE}/r1", f"{SOURCE}/r4"]
    assert [r.reading_id for r in fn.store.window("ai4i", 8)] == [f"{SOURCE}/r2", f"{SOURCE}/r5"]
    (push,) = recorder.pushes  # the whole batch: one push
    assert [e for e, _ in push] == [7, 8, 7, 8]


def test_a_redelivered_batch_has_no_double_effect(function: tuple[StreamFeatures, Recorder]) -> None:
    fn, recorder = function
    batch = [reading(1, 7), reading(2, 7, tool_wear_min=None), reading(3, 7)]
    assert fn.handle_batch(batch) == ["accepted", "rejected", "accepted"]
    window = fn.store.window("ai4i", 7)
    offline = fn.store.db.execute("SELECT COUNT(*) FROM stream_offline", ())[0][0][0]
    assert fn.handle_batch(batch) == ["duplicate", "rejected", "duplicate"]
    assert fn.store.window("ai4i", 7) == window
    assert fn.store.db.execute("SELECT COUNT(*) FROM stream_offline", ())[0][0][0] == offline == 2
    assert len(recorder.pushes) == 1  # nothing new: nothing pushed again
    first, again = recorder.posted
    assert first.get_id() == again.get_id()  # the same rejection, recognisably


def test_a_record_that_is_not_a_reading_is_rejected_and_its_neighbours_stored(
    function: tuple[StreamFeatures, Recorder],
) -> None:
    fn, recorder = function
    junk = CloudEvent(
        {"type": "dev.faaspipe.sensor.reading.v1", "source": SOURCE, "id": "junk", "time": T0},
        {"dataset": "ai4i"},
    )
    assert fn.handle_batch([reading(1, 9), junk, reading(2, 9)]) == ["accepted", "rejected", "accepted"]
    (rejected,) = recorder.posted
    assert rejected.get_data()["reading_id"] == "junk"
    assert [r["rule"] for r in rejected.get_data()["reasons"]] == ["schema"]
    assert len(fn.store.window("ai4i", 9)) == 2


FAST = Delivery(retry=2, backoff_delay="PT0.001S")  # the trigger's policy, with short back-offs


def test_a_reading_the_store_keeps_failing_on_is_dead_lettered_and_the_batch_goes_on(
    function: tuple[StreamFeatures, Recorder],
) -> None:
    """A machine id past SQLite's 64-bit integers passes the contract (udi: int, min 1) but every
    write of a batch holding it fails: after the retries the batch is split, that reading is
    dead-lettered with the error and the broker's extensions, every other one is stored."""
    fn, recorder = function
    poison = reading(4, 2**63)
    batch = [reading(1, 7), reading(2, 8), reading(3, 7), poison, reading(5, 8), reading(6, 9)]
    calls: list[int] = []

    def process(events: Sequence[CloudEvent]) -> object:
        calls.append(len(events))
        return fn.handle_batch(events)

    dead: list[tuple[CloudEvent, BaseException]] = []
    assert deliver(batch, process, FAST, lambda e, x: dead.append((e, x)), threading.Event()) == 1
    ((event, error),) = dead
    assert event.get_id() == "r4" and isinstance(error, OverflowError)
    assert [r.reading_id for r in fn.store.window("ai4i", 7)] == [f"{SOURCE}/r1", f"{SOURCE}/r3"]
    assert [r.reading_id for r in fn.store.window("ai4i", 8)] == [f"{SOURCE}/r2", f"{SOURCE}/r5"]
    assert [r.reading_id for r in fn.store.window("ai4i", 9)] == [f"{SOURCE}/r6"]
    # the batch 1 + retry times, its halves once each, the failing half's halves: the poison
    # reading alone 1 + retry times, its neighbours once
    assert calls == [6, 6, 6, 3, 3, 1, 1, 1, 2]
    letter = dead_letter_event(event, topic="faaspipe.readings", group="g", error=error)
    assert letter.get_data() == poison.get_data() and letter.get_id() == "r4"
    assert letter.get_attributes()["knativeerrorcode"] == "500"
    assert letter.get_attributes()["faaspipetopic"] == "faaspipe.readings"
    assert letter.get_attributes()["knativeerrordest"] == "kafka://faaspipe.readings?group=g"
    text = base64.b64decode(letter.get_attributes()["knativeerrordata"]).decode()
    assert text.startswith("OverflowError")


def test_a_batch_that_fails_for_a_while_is_not_dead_lettered(
    function: tuple[StreamFeatures, Recorder],
) -> None:
    fn, _ = function
    failures = [OSError("database is locked")] * FAST.retry  # one attempt short of the budget

    def process(events: Sequence[CloudEvent]) -> object:
        if failures:
            raise failures.pop()
        return fn.handle_batch(events)

    dead: list[object] = []
    assert (
        deliver([reading(1, 7), reading(2, 7)], process, FAST, lambda e, x: dead.append(e), threading.Event())
        == 0
    )
    assert not dead and len(fn.store.window("ai4i", 7)) == 2


def test_a_dead_letter_that_cannot_be_written_fails_the_batch(
    function: tuple[StreamFeatures, Recorder],
) -> None:
    """The consumer then commits nothing and reads the batch again: the reading is not lost."""
    fn, _ = function

    def dlq_down(event: CloudEvent, error: BaseException) -> None:
        raise ConnectionError("the dead-letter topic is away")

    with pytest.raises(ConnectionError):
        deliver([reading(1, 7), reading(2, 2**63)], fn.handle_batch, FAST, dlq_down, threading.Event())


def test_the_online_write_stores_the_rows_a_feast_push_stores(tmp_path: Path) -> None:
    """``feast_stream.push`` on the SQLite online store (rows encoded and upserted directly) leaves
    the same table as Feast's ``FeatureStore.push`` of the same rows (tests/stream_push_check.py)."""
    import os
    import subprocess

    from tests.conftest import REPO

    train = REPO / ".venvs" / "train" / "bin" / "python"
    if not train.exists():
        pytest.skip("no train environment (make envs)")
    done = subprocess.run(
        [str(train), "-m", "tests.stream_push_check", str(tmp_path)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "equal True" in done.stdout, done.stdout
