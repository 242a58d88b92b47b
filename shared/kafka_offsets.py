"""True log-end offsets and consumer-group lag on Tansu.

Tansu (the Kafka-protocol broker faaspipe runs on) answers ListOffsets "latest" with
the base offset of the partition's LAST RECORD BATCH + 1 instead of the log end: after
a producer wrote 10 records as one batch (offsets 0..9), ``KafkaConsumer.end_offsets()``
says 1, not 10. On its S3 storage engine the reported end can lag further behind. Lag
computed from it would be wrong, so :func:`true_end_offsets` reads the tail of each
partition from ``reported_end - 1`` (the last batch's base offset) and takes the end
from what is actually in the log. ``tests/test_kafka_offsets.py`` keeps a test that
fails once the upstream defect is fixed, so this workaround can then be reviewed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition

__all__ = ["GroupLag", "PartitionLag", "group_lag", "offsets_consumer", "true_end_offsets"]

_MAX_RECORDS = 1_000_000  # drain everything already fetched in one poll


def offsets_consumer(bootstrap_servers: str, **overrides: Any) -> KafkaConsumer:
    """A group-less consumer suited to :func:`true_end_offsets` (and reusable across calls).

    No group and no auto-commit, so it never joins or disturbs a consumer group; a short
    ``fetch_max_wait_ms`` so a fetch at the tail comes back empty quickly.
    """
    config: dict[str, Any] = {
        "bootstrap_servers": bootstrap_servers,
        "group_id": None,
        "enable_auto_commit": False,
        "fetch_max_wait_ms": 10,
        "auto_offset_reset": "latest",
        "client_id": "faaspipe-offsets",
    }
    config.update(overrides)
    return KafkaConsumer(**config)


def true_end_offsets(
    consumer: KafkaConsumer,
    partitions: list[TopicPartition],
    timeout_s: float = 5.0,
    *,
    max_tail_polls: int = 5,
) -> dict[TopicPartition, int]:
    """Log-end offset (offset of the next record to be written) of each partition.

    For each partition with a reported end > 0, seeks to ``reported - 1`` and reads to the
    tail; all partitions are read together by one poll loop. A partition is finished when
    its position moved and reached the fetch high watermark, and then either a poll brings
    nothing new for it or it already brought new records ``max_tail_polls`` times (a busy
    producer: the tail moves on forever, and a slightly older end is as good). Result:
    ``max(reported, last offset read + 1, position)``; partitions still being read at
    ``timeout_s`` get the best value seen so far, never below the reported end. A partition
    the end-offsets answer lacks is not in the result.

    ``consumer`` must be group-less (``group_id=None``; see :func:`offsets_consumer`); its
    assignment is replaced by ``partitions`` and left paused. It only reads record offsets
    (no value deserializer is needed). Not thread-safe, like ``KafkaConsumer`` itself.
    """
    if consumer.config.get("group_id") is not None:
        raise ValueError("true_end_offsets needs a consumer without a group (group_id=None)")
    partitions = list(dict.fromkeys(partitions))
    if not partitions:
        return {}
    reported: dict[TopicPartition, int] = dict(
        consumer.end_offsets(partitions, timeout_ms=int(timeout_s * 1000))
    )
    # A partition missing from the answer is left out (KEDA counts it as lag 0, not an error).
    ends = {tp: int(reported[tp] or 0) for tp in partitions if tp in reported}
    start = {tp: end - 1 for tp, end in ends.items() if end > 0}
    if not start:
        return ends

    consumer.assign(list(start))
    consumer.resume(*start)
    for tp, offset in start.items():
        consumer.seek(tp, offset)

    fetch_wait_ms = int(consumer.config.get("fetch_max_wait_ms") or 500)
    idle_ms = fetch_wait_ms + 40  # one empty fetch at the tail, plus some slack
    deadline = time.monotonic() + timeout_s
    pending = set(start)
    data_polls = dict.fromkeys(start, 0)
    try:
        while pending:
            left_ms = int((deadline - time.monotonic()) * 1000)
            if left_ms <= 0:
                break
            records = consumer.poll(timeout_ms=min(idle_ms, left_ms), max_records=_MAX_RECORDS)
            for tp, batch in records.items():
                if tp in pending and batch:
                    ends[tp] = max(ends[tp], max(r.offset for r in batch) + 1)
                    data_polls[tp] += 1
            for tp in list(pending):
                position = consumer.position(tp)
                if position <= start[tp]:
                    continue  # its first fetch has not come back yet
                highwater = consumer.highwater(tp)
                if highwater is not None and position < highwater:
                    continue  # records known to exist are still to be read
                if tp not in records or data_polls[tp] >= max_tail_polls:
                    pending.discard(tp)
                    consumer.pause(tp)
        for tp in start:
            # The position also counts records the client skips (e.g. transaction markers).
            ends[tp] = max(ends[tp], int(consumer.position(tp)))
    finally:
        consumer.pause(*start)  # nothing is prefetched between calls
    return ends


@dataclass
class PartitionLag:
    partition: int
    committed: int | None
    end: int | None  # None: missing from the end-offsets answer
    lag: int


@dataclass
class GroupLag:
    group: str
    topic: str
    partitions: list[PartitionLag] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(p.lag for p in self.partitions)


def _committed_offsets(
    admin: KafkaAdminClient, group: str, partitions: list[TopicPartition]
) -> dict[TopicPartition, Any]:
    if hasattr(admin, "list_group_offsets"):  # kafka-python 3
        return dict(admin.list_group_offsets({group: partitions}).get(group, {}))
    return dict(admin.list_consumer_group_offsets(group, partitions=partitions))


def group_lag(
    bootstrap_servers: str,
    group: str,
    topic: str,
    *,
    admin: KafkaAdminClient | None = None,
    consumer: KafkaConsumer | None = None,
    timeout_s: float = 5.0,
    ends: dict[TopicPartition, int] | None = None,
) -> GroupLag:
    """Lag of consumer group ``group`` on ``topic``: true log end minus committed offset.

    Pass long-lived ``admin`` / group-less ``consumer`` clients when polling (the
    autoscaler does, every second); clients created here are closed before returning.
    An unknown topic gives no partitions (total 0).

    ``lag`` is the plain difference: a partition the group never committed (no entry, or
    offset -1) has ``committed=None`` and lag 0, one missing from the end-offsets answer
    ``end=None`` and lag 0, and a committed offset beyond the end (a stale end) lag 0. The
    autoscaler applies KEDA's rules to ``committed`` and ``end`` itself (``localdev/keda``).
    ``ends``: the topic's true log ends, when already read for another group this round.
    """
    own_admin = admin is None
    own_consumer = consumer is None
    if admin is None:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap_servers, client_id="faaspipe-offsets")
    try:
        if consumer is None:
            consumer = offsets_consumer(bootstrap_servers)
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        if not partitions:
            return GroupLag(group, topic, [])
        committed = _committed_offsets(admin, group, partitions)
        if ends is None:
            ends = true_end_offsets(consumer, partitions, timeout_s)
        result = GroupLag(group, topic, [])
        for tp in partitions:
            meta = committed.get(tp)
            offset = getattr(meta, "offset", meta)
            offset = None if offset is None or offset < 0 else int(offset)
            end = ends.get(tp)
            lag = 0 if offset is None or end is None else max(0, end - offset)
            result.partitions.append(PartitionLag(tp.partition, offset, end, lag))
        return result
    finally:
        if own_consumer and consumer is not None:
            consumer.close()
        if own_admin:
            admin.close()
