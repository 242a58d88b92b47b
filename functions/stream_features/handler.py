"""stream-features: ``sensor.reading`` → contract check → rolling window → Feast push.

For each ``dev.faaspipe.sensor.reading.v1`` (data ``{"dataset", "reading"}``, the event's
``time`` = when the reading was taken):

1. the dataset's contract must declare ``streaming:``; the reading is checked against it
   (``shared/contracts/streaming.py``: every field, one reason each). For a bad reading
   ``dev.faaspipe.sensor.reading.rejected.v1`` naming each field, rule and message is posted to
   the broker (``shared.emit``: readings also come from the topic ``faaspipe.readings``, read
   by ``consumer.py`` in batches, where there is no reply), and nothing of it is written anywhere;
2. the reading (canonical + derived values) enters the entity's window in the state database
   (``shared/stream_windows.py``: shared by every replica, locked per entity; a redelivered
   reading, same ``source/id``, changes nothing);
3. under that lock the newest reading of the window plus the declared aggregates over it are
   pushed to the online store (``shared/feast_stream.py``), at the newest reading's event time,
   and buffered for the offline store;
4. the buffer goes to S3 as a Parquet part (the push source's batch source) once it holds
   ``FAASPIPE_STREAM_OFFLINE_ROWS`` rows or its oldest row waited ``FAASPIPE_STREAM_OFFLINE_SECONDS``
   (checked on each reading, and at start-up).

Deliveries from the broker's trigger join micro-batches of the requests in flight
(``batcher.py``); records of the readings topic are processed a poll's batch at a time
(:meth:`StreamFeatures.handle_batch`). No reply either way (``202``): a reply per accepted reading would double the broker's load.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from prometheus_client import Counter

from events import SensorReading, SensorReadingRejected
from functions.stream_features.batcher import Batcher
from functions.stream_features.consumer import ReadingsConsumer
from shared import feast_stream
from shared.cloudevents_io import CloudEvent
from shared.contracts import Contract, all_contracts
from shared.contracts.streaming import Reason, aggregate_window, check_reading
from shared.emit import emit
from shared.sqldb import DATABASE_URL_ENV
from shared.stream_windows import Reading, WindowStore, open_store
from shared.topology import Delivery

log = logging.getLogger("faaspipe.stream_features")

SOURCE = "/faaspipe/functions/stream-features"
_REJECTION_NAMESPACE = uuid.UUID("5f0b7c1e-2a43-4f59-9a57-1c0d3e8b6a42")
READINGS = Counter("faaspipe_stream_readings_total", "Streamed readings", ["dataset", "outcome"])


class StreamFeatures:
    """The function's state: the shared window store and the offline flush thresholds."""

    def __init__(
        self,
        store: WindowStore,
        offline_rows: int,
        offline_seconds: float,
        push: Callable[[Contract, list[tuple[int, list[Reading]]]], list[dict[str, Any]]] | None = None,
        post: Callable[[CloudEvent], None] = emit,
    ) -> None:
        self.store = store
        self.offline_rows = offline_rows
        self.offline_seconds = offline_seconds
        self.push = push or publish  # the online push of a batch's windows (Feast)
        self.post = post  # where rejections go (the broker)
        self.consumer: ReadingsConsumer | None = None  # the readings topic's, when there is one
        self.batcher: Batcher[tuple[Contract, int, Reading]] = Batcher(self._process)

    def handle(self, event: CloudEvent) -> CloudEvent | None:
        """One delivery (the broker's trigger): waits for the micro-batch it joins."""
        item = self.check(event)
        if item is not None:
            new = self.batcher.submit(item)
            READINGS.labels(item[0].name, "accepted" if new else "duplicate").inc()
        return None

    def handle_batch(self, events: Sequence[CloudEvent]) -> list[str]:
        """Records read from the readings topic, as one batch: each reading is checked on its
        own (a bad one is rejected with its reasons, its neighbours go on), the good ones enter
        their windows in one transaction per dataset with one online push. Returns per event
        ``accepted``, ``duplicate`` (a redelivered reading: nothing changes) or ``rejected``.
        Raises if the batch could not be written (nothing of it then is; the caller retries)."""
        outcomes = ["rejected"] * len(events)
        items: list[tuple[Contract, int, Reading]] = []
        positions: list[int] = []
        for i, event in enumerate(events):
            try:
                item = self.check(event)
            except ValueError as exc:  # data that is not a sensor.reading at all
                data = event.get_data()
                named = data.get("dataset") if isinstance(data, dict) else None
                dataset = named if isinstance(named, str) and named else "unknown"
                self._reject(event, dataset, None, [Reason(None, "schema", str(exc)[:500])])
                continue
            if item is not None:
                items.append(item)
                positions.append(i)
        if items:
            for i, item, new in zip(positions, items, self._process(items), strict=True):
                outcomes[i] = "accepted" if new else "duplicate"
                READINGS.labels(item[0].name, outcomes[i]).inc()
        return outcomes

    def check(self, event: CloudEvent) -> tuple[Contract, int, Reading] | None:
        """The reading to store, or None after posting its rejection (a reason per field)."""
        data = SensorReading.from_event(event)
        contract = all_contracts().get(data.dataset)
        if contract is None or contract.streaming is None:
            streaming = sorted(n for n, c in all_contracts().items() if c.streaming is not None)
            self._reject(
                event,
                data.dataset,
                None,
                [Reason(None, "dataset", f"no streamed dataset {data.dataset!r}; have {streaming}")],
            )
            return None
        row, reasons = check_reading(contract, data.reading)
        taken_at = _event_time(event)
        if taken_at is None:
            reasons.append(
                Reason(None, "time", "the event has no valid 'time' attribute: when the reading was taken")
            )
        if reasons or row is None:
            entity = row.get(contract.entity_key) if row else None
            self._reject(event, contract.name, entity, reasons)
            return None
        assert taken_at is not None
        return (
            contract,
            int(row[contract.entity_key]),
            Reading(f"{event.get_source()}/{event.get_id()}", taken_at, row),
        )

    def _process(self, items: Sequence[tuple[Contract, int, Reading]]) -> list[bool]:
        """One batch of in-flight readings: per dataset one transaction and one push."""
        news: dict[int, bool] = {}
        for name in dict.fromkeys(contract.name for contract, _, _ in items):
            positions = [i for i, (contract, _, _) in enumerate(items) if contract.name == name]
            contract = items[positions[0]][0]
            assert contract.streaming is not None
            flags = self.store.update_many(
                name,
                [(items[i][1], items[i][2]) for i in positions],
                contract.streaming.window,
                lambda windows, contract=contract: self.push(contract, windows),  # type: ignore[misc]
            )
            news.update(zip(positions, flags, strict=True))
            try:
                self.flush(contract)
            except Exception:  # noqa: BLE001 - the rows stay buffered; the next reading tries again
                log.exception("%s: writing the offline part failed; rows kept in the buffer", name)
        return [news[i] for i in range(len(items))]

    def flush(self, contract: Contract, force: bool = False) -> int:
        """Write the offline buffer as one Parquet part if it is due (or ``force``)."""

        def write(first: int, last: int, rows: list[dict[str, Any]]) -> None:
            uri = feast_stream.write_offline_part(contract, first, last, rows)
            log.info("%s: %d streamed rows -> %s", contract.name, len(rows), uri)

        return self.store.take_offline(
            contract.name, 1 if force else self.offline_rows, 0 if force else self.offline_seconds, write
        )

    def _reject(self, event: CloudEvent, dataset: str, entity: Any, reasons: list[Reason]) -> None:
        READINGS.labels(dataset, "rejected").inc()
        rejected = SensorReadingRejected(
            dataset=dataset,
            reading_id=event.get_id(),
            reading_source=event.get_source(),
            entity=entity if isinstance(entity, int) else None,
            reasons=[r.to_dict() for r in reasons],  # type: ignore[misc]
        )
        self.post(
            rejected.to_event(source=SOURCE, subject=f"{dataset}/{event.get_id()}", id=_rejection_id(event))
        )


