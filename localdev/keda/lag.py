"""KEDA's kafka-scaler lag: per partition, per trigger, and the metric the HPA sees.

Source: kedacore/keda ``pkg/scalers/kafka_scaler.go``: ``getLagForPartition``,
``getTotalLag``, ``getNextFactorThatBalancesConsumersToTopicPartitions``, ``FindFactors``,
``GetMetricsAndActivity``. Pure functions over offsets already read; reading them from
Kafka (with Tansu's log-end workaround) is ``shared/kafka_offsets.py``'s job.

One deliberate difference: a committed offset beyond the log end gives lag 0 here, where
KEDA subtracts (a negative lag lowers the total). On Tansu a reported end can trail the
real log (see ``shared/kafka_offsets.py``); a negative lag would only hide real backlog on
other partitions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from shared.keda_metadata import KafkaScalerMetadata

__all__ = [
    "PartitionOffsets",
    "TriggerLag",
    "find_factors",
    "is_active",
    "lag_for_partition",
    "next_balancing_factor",
    "total_lag",
]

INVALID_OFFSET = -1  # sarama's invalidOffset: the group has no committed offset


@dataclass(frozen=True)
class PartitionOffsets:
    """One partition as the scaler reads it: the group's committed offset (None or -1 when
    never committed) and the log end (None when the end-offsets answer lacks it)."""

    topic: str
    partition: int
    committed: int | None
    end: int | None


@dataclass
class TriggerLag:
    """``getTotalLag``'s result: the metric (after the partition cap) and the lag that decides
    activity (``totalLagWithPersistent``), with the facts behind the cap."""

    metric: int
    with_persistent: int
    raw: int
    partitions: int
    partitions_with_lag: int
    capped_at: int | None = None  # the upper bound (in replicas) when the cap lowered the metric
    persistent: list[tuple[str, int]] = field(default_factory=list)


def lag_for_partition(
    p: PartitionOffsets, meta: KafkaScalerMetadata, previous: dict[tuple[str, int], int]
) -> tuple[int, int]:
    """(lag, lagWithPersistent) of one partition, KEDA's ``getLagForPartition``.

    ``previous`` holds the consumer offsets of the last poll (``excludePersistentLag``); it
    is updated in place, as KEDA's scaler keeps ``previousOffsets`` between polls."""
    consumer = INVALID_OFFSET if p.committed is None or p.committed < 0 else p.committed
    if consumer == INVALID_OFFSET:
        if meta.offset_reset_policy == "latest":
            lag = 0 if meta.scale_to_zero_on_invalid_offset else 1
            return lag, lag
        if meta.scale_to_zero_on_invalid_offset:
            return 0, 0
    if p.end is None:
        return 0, 0  # partition missing from the end-offsets answer: lag 0, not an error
    if consumer == INVALID_OFFSET:  # earliest, not scaling to zero: everything is backlog
        return p.end, p.end
    lag = max(0, p.end - consumer)  # deliberate difference: never negative (module docstring)
    if meta.exclude_persistent_lag:
        key = (p.topic, p.partition)
        before = previous.get(key)
        previous[key] = consumer
        if before is not None and before == consumer:
            return 0, lag  # the consumer did not move since the last poll: stuck, not load
    return lag, lag


def total_lag(
    partitions: list[PartitionOffsets],
    meta: KafkaScalerMetadata,
    previous: dict[tuple[str, int], int],
    *,
    topic: str | None,
) -> TriggerLag:
    """KEDA's ``getTotalLag`` over the partitions of the trigger's topic (or of every topic the
    group consumes when ``topic`` is None), after ``partitionLimitation``."""
    limitation = meta.partition_limitation(topic)
    # KEDA walks the end-offsets answer: a partition missing from it is neither lag nor
    # counted towards the cap.
    chosen = [
        p for p in partitions if p.end is not None and (limitation is None or p.partition in limitation)
    ]
    total = persistent_total = with_lag = 0
    stuck: list[tuple[str, int]] = []
    for p in chosen:
        lag, with_persistent = lag_for_partition(p, meta, previous)
        total += lag
        persistent_total += with_persistent
        if lag > 0:
            with_lag += 1
        if with_persistent > lag:
            stuck.append((p.topic, p.partition))
    return _capped(total, persistent_total, len(chosen), with_lag, meta, stuck)


def _capped(
    total: int,
    persistent_total: int,
    partitions: int,
    with_lag: int,
    meta: KafkaScalerMetadata,
    stuck: list[tuple[str, int]],
) -> TriggerLag:
    """``getTotalLag``'s cap: without ``allowIdleConsumers`` no more consumers than partitions
    (or than partitions with lag), and ``ensureEvenDistributionOfPartitions``."""
    raw, capped_at, threshold = total, None, meta.lag_threshold
    if (
        not meta.allow_idle_consumers
        or meta.limit_to_partitions_with_lag
        or meta.ensure_even_distribution_of_partitions
    ):
        upper = partitions
        if meta.ensure_even_distribution_of_partitions:
            total = next_balancing_factor(total, partitions, threshold) * threshold
        if meta.limit_to_partitions_with_lag:
            upper = with_lag
        if total // threshold > upper:
            total = upper * threshold
            capped_at = upper
    return TriggerLag(total, persistent_total, raw, partitions, with_lag, capped_at, stuck)


def find_factors(n: int) -> list[int]:
    """Every factor of ``n``, ascending (KEDA's ``FindFactors``); [] below 1."""
    if n < 1:
        return []
    small = [i for i in range(1, math.isqrt(n) + 1) if n % i == 0]
    return sorted(set(small + [n // i for i in small]))


def next_balancing_factor(lag: int, partitions: int, threshold: int) -> int:
    """The smallest consumer count that divides the partitions evenly and covers the lag."""
    for factor in find_factors(partitions):
        if factor * threshold >= lag:
            return factor
    return partitions


def is_active(lag: TriggerLag, meta: KafkaScalerMetadata) -> bool:
    """KEDA's ``GetMetricsAndActivity``: active when the lag (persistent included) exceeds
    ``activationLagThreshold``."""
    return lag.with_persistent > meta.activation_lag_threshold
