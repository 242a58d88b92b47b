"""Dead letters: list them, and replay them to the trigger that failed them.

A replay appends the original event (``knativeerror*`` removed) to the broker topic (for a
Kafka source: the topic it reads; for a reading stream-features read from its topic itself:
that topic, named by ``faaspipetopic``) with a ``faaspipetarget`` extension naming the trigger, so
that only that trigger's dispatcher delivers it again, with its full retry policy; a marker
on the ``…dlq.replayed`` topic records that the dead letter was replayed, by whom and when
(``localdev/actor.py``), and ``dlq list`` shows it. The event's data
is replayed as the bytes it was dead-lettered with.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from events import rfc3339
from localdev.actor import cli_actor
from localdev.broker import wire
from localdev.broker.protocol import REPLAY_TARGET
from localdev.broker.topics import subscription_topic
from localdev.config import StackConfig
from shared.kafka_offsets import true_end_offsets
from shared.topology import load_topology

# faaspipetopic: set by a function that reads a topic itself (stream-features' readings): the
# topic a replay puts the event back on
ERROR_EXTENSIONS = (
    "knativeerrordest",
    "knativeerrorcode",
    "knativeerrordata",
    "faaspipetrigger",
    "faaspipetopic",
)


@dataclass
class DeadLetter:
    partition: int
    offset: int
    event: wire.WireEvent
    replayed: bool
    replayed_by: str | None = None
    replayed_at: str | None = None

    @property
    def ref(self) -> str:
        return f"{self.partition}:{self.offset}"

    def summary(self) -> dict[str, object]:
        raw = self.event.get("knativeerrordata") or ""
        try:
            error = base64.b64decode(raw).decode(errors="replace")
        except ValueError:
            error = raw
        return {
            "ref": self.ref,
            "id": self.event.id,
            "source": self.event.get("source"),
            "type": self.event.type,
            "trigger": self.event.get("faaspipetrigger"),
            "code": self.event.get("knativeerrorcode"),
            "destination": self.event.get("knativeerrordest"),
            "error": error,
            "replayed": self.replayed,
            "replayed_by": self.replayed_by,
            "replayed_at": self.replayed_at,
        }


def _read_all(bootstrap: str, topic: str) -> list:  # type: ignore[type-arg]
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, consumer_timeout_ms=1000)
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        if not partitions:
            return []
        ends = true_end_offsets(consumer, partitions)
        consumer.assign(partitions)
        consumer.resume(*partitions)  # true_end_offsets leaves them paused
        consumer.seek_to_beginning(*partitions)
        records = []
        while any(consumer.position(tp) < ends.get(tp, 0) for tp in partitions):
            batch = consumer.poll(timeout_ms=1000)
            if not batch:
                break
            for recs in batch.values():
                records.extend(recs)
        return records
    finally:
        consumer.close(autocommit=False)


def list_dead_letters(config: StackConfig) -> list[DeadLetter]:
    replayed = {
        r.key.decode(): _marker(r.value)
        for r in _read_all(config.kafka_bootstrap, config.dlq_replayed_topic)
        if r.key
    }
    letters = []
    for record in _read_all(config.kafka_bootstrap, config.dlq_topic):
        event = wire.from_kafka(record.key, record.headers, record.value)
        ref = f"{record.partition}:{record.offset}"
        marker = replayed.get(ref)
        letters.append(
            DeadLetter(
                record.partition,
                record.offset,
                event,
                marker is not None,
                (marker or {}).get("by"),
                (marker or {}).get("at"),
            )
        )
    return letters


def _marker(value: bytes | None) -> dict[str, str]:
    """A replay marker's fields (markers written before ``by``/``at`` existed have neither)."""
    try:
        doc = json.loads(value or b"{}")
    except ValueError:
        return {}
    return {k: str(v) for k, v in doc.items() if k in ("by", "at") and v} if isinstance(doc, dict) else {}


def replay(config: StackConfig, refs: set[str] | None = None, trigger: str | None = None) -> list[DeadLetter]:
    """Replay dead letters not yet replayed (all, or those with the given refs/ids, or trigger)."""
    chosen = [
        d
        for d in list_dead_letters(config)
        if not d.replayed
        and (refs is None or d.ref in refs or d.event.id in refs)
        and (trigger is None or d.event.get("faaspipetrigger") == trigger)
    ]
    topology = load_topology(config.function_dirs)
    # back to the topic its trigger reads: its broker's, or a Kafka source's own
    topics = {t.name: subscription_topic(config, topology, t) for t in topology.subscriptions}
    actor = cli_actor(config)
    producer = KafkaProducer(bootstrap_servers=config.kafka_bootstrap, acks="all")
    try:
        for letter in chosen:
            target = letter.event.get("faaspipetrigger")
            event = letter.event.with_attributes(drop=ERROR_EXTENSIONS, **{REPLAY_TARGET: target})
            key, headers, value = wire.to_kafka(event)
            topic = letter.event.get("faaspipetopic") or topics.get(str(target), config.broker_topic)
            producer.send(topic, key=key, value=value, headers=headers).get(timeout=30)
            marker = json.dumps(
                {"id": letter.event.id, "trigger": target, "by": actor, "at": rfc3339()}
            ).encode()
            producer.send(config.dlq_replayed_topic, key=letter.ref.encode(), value=marker).get(timeout=30)
    finally:
        producer.close()
    return chosen
