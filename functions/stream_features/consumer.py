"""Readings on the Kafka topic, read by stream-features itself, in batches.

A sensor gateway produces readings (CloudEvents in the Kafka binary binding) to
``FAASPIPE_STREAM_READINGS_TOPIC``. Delivered one by one over HTTP (a KafkaSource) each reading
costs a dispatcher round trip; read here, every poll hands the batch of records it got (up to
``FAASPIPE_STREAM_READINGS_BATCH``) to ``process`` at once: one transaction per dataset and one
online push for the whole batch, each reading still checked on its own.

Semantics: at-least-once with idempotent effect. The offsets of a batch are committed only after
``process`` returned, or after the readings it kept failing on were dead-lettered
(``delivery.py``: the trigger's Knative delivery, ``retry`` attempts with back-off, then the
batch split to isolate them; they go to ``FAASPIPE_STREAM_READINGS_DLQ`` with ``knativeerror*``,
where ``faaspipe dlq list|replay`` finds them). If even that failed (the dead-letter topic is
away) the consumer seeks back to the batch's first offsets and reads it again after a back-off
(exponential, at most ``MAX_BACKOFF_S``). A crash or a rebalance
between processing and commit re-delivers the batch, which changes nothing: the window store
keeps each reading's ``source/id`` and a rejection's id derives from the reading's. Every
replica joins the same consumer group, so the topic's partitions are shared among them and the
windows live in the state database, not in a replica. A record that is not a CloudEvent is
logged and skipped (there is nobody to answer).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError
from kafka.structs import OffsetAndMetadata

from functions.stream_features.delivery import Stopping, dead_letter_event, deliver
from shared.cloudevents_io import CloudEvent, InvalidCloudEvent, from_kafka, to_kafka
from shared.topology import Delivery

__all__ = ["ReadingsConsumer"]

log = logging.getLogger("faaspipe.stream_features.consumer")

FETCH_WAIT_MS = 20  # as the dispatcher: Tansu answers a group fetch when its wait runs out
MAX_BACKOFF_S = 5.0
SESSION_TIMEOUT_MS = 6000
REPORT_EVERY_S = 10.0  # a log line with the batches, records and processing time since the last


class ReadingsConsumer(threading.Thread):
    def __init__(
        self,
        process: Callable[[Sequence[CloudEvent]], object],
        bootstrap: str,
        topic: str,
        group: str,
        *,
        max_records: int = 500,
        partitions: int = 4,
        delivery: Delivery | None = None,
        dlq_topic: str = "faaspipe.dlq",
    ) -> None:
        super().__init__(name=f"readings-{topic}", daemon=True)
        self.process = process
        self.bootstrap = bootstrap
        self.topic = topic
        self.group = group
        self.max_records = max_records
        self.partitions = partitions
        self.stopping = threading.Event()
        self.ready = threading.Event()
        self.batches = 0  # processed and committed
        self.delivery = delivery or Delivery()  # retry 3, exponential from PT0.2S, as the trigger's
        self.dlq_topic = dlq_topic
        self.dead_lettered = 0
        self._dlq: KafkaProducer | None = None

    def ensure_topic(self) -> None:
        """Create the topic if it is missing (a producer may come later than the function)."""
        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=10000)
        try:
            if self.topic not in set(admin.list_topics()):
                with contextlib.suppress(TopicAlreadyExistsError):
                    admin.create_topics([NewTopic(self.topic, self.partitions, 1)])
        finally:
            admin.close()

    def run(self) -> None:
        backoff = 0.0
        while not self.stopping.is_set():
            try:
                self.ensure_topic()
                self._consume()
                return
            except Exception:  # noqa: BLE001 - the broker may be away: start over after a pause
                log.exception("readings consumer on %s failed; restarting", self.topic)
                backoff = min(MAX_BACKOFF_S, max(0.5, backoff * 2))
                self.stopping.wait(backoff)

    def _consume(self) -> None:
        consumer = KafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=self.group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=self.max_records,
            fetch_max_wait_ms=FETCH_WAIT_MS,
            session_timeout_ms=SESSION_TIMEOUT_MS,
            heartbeat_interval_ms=1000,
        )
        try:
            consumer.subscribe([self.topic])
            self.ready.set()
            backoff = 0.0
            window = {"batches": 0, "records": 0, "busy_s": 0.0, "since": time.monotonic()}
            while not self.stopping.is_set():
                self._report(window)
                batches = consumer.poll(timeout_ms=100, max_records=self.max_records)
                if not batches:
                    continue
                began = time.monotonic()
                events = []
                for tp, records in batches.items():
                    for record in records:
                        try:
                            events.append(from_kafka(record.key, record.headers, record.value))
                        except InvalidCloudEvent as exc:
                            log.error(
                                "%s: skipping a record that is not a CloudEvent at %s/%d: %s",
                                self.topic,
                                tp.partition,
                                record.offset,
                                exc,
                            )
                try:
                    if events:
                        self.dead_lettered += deliver(
                            events, self.process, self.delivery, self._dead_letter, self.stopping
                        )
                except Stopping:
                    return  # uncommitted: the partitions' next owner reads the batch again
                except Exception:  # noqa: BLE001 - read the batch again: at-least-once
                    log.exception(
                        "%s: a batch of %d readings failed and could not be dead-lettered; reading it again",
                        self.topic,
                        len(events),
                    )
                    for tp, records in batches.items():
                        consumer.seek(tp, records[0].offset)
                    backoff = min(MAX_BACKOFF_S, max(0.2, backoff * 2))
                    self.stopping.wait(backoff)
                    continue
                backoff = 0.0
                offsets = {
                    tp: OffsetAndMetadata(records[-1].offset + 1, "", -1) for tp, records in batches.items()
                }
                try:
                    consumer.commit(offsets)
                except KafkaError as exc:  # a rebalance took the partitions: their new owner re-reads
                    log.warning(
                        "%s: commit failed (%s); the batch will be read again, harmlessly", self.topic, exc
                    )
                self.batches += 1
                window["batches"] += 1
                window["records"] += sum(len(r) for r in batches.values())
                window["busy_s"] += time.monotonic() - began
        finally:
            consumer.close(autocommit=False)
            if self._dlq is not None:
                self._dlq.close(10)
                self._dlq = None

    def _dead_letter(self, event: CloudEvent, error: BaseException) -> None:
        """Write the reading to the dead-letter topic (raises if it is not stored)."""
        if self._dlq is None:
            self._dlq = KafkaProducer(bootstrap_servers=self.bootstrap, acks="all")
        dead = dead_letter_event(event, topic=self.topic, group=self.group, error=error)
        key, headers, value = to_kafka(dead)
        self._dlq.send(self.dlq_topic, key=key, value=value, headers=headers).get(timeout=30)

    def _report(self, window: dict[str, float]) -> None:
        elapsed = time.monotonic() - window["since"]
        if elapsed < REPORT_EVERY_S:
            return
        if window["batches"]:
            log.info(
                "%s: %d records in %d batches in %.1f s (%.1f s processing them)",
                self.topic,
                window["records"],
                window["batches"],
                elapsed,
                window["busy_s"],
            )
        window.update(batches=0, records=0, busy_s=0.0, since=time.monotonic())

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=15)
