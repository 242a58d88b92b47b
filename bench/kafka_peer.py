"""The raw Kafka peer of the broker benchmark: kafka-python producer → consumer-group consumer.

Same Tansu broker, a fresh topic with the broker topic's partition count, records of the
size the ingress writes for one ping. The consumer is set up like a trigger dispatcher's
(``fetch_max_wait_ms=20``, no auto-commit) and commits after every non-empty batch
(at-least-once, as the dispatcher commits after delivery). Two ways to produce:

- ``max_throughput``: one producer sending as fast as it can (``linger_ms=1``, ``acks=all``)
  — the raw produce→consume rate the broker's highest sustained rate is set against;
- ``fixed_rate``: sends paced at ``rate`` events/s — the latency beside the broker's at the
  same offered rate.
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic

from bench.stats import latency_summary, rate

WARMUP_RECORDS = 100
CONSUMER = "group consumer in a thread, fetch_max_wait_ms=20 (as the dispatcher), commit after each batch"


class PeerConsumer(threading.Thread):
    """A consumer-group member reading a topic from the earliest offset, timing every record."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        super().__init__(name=f"consume-{topic}", daemon=True)
        self.consumer = KafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=f"{topic}.consumer",
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            session_timeout_ms=6000,
            heartbeat_interval_ms=1000,
            fetch_max_wait_ms=20,
        )
        self.consumer.subscribe([topic])
        self.assigned = threading.Event()
        self.stopping = threading.Event()
        self.latencies: dict[str, float] = {}
        self.received_at: dict[str, float] = {}
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stopping.is_set():
                batches = self.consumer.poll(timeout_ms=100)
                now = time.time()
                if self.consumer.assignment():
                    self.assigned.set()
                for records in batches.values():
                    for record in records:
                        record_id, sent, _pad = record.value.split(b" ", 2)
                        key = record_id.decode()
                        self.latencies[key] = now - float(sent)
                        self.received_at[key] = now
                if batches:
                    self.consumer.commit()
        except BaseException as exc:  # noqa: BLE001 - reported by the caller
            self.error = exc
        finally:
            self.consumer.close(autocommit=False)

    def wait_for(self, prefix: str, expected: int, timeout_s: float) -> dict[str, float]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.error is None:
            got = {k: v for k, v in list(self.latencies.items()) if k.startswith(prefix)}
            if len(got) >= expected:
                return got
            time.sleep(0.05)
        if self.error is not None:
            raise RuntimeError(f"peer consumer failed: {self.error}") from self.error
        return {k: v for k, v in list(self.latencies.items()) if k.startswith(prefix)}


def peer_value(record_id: str, size: int) -> bytes:
    return f"{record_id} {time.time():.6f} ".encode().ljust(size, b"x")


class KafkaPeer:
    """A fresh topic, a producer and a warmed-up consumer; ``close()`` when done."""

    def __init__(self, bootstrap: str, partitions: int, size: int) -> None:
        self.topic = f"bench.peer.{uuid.uuid4().hex[:8]}"
        self.size = size
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000)
        try:
            admin.create_topics([NewTopic(self.topic, partitions, 1)])
        finally:
            admin.close()
        self.producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=1, retries=5)
        self.consumer = PeerConsumer(bootstrap, self.topic)
        self.consumer.start()
        if not self.consumer.assigned.wait(60):
            self.close()
            raise RuntimeError(f"peer consumer got no partitions of {self.topic} within 60 s")
        for i in range(WARMUP_RECORDS):
            self.send(f"w-{i:06d}")
        self.producer.flush()
        if len(self.consumer.wait_for("w-", WARMUP_RECORDS, 60)) < WARMUP_RECORDS:
            self.close()
            raise RuntimeError(f"warm-up: the peer consumer did not receive {WARMUP_RECORDS} records")

    def send(self, record_id: str) -> None:
        self.producer.send(self.topic, value=peer_value(record_id, self.size))

    def figures(self, prefix: str, expected: int, first_send: float, timeout_s: float) -> dict[str, Any]:
        latencies = self.consumer.wait_for(prefix, expected, timeout_s)
        last_receipt = max((self.consumer.received_at[k] for k in latencies), default=first_send)
        return {
            "topic": self.topic,
            "consumer": CONSUMER,
            "expected": expected,
            "delivered": len(latencies),
            "end_to_end_throughput_eps": rate(len(latencies), last_receipt - first_send),
            "latency_ms": latency_summary(latencies.values()),
        }

    def max_throughput(self, events: int, timeout_s: float = 120.0) -> dict[str, Any]:
        """``events`` records sent without waiting; produce rate and end-to-end throughput."""
        prefix = f"m-{uuid.uuid4().hex[:6]}-"
        first_send = time.time()
        for i in range(events):
            self.send(f"{prefix}{i:06d}")
        self.producer.flush()
        last_ack = time.time()
        return {
            "path": "kafka-python producer (one thread, no wait per send, linger_ms=1, acks=all) → consumer",
            "produce_rate_eps": rate(events, last_ack - first_send),
            **self.figures(prefix, events, first_send, timeout_s),
        }

    def fixed_rate(self, events_per_s: int, duration_s: float, timeout_s: float = 120.0) -> dict[str, Any]:
        """Records paced at ``events_per_s`` for ``duration_s``; delivery latency at that rate."""
        prefix = f"r{events_per_s}-{uuid.uuid4().hex[:6]}-"
        count = int(events_per_s * duration_s)
        start = time.time()
        for i in range(count):
            delay = start + i / events_per_s - time.time()
            if delay > 0:
                time.sleep(delay)
            self.send(f"{prefix}{i:06d}")
        self.producer.flush()
        sent_for = time.time() - start
        return {
            "path": f"kafka-python producer paced at {events_per_s}/s (linger_ms=1, acks=all) → consumer",
            "offered_rate_eps": events_per_s,
            "achieved_send_rate_eps": rate(count, sent_for),
            **self.figures(prefix, count, start, timeout_s),
        }

    def close(self) -> None:
        self.consumer.stopping.set()
        self.consumer.join(10)
        self.producer.close(5)
