"""Read the broker's event log: follow new events, or scan what is there (``faaspipe events``)."""

from __future__ import annotations

import time
from collections.abc import Iterator

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
            else:
                self.consumer.seek(tp, ends[tp])

    def events(self, timeout_s: float | None = None) -> Iterator[CloudEvent]:
        """Events as they arrive (for ``timeout_s`` seconds, or forever)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while deadline is None or time.monotonic() < deadline:
            for records in self.consumer.poll(timeout_ms=500).values():
                for record in records:
                    try:
                        yield from_kafka(record.key, record.headers, record.value)
                    except InvalidCloudEvent:
                        continue

    def close(self) -> None:
        self.consumer.close()
