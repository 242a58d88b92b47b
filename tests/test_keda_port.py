"""KEDA's own test cases for the kafka scaler and the scale executor, as a table.

Each case cites its source in kedacore/keda (commit 8b4f083, 2026-08-20):
- ``kafka_scaler_test.go``: ``pkg/scalers/kafka_scaler_test.go``
- ``kafka_scaler.go``: ``pkg/scalers/kafka_scaler.go`` (rules with no unit test there)
- ``scale_scaledobjects_test.go``: ``pkg/scaling/executor/scale_scaledobjects_test.go``
- ``e2e kafka_test.go``: ``tests/scalers/kafka/kafka_test.go`` (scenarios, as decisions)

Not ported, on purpose (``NOT_PORTED`` says why): connection and authentication options,
which come from the platform and not from ``function.yaml``; ``idleReplicaCount`` and the
pause annotations, which the topology does not offer.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import yaml

from localdev.keda.executor import Bounds, HpaState, decide
from localdev.keda.lag import (
    PartitionOffsets,
    find_factors,
    lag_for_partition,
    next_balancing_factor,
    total_lag,
)
from shared.keda_metadata import KafkaScalerMetadata, KedaMetadataError, parse_partition_limitation
from shared.topology import TopologyError, load_function

T = "kafka_scaler_test.go TestGetBrokers (parseKafkaMetadataTestDataset)"
V = "kafka_scaler.go kafkaMetadata.Validate"

# (options, topic, error field or None, expected attributes, source)
METADATA_CASES: list[tuple[dict[str, str], str | None, str | None, dict[str, Any], str]] = [
    ({}, None, None, {"offset_reset_policy": "latest"}, f"{T}: success, no topic"),
    (
        {"partitionLimitation": "1,2,3,4,5,6"},
        None,
        None,
        {"limit": None},
        f"{T}: ignore partitionLimitation if no topic",
    ),
    ({"partitionLimitation": "           "}, None, None, {"limit": None}, f"{T}: whitespaced limitation"),
    ({"partitionLimitation": ""}, None, None, {"limit": None}, f"{T}: no limitation"),
    ({"lagThreshold": "-1"}, "t", "lagThreshold", {}, f"{T}: lagThreshold is negative value"),
    ({"lagThreshold": "0"}, "t", "lagThreshold", {}, f"{T}: lagThreshold is 0"),
    (
        {"lagThreshold": "1000000", "activationLagThreshold": "0"},
        "t",
        None,
        {"lag_threshold": 1000000},
        f"{T}: lagThreshold is 1000000",
    ),
    (
        {"lagThreshold": "10", "activationLagThreshold": "AA"},
        "t",
        "activationLagThreshold",
        {},
        f"{T}: activation not int",
    ),
    (
        {"lagThreshold": "10", "activationLagThreshold": "0"},
        "t",
        None,
        {"activation_lag_threshold": 0},
        f"{T}: activation 0",
    ),
    ({"activationLagThreshold": "-1"}, "t", "activationLagThreshold", {}, f"{V}: non-negative activation"),
    ({}, "t", None, {"lag_threshold": 10, "activation_lag_threshold": 0, "limit": None}, f"{T}: success"),
    (
        {"partitionLimitation": "1,2,3,4"},
        "t",
        None,
        {"limit": (1, 2, 3, 4)},
        f"{T}: partitionLimitation as list",
    ),
    (
        {"partitionLimitation": "1-4"},
        "t",
        None,
        {"limit": (1, 2, 3, 4)},
        f"{T}: partitionLimitation as range",
    ),
    (
        {"partitionLimitation": "1-4,8,10-12"},
        "t",
        None,
        {"limit": (1, 2, 3, 4, 8, 10, 11, 12)},
        f"{T}: mixed list + ranges",
    ),
    (
        {"partitionLimitation": "a,b,c,d"},
        "t",
        "partitionLimitation",
        {},
        f"{T}: partitionLimitation wrong data type",
    ),
    (
        {"offsetResetPolicy": "latest"},
        "t",
        None,
        {"offset_reset_policy": "latest"},
        f"{T}: offsetResetPolicy latest",
    ),
    ({"offsetResetPolicy": "foo"}, "t", "offsetResetPolicy", {}, f"{T}: offsetResetPolicy wrong"),
    ({"offsetResetPolicy": "earliest"}, "t", None, {"offset_reset_policy": "earliest"}, f"{T}: earliest"),
    ({"allowIdleConsumers": "notvalid"}, "t", "allowIdleConsumers", {}, f"{T}: allowIdleConsumers malformed"),
    (
        {"allowIdleConsumers": "true"},
        "t",
        None,
        {"allow_idle_consumers": True},
        f"{T}: allowIdleConsumers is true",
    ),
    (
        {"excludePersistentLag": "notvalid"},
        "t",
        "excludePersistentLag",
        {},
        f"{T}: excludePersistentLag malformed",
    ),
    (
        {"excludePersistentLag": "true"},
        "t",
        None,
        {"exclude_persistent_lag": True},
        f"{T}: excludePersistentLag true",
    ),
    (
        {"limitToPartitionsWithLag": "true"},
        "t",
        None,
        {"limit_to_partitions_with_lag": True},
        f"{T}: limitToPartitionsWithLag is true",
    ),
    (
        {"limitToPartitionsWithLag": "notvalid"},
        "t",
        "limitToPartitionsWithLag",
        {},
        f"{T}: limitTo malformed",
    ),
    (
        {"allowIdleConsumers": "true", "limitToPartitionsWithLag": "true"},
        "t",
        "limitToPartitionsWithLag",
        {},
        f"{T}: allowIdleConsumers and limitToPartitionsWithLag cannot be set to true simultaneously",
    ),
    (
        {"allowIdleConsumers": "true", "limitToPartitionsWithLag": "false"},
        "t",
        None,
        {"allow_idle_consumers": True},
        f"{T}: allowIdleConsumers can be set when limitToPartitionsWithLag is false",
    ),
    (
        {"limitToPartitionsWithLag": "true"},
        None,
        "limitToPartitionsWithLag",
        {},
        f"{T}: topic must be specified",
    ),
    (
        {"ensureEvenDistributionOfPartitions": "true"},
        "t",
        None,
        {"ensure_even_distribution_of_partitions": True},
        f"{T}: ensureEvenDistributionOfPartitions is true",
    ),
    (
        {"ensureEvenDistributionOfPartitions": "true", "limitToPartitionsWithLag": "true"},
        "t",
        "ensureEvenDistributionOfPartitions",
        {},
        f"{T}: limitToPartitionsWithLag and ensureEvenDistributionOfPartitions cannot both be true",
    ),
    (
        {"ensureEvenDistributionOfPartitions": "true"},
        None,
        "ensureEvenDistributionOfPartitions",
        {},
        f"{V}: needs topic",
    ),
    ({"scaleToZeroOnInvalidOffset": "yes"}, "t", "scaleToZeroOnInvalidOffset", {}, f"{V}: Go ParseBool"),
]

NOT_PORTED = {
    f"{T}: no bootstrapServers / no consumer group / more brokers": "the platform supplies them",
    f"{T}: version supported / not supported": "connection option, from the platform",
    f"{T}: fullMetadata cases": "connection option, from the platform",
    "kafka_scaler_test.go auth, TLS, SASL, OAuth tables": "authentication comes from the platform",
    "scale_scaledobjects_test.go *IdleReplicas*": "idleReplicaCount is not a topology option",
    "scale_scaledobjects_test.go *Pause*, *Forced*": "pause/force annotations are not topology options",
    "scale_scaledobjects_test.go *HPAHealth*": "condition reporting, no replica decision",
    "kafka_scaler.go getTopicPartitions without a topic (every topic of the group)": (
        "each faaspipe consumer group reads exactly one topic, which the topology names; "
        "total_lag(topic=None) keeps KEDA's rule that partitionLimitation is then ignored"
    ),
}


@pytest.mark.parametrize(
    ("options", "topic", "error", "expected", "source"), METADATA_CASES, ids=lambda v: ""
)
def test_metadata(
    options: dict[str, str], topic: str | None, error: str | None, expected: dict, source: str
) -> None:
    if error:
        with pytest.raises(KedaMetadataError) as info:
            KafkaScalerMetadata.parse(options, topic=topic)
        assert info.value.field == error, source
        return
    meta = KafkaScalerMetadata.parse(options, topic=topic)
    for key, value in expected.items():
        actual = meta.partition_limitation(topic) if key == "limit" else getattr(meta, key)
        assert actual == value, source


P = "kafka_scaler_test.go TestKafkaParsePartitionLimitation"
PARTITION_CASES = [
    ("1", (1,), f"{P}: single value"),
    ("1,2,3,4", (1, 2, 3, 4), f"{P}: comma-separated list"),
    (" 1 , 2 , 3 ", (1, 2, 3), f"{P}: list with whitespace around values"),
    ("1-4", (1, 2, 3, 4), f"{P}: simple range"),
    ("3-3", (3,), f"{P}: single-element range"),
    (" 1 - 4 ", (1, 2, 3, 4), f"{P}: range with whitespace"),
    ("1-4,8,10-12", (1, 2, 3, 4, 8, 10, 11, 12), f"{P}: mixed list and ranges"),
    ("a,b,c", None, f"{P}: non-numeric value"),
    ("1-2-3", None, f"{P}: invalid range: too many parts"),
    ("a-3", None, f"{P}: invalid range: non-numeric start"),
    ("1-b", None, f"{P}: invalid range: non-numeric end"),
]


@pytest.mark.parametrize(("text", "expected", "source"), PARTITION_CASES)
def test_partition_limitation(text: str, expected: tuple[int, ...] | None, source: str) -> None:
    if expected is None:
        with pytest.raises(KedaMetadataError):
            parse_partition_limitation(text)
    else:
        assert parse_partition_limitation(text) == expected, source


def test_find_factors() -> None:  # kafka_scaler_test.go TestFindFactors
    cases = {10: [1, 2, 5, 10], 13: [1, 13], 17: [1, 17], 25: [1, 5, 25], 50: [1, 2, 5, 10, 25, 50]}
    cases[100] = [1, 2, 4, 5, 10, 20, 25, 50, 100]
    for n, factors in cases.items():
        assert find_factors(n) == factors


@pytest.mark.parametrize(
    ("lag", "factor"), [(10, 1), (20, 2), (40, 4), (50, 5), (99, 10), (100, 10), (101, 20)]
)
def test_next_factor(lag: int, factor: int) -> None:  # kafka_scaler_test.go TestGetNextFactor
    assert next_balancing_factor(lag, 100, 10) == factor


M = "kafka_scaler_test.go TestGetLagForPartition_MissingPartition"
# (committed, end, offsetResetPolicy, scaleToZeroOnInvalidOffset, lag, lagWithPersistent, source)
PARTITION_LAG_CASES = [
    (-1, None, "earliest", True, 0, 0, f"{M}: Scenario 1"),
    (-1, None, "earliest", False, 0, 0, f"{M}: Scenario 2"),
    (100, None, "earliest", False, 0, 0, f"{M}: Scenario 3"),
    (100, 150, "earliest", False, 50, 50, f"{M}: Control: valid offsets"),
    (-1, 150, "latest", True, 0, 0, f"{M}: Control: invalid offset, latest, scaleToZero"),
    (
        -1,
        150,
        "latest",
        False,
        1,
        1,
        "kafka_scaler.go getLagForPartition: invalid offset, latest -> 1 (keda#2621)",
    ),
    (
        -1,
        150,
        "earliest",
        False,
        150,
        150,
        "kafka_scaler.go getLagForPartition: invalid offset, earliest -> end",
    ),
    (None, 150, "latest", False, 1, 1, "kafka_scaler.go: no offset block committed is the invalid offset"),
]


@pytest.mark.parametrize(
    ("committed", "end", "policy", "zero", "lag", "with_persistent", "source"), PARTITION_LAG_CASES
)
def test_lag_for_partition(
    committed: int | None,
    end: int | None,
    policy: str,
    zero: bool,
    lag: int,
    with_persistent: int,
    source: str,
) -> None:
    meta = KafkaScalerMetadata(offset_reset_policy=policy, scale_to_zero_on_invalid_offset=zero)
    assert lag_for_partition(PartitionOffsets("t", 0, committed, end), meta, {}) == (lag, with_persistent), (
        source
    )


def test_committed_beyond_end_is_zero_not_negative() -> None:
    """Deliberate difference (localdev/keda/lag.py): KEDA would count -5 here, lowering the total."""
    assert lag_for_partition(PartitionOffsets("t", 0, 15, 10), KafkaScalerMetadata(), {}) == (0, 0)


def test_exclude_persistent_lag_counts_a_stuck_partition_only_for_activity() -> None:
    """kafka_scaler.go getLagForPartition (excludePersistentLag); e2e kafka_test.go testPersistentLag."""
    meta = KafkaScalerMetadata(exclude_persistent_lag=True, lag_threshold=1, allow_idle_consumers=True)
    previous: dict[tuple[str, int], int] = {}
    parts = [PartitionOffsets("t", 0, 5, 10)]
    first = total_lag(parts, meta, previous, topic="t")
    assert (first.metric, first.with_persistent) == (5, 5)  # first poll: no history, counts
    second = total_lag(parts, meta, previous, topic="t")
    assert (second.metric, second.with_persistent) == (0, 5)  # did not move: not load, still active
    moved = total_lag([PartitionOffsets("t", 0, 7, 10)], meta, previous, topic="t")
    assert (moved.metric, moved.with_persistent) == (3, 3)


def _parts(lags: list[int]) -> list[PartitionOffsets]:
    return [PartitionOffsets("t", i, 0, lag) for i, lag in enumerate(lags)]


G = "kafka_scaler.go getTotalLag"
# (partition lags, options, metric, capped_at, source)
TOTAL_CASES: list[tuple[list[int], dict[str, str], int, int | None, str]] = [
    ([5, 5, 5, 5], {}, 20, None, f"{G}: sum of partitions"),
    ([100, 0, 0, 0], {}, 40, 4, f"{G}: capped at the topic's partitions without allowIdleConsumers"),
    ([100, 0, 0, 0], {"allowIdleConsumers": "true"}, 100, None, f"{G}: allowIdleConsumers: no cap"),
    (
        [100, 0, 0, 0],
        {"limitToPartitionsWithLag": "true"},
        10,
        1,
        f"{G}: limitToPartitionsWithLag; e2e testLimitToPartitionsWithLag",
    ),
    (
        [100, 0, 0, 0],
        {"partitionLimitation": "1-3"},
        0,
        None,
        f"{G} + getTopicPartitions: partitionLimitation",
    ),
    (
        [0, 30, 0, 0],
        {"partitionLimitation": "1,2"},
        20,
        2,
        "kafka_scaler_test.go TestGetTopicPartitions + cap",
    ),
    (
        [15, 0, 0, 0],
        {"ensureEvenDistributionOfPartitions": "true"},
        20,
        None,
        f"{G}: ensureEven: next factor 2 of 4",
    ),
    ([25, 0, 0, 0], {"ensureEvenDistributionOfPartitions": "true"}, 40, None, f"{G}: ensureEven: 3 -> 4"),
]


@pytest.mark.parametrize(("lags", "options", "metric", "capped_at", "source"), TOTAL_CASES)
def test_total_lag(
    lags: list[int], options: dict[str, str], metric: int, capped_at: int | None, source: str
) -> None:
    result = total_lag(_parts(lags), KafkaScalerMetadata.parse(options), {}, topic="t")
    assert (result.metric, result.capped_at) == (metric, capped_at), source


def test_partition_missing_from_end_offsets_is_skipped_not_an_error() -> None:
    parts = [PartitionOffsets("t", 0, 0, 30), PartitionOffsets("t", 1, 0, None)]
    result = total_lag(parts, KafkaScalerMetadata(), {}, topic="t")
    assert (result.raw, result.metric, result.partitions, result.capped_at) == (
        30,
        10,
        1,
        1,
    )  # cap: answered ones


# --- scale executor + HPA -------------------------------------------------------------------

S = "scale_scaledobjects_test.go"
E2E = "e2e kafka_test.go"


def _decide(lag: int, current: int, *, state: HpaState | None = None, now: float = 100.0, **kw: Any) -> Any:
    options = kw.pop("options", {})
    bounds = Bounds(
        kw.pop("min", 0), kw.pop("max", 5), kw.pop("cooldown", 30.0), kw.pop("stabilization", 0.0)
    )
    meta = KafkaScalerMetadata.parse(options)
    parts = _parts([lag] + [0] * (kw.pop("partitions", 8) - 1))
    return decide([(total_lag(parts, meta, {}, topic="t"), meta)], current, bounds, state or HpaState(), now)


# (lag, current, kwargs, replicas, rule, source)
EXECUTOR_CASES: list[tuple[int, int, dict[str, Any], int, str, str]] = [
    (0, 10, {}, 0, "cooldown", f"{S} TestScaleToMinReplicasWhenNotActive (never active: at once)"),
    (0, 1, {"min": 5, "max": 10}, 5, "min", f"{S} TestScaleToMinReplicasFromLowerInitialReplicaCount"),
    (5, 0, {}, 1, "activation", f"{S} TestScaleFromMinReplicasWhenActive"),
    (
        5,
        0,
        {"min": 2},
        2,
        "activation",
        "scale_scaledobjects.go scaleFromZeroOrIdle: minReplicaCount when > 0",
    ),
    (
        1,
        0,
        {"options": {"activationLagThreshold": "1"}},
        0,
        "activation",
        f"{E2E} testEarliestPolicy: 1 message stays at 0",
    ),
    (
        2,
        0,
        {"options": {"activationLagThreshold": "1"}},
        1,
        "activation",
        f"{E2E} testEarliestPolicy: activation",
    ),
    (25, 1, {}, 3, "threshold", "HPA: ceil(25 / lagThreshold 10)"),
    (1000, 1, {"max": 10, "partitions": 4}, 4, "cap", "kafka_scaler.go: cap at partitions"),
    (1000, 2, {"max": 3}, 3, "cap", "HPA: maxReplicaCount"),
    (
        1000,
        1,
        {"max": 20, "options": {"allowIdleConsumers": "true"}},
        5,
        "stabilisation",
        "HPA scale-up: +4 pods per 15 s",
    ),
    (31, 3, {}, 3, "threshold", "HPA: 31/30 within the 10% tolerance"),
    (0, 3, {"min": 1}, 1, "min", "HPA: no lag, down to minReplicas"),
]


@pytest.mark.parametrize(("lag", "current", "kwargs", "replicas", "rule", "source"), EXECUTOR_CASES)
def test_executor(
    lag: int, current: int, kwargs: dict[str, Any], replicas: int, rule: str, source: str
) -> None:
    decision = _decide(lag, current, **kwargs)
    assert (decision.replicas, decision.rule) == (replicas, rule), f"{source}: {decision}"


def test_inactive_with_replicas_steps_to_one_at_once_then_zero_after_cooldown() -> None:
    """scale_scaledobjects.go scaleToZeroOrIdle + the HPA: lag at or below activation with
    replicas up is inactive; the HPA takes 3 -> 1 at once (no stabilisation window), and
    KEDA takes 1 -> 0 only after cooldownPeriod since the last active poll."""
    state = HpaState()
    assert _decide(30, 3, state=state, now=0).replicas == 3
    step = _decide(0, 3, state=state, now=1)
    assert (step.replicas, step.rule) == (1, "min")
    assert _decide(0, 1, state=state, now=30).replicas == 1  # 30 s is not past the 30 s cooldown
    final = _decide(0, 1, state=state, now=31)
    assert (final.replicas, final.rule) == (0, "cooldown")


def test_lag_below_activation_with_replicas_up_is_inactive() -> None:
    """The old rule (stay up while any lag remains) was not KEDA's: lag 1 <= activation 2 is
    inactive, so the cooldown runs and the function reaches 0."""
    state = HpaState()
    opts = {"options": {"activationLagThreshold": "2"}}
    assert _decide(30, 1, state=state, now=0, **opts).replicas == 3
    assert _decide(1, 3, state=state, now=10, **opts).replicas == 1
    assert _decide(1, 1, state=state, now=41, **opts).replicas == 0


def test_scale_down_stabilisation_holds_the_highest_recent_recommendation() -> None:
    state = HpaState()
    assert _decide(40, 1, state=state, now=0, stabilization=10).replicas == 4
    held = _decide(10, 4, state=state, now=5, stabilization=10)
    assert (held.replicas, held.rule) == (4, "stabilisation")
    assert _decide(10, 4, state=state, now=11, stabilization=10).replicas == 1


def test_max_over_triggers() -> None:
    """An HPA with several External metrics takes the highest replica count."""
    meta = KafkaScalerMetadata()
    lags = [total_lag(_parts([lag, 0, 0, 0]), meta, {}, topic="t") for lag in (5, 25)]
    decision = decide([(lag, meta) for lag in lags], 1, Bounds(0, 5, 30, 0), HpaState(), 0)
    assert decision.replicas == 3


# --- validation at load (up and render read the same topology) ----------------------------


@pytest.mark.parametrize(
    ("scaling", "field"),
    [
        ({"lagThreshold": 0}, "lagThreshold"),
        ({"activationLagThreshold": "AA"}, "activationLagThreshold"),
        ({"activationLagThreshold": -1}, "activationLagThreshold"),
        ({"allowIdleConsumers": "notvalid"}, "allowIdleConsumers"),
        ({"offsetResetPolicy": "newest"}, "offsetResetPolicy"),
        ({"partitionLimitation": "1-2-3"}, "partitionLimitation"),
        ({"allowIdleConsumers": True, "limitToPartitionsWithLag": True}, "limitToPartitionsWithLag"),
        ({"cooldownPeriod": "soon"}, "cooldownPeriod"),
        ({"maxReplicaCount": 0}, "maxReplicaCount"),
        ({"minReplicaCount": 3, "maxReplicaCount": 2}, "minReplicaCount"),
        ({"lagTreshold": 5}, "lagTreshold"),
        # Knative's range for autoscaling.knative.dev/target-utilization-percentage: 1-100
        ({"targetUtilizationPercentage": 0}, "targetUtilizationPercentage"),
        ({"targetUtilizationPercentage": 101}, "targetUtilizationPercentage"),
    ],
)
def test_function_yaml_refuses_bad_scaling_naming_the_field(
    tmp_path: Path, scaling: dict, field: str
) -> None:
    doc = {"name": "f", "module": "m", "kind": "event", "scaling": scaling}
    path = tmp_path / "f" / "function.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(TopologyError, match=field):
        load_function(path)


def test_function_yaml_takes_keda_names_and_defaults(tmp_path: Path) -> None:
    doc = {
        "name": "f",
        "module": "m",
        "scaling": {"lagThreshold": 3, "allowIdleConsumers": True, "offsetResetPolicy": "earliest"},
    }
    path = tmp_path / "f" / "function.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump(doc))
    meta = load_function(path).scaling.keda
    assert (meta.lag_threshold, meta.allow_idle_consumers, meta.offset_reset_policy) == (3, True, "earliest")
    assert meta.scale_to_zero_on_invalid_offset is False and math.isclose(meta.activation_lag_threshold, 0)
