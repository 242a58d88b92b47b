"""Read the broker's event log: follow new events, or scan what is there (``faaspipe events``)."""

from __future__ import annotations

import collections
import time
from collections.abc import Iterator
from typing import Any

from kafka import KafkaConsumer, TopicPartition

from localdev.config import StackConfig
from shared.cloudevents_io import CloudEvent, InvalidCloudEvent, from_kafka
from shared.kafka_offsets import offsets_consumer, true_end_offsets


class EventLog:
    """A group-less reader of the broker topic (or ``topic``, e.g. the prediction log),
    starting at its current end (or beginning)."""

    def __init__(
        self, config: StackConfig, *, from_beginning: bool = False, topic: str | None = None
    ) -> None:
        self.consumer: KafkaConsumer = offsets_consumer(config.kafka_bootstrap)
        self._pending: collections.deque[Any] = collections.deque()  # fetched, not yet yielded
        topic = topic or config.broker_topic
        self.partitions = [
            TopicPartition(topic, p) for p in sorted(self.consumer.partitions_for_topic(topic) or [])
        ]
        ends = true_end_offsets(self.consumer, self.partitions)
        self.consumer.assign(self.partitions)
        self.consumer.resume(*self.partitions)
        for tp in self.partitions:
            if from_beginning:
                self.consumer.seek_to_beginning(tp)
            elif tp in ends:
                self.consumer.seek(tp, ends[tp])
            else:  # missing from the end-offsets answer
                self.consumer.seek_to_end(tp)

    def events(self, timeout_s: float | None = None) -> Iterator[CloudEvent]:
        """Events as they arrive (for ``timeout_s`` seconds, or forever).

        A caller may stop iterating at any event and call ``events`` again: the rest of the
        fetched batch is kept for the next call, never skipped.
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            while self._pending:
                record = self._pending.popleft()
                try:
                    event = from_kafka(record.key, record.headers, record.value)
                except InvalidCloudEvent:
                    continue
                yield event
            if deadline is not None and time.monotonic() >= deadline:
                return
            for records in self.consumer.poll(timeout_ms=500).values():
                self._pending.extend(records)

    def close(self) -> None:
        self.consumer.close()