def _rejection_id(event: CloudEvent) -> str:
    """The same id for every delivery of one reading (a re-posted rejection is recognisable)."""
    return str(uuid.uuid5(_REJECTION_NAMESPACE, f"{event.get_source()}\n{event.get_id()}"))


def feature_row(contract: Contract, entity: int, window: list[Reading]) -> dict[str, Any]:
    """The entity's newest reading + the aggregates over ``window`` (oldest first), at its time."""
    assert contract.streaming is not None
    latest = window[-1]
    return {
        **latest.values,
        **aggregate_window(contract.streaming, [r.values for r in window]),
        contract.entity_key: entity,
        feast_stream.WINDOW_READINGS: len(window),
        feast_stream.READING_ID: latest.reading_id,
        "event_timestamp": latest.event_time,
    }


def publish(contract: Contract, windows: list[tuple[int, list[Reading]]]) -> list[dict[str, Any]]:
    """Push each entity's last window of the batch online (one push); every row, for offline."""
    rows = [feature_row(contract, entity, window) for entity, window in windows]
    latest = {row[contract.entity_key]: row for row in rows}  # later windows hold the earlier ones
    feast_stream.push(contract, list(latest.values()))
    return rows


def _event_time(event: CloudEvent) -> float | None:
    value = event.get_time() if hasattr(event, "get_time") else None
    if value is None:
        return None
    if isinstance(value, datetime):
        return feast_stream.epoch_seconds(value)
    try:
        return feast_stream.epoch_seconds(datetime.fromisoformat(str(value).replace("Z", "+00:00")))
    except ValueError:
        return None


_function: StreamFeatures | None = None


def new() -> StreamFeatures:
    """The function over the state database (``FAASPIPE_DATABASE_URL``, else SQLite in the state dir)."""
    state_dir = Path(os.environ.get("FAASPIPE_STATE_DIR", ".faaspipe"))
    store = open_store(os.environ.get(DATABASE_URL_ENV) or state_dir / "stream" / "windows.db")
    return StreamFeatures(
        store,
        int(os.environ.get("FAASPIPE_STREAM_OFFLINE_ROWS", "500")),
        float(os.environ.get("FAASPIPE_STREAM_OFFLINE_SECONDS", "10")),
    )


def init() -> None:
    """Register every streamed contract's push source and view, open the store, flush leftovers."""
    global _function
    logging.getLogger("feast").setLevel(logging.WARNING)
    _function = new()
    for contract in all_contracts().values():
        if contract.streaming is not None:
            feast_stream.apply_stream(contract)
            feast_stream.online_rows(contract, [-1])  # warm the online store's client
            _function.flush(contract, force=True)
    topic = os.environ.get("FAASPIPE_STREAM_READINGS_TOPIC")
    if topic:
        _function.consumer = ReadingsConsumer(
            _function.handle_batch,
            os.environ["FAASPIPE_KAFKA_BOOTSTRAP"],
            topic,
            os.environ.get("FAASPIPE_STREAM_READINGS_GROUP", f"faaspipe.consumer.stream-features.{topic}"),
            max_records=int(os.environ.get("FAASPIPE_STREAM_READINGS_BATCH", "500")),
            partitions=int(os.environ.get("FAASPIPE_STREAM_READINGS_PARTITIONS", "4")),
            delivery=Delivery(
                retry=int(os.environ.get("FAASPIPE_STREAM_READINGS_RETRY", "3")),
                backoff_delay=os.environ.get("FAASPIPE_STREAM_READINGS_BACKOFF", "PT0.2S"),
            ),
            dlq_topic=os.environ.get("FAASPIPE_STREAM_READINGS_DLQ", "faaspipe.dlq"),
        )
        _function.consumer.start()


def handle(event: CloudEvent) -> CloudEvent | None:
    if _function is None:
        raise RuntimeError("stream-features is not initialised")
    return _function.handle(event)
