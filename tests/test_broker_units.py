"""Filters, topology loading and delivery policy (pure logic)."""

from __future__ import annotations

from pathlib import Path

import pytest

from localdev.broker.delivery import is_retryable
from shared.filters import check_filters, matches
from shared.topology import Delivery, TopologyError, load_function, load_topology, parse_duration

ATTRS = {"type": "dev.faaspipe.sample.ping.v1", "source": "/tests/a", "subject": "landing/ai4i/x.csv"}


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ([], True),
        ([{"exact": {"type": "dev.faaspipe.sample.ping.v1"}}], True),
        ([{"exact": {"type": "dev.faaspipe.sample.pong.v1"}}], False),
        ([{"prefix": {"subject": "landing/"}}, {"suffix": {"subject": ".csv"}}], True),
        ([{"prefix": {"subject": "landing/"}}, {"suffix": {"subject": ".parquet"}}], False),
        ([{"exact": {"missing": "x"}}], False),
        ([{"any": [{"exact": {"source": "/x"}}, {"prefix": {"source": "/tests"}}]}], True),
        ([{"all": [{"exact": {"source": "/tests/a"}}, {"not": {"suffix": {"subject": ".csv"}}}]}], False),
        ([{"not": {"exact": {"type": "other"}}}], True),
        ([{"attributes": {"type": "dev.faaspipe.sample.ping.v1"}}], True),
    ],
)
def test_filters(filters: list, expected: bool) -> None:  # type: ignore[type-arg]
    check_filters(filters)
    assert matches(filters, ATTRS) is expected


@pytest.mark.parametrize(
    "bad",
    [
        [{"exakt": {"type": "x"}}],
        [{"exact": {}}],
        [{"any": []}],
        [{"exact": {"type": 1}}],
        [{"exact": {"a": "b"}, "prefix": {"a": "b"}}],
    ],
)
def test_malformed_filters_are_refused(bad: list) -> None:  # type: ignore[type-arg]
    with pytest.raises(ValueError):
        check_filters(bad)


def test_backoff_follows_knative() -> None:
    exp = Delivery(retry=3, backoff_policy="exponential", backoff_delay="PT0.5S")
    lin = Delivery(retry=3, backoff_policy="linear", backoff_delay="PT0.5S")
    # backoffDelay * 2^n before retry n: Knative's DeliverySpec docs and eventing-kafka-broker
    assert [exp.delay_before(n) for n in (1, 2, 3)] == [1.0, 2.0, 4.0]
    assert [lin.delay_before(n) for n in (1, 2, 3)] == [0.5, 1.0, 1.5]
    assert parse_duration("PT1M30S") == 90 and parse_duration("PT0.2S") == 0.2


@pytest.mark.parametrize(
    ("status", "retry"),
    [
        (0, True),
        (500, True),
        (503, True),
        (404, True),
        (409, True),
        (429, True),
        (400, False),
        (422, False),
        (413, False),
    ],
)
def test_retryable_statuses(status: int, retry: bool) -> None:
    assert is_retryable(status) is retry


def test_the_repository_topology_loads() -> None:
    topology = load_topology()
    assert "sample" in topology.functions and "object-events" in topology.functions
    assert len({t.name for t in topology.triggers}) == len(topology.triggers)


def test_bad_function_yaml_names_the_field(tmp_path: Path) -> None:
    path = tmp_path / "function.yaml"
    path.write_text("name: x\nmodule: m\ntriggers:\n  - name: t\n    delivery: {retries: 3}\n")
    with pytest.raises(TopologyError, match="unknown field"):
        load_function(path)
    path.write_text("name: x\nmodule: m\nscaling: {minReplicaCount: 3, maxReplicaCount: 1}\n")
    with pytest.raises(TopologyError, match="minReplicaCount"):
        load_function(path)
    path.write_text("name: x\nmodule: m\nscaling: {stableWindow: 2}\n")
    with pytest.raises(TopologyError, match="stableWindow must be between 6 and 3600"):
        load_function(path)


@pytest.mark.parametrize(
    ("kind", "scaling", "window"),
    [
        ("http", "{}", 60.0),  # Knative's default
        ("http", "{cooldownPeriod: 10}", 60.0),
        ("event", "{cooldownPeriod: 10}", 10.0),  # an event function leaves after its KEDA cooldown
        ("event", "{cooldownPeriod: 2}", 6.0),  # ... within Knative's range
        ("event", "{cooldownPeriod: 300}", 60.0),
        ("event", "{cooldownPeriod: 300, stableWindow: 120}", 120.0),
    ],
)
def test_stable_window_defaults_by_kind(tmp_path: Path, kind: str, scaling: str, window: float) -> None:
    path = tmp_path / "function.yaml"
    path.write_text(f"name: x\nmodule: m\nkind: {kind}\nscaling: {scaling}\n")
    policy = load_function(path).scaling
    assert policy.stable_window_s == window
    assert policy.panic_window_s == max(1.0, window / 10)


def test_kafka_sources_are_subscriptions_on_their_own_topic(tmp_path: Path) -> None:
    path = tmp_path / "function.yaml"
    path.write_text(
        "name: x\nmodule: m\nkafkaSources:\n  - name: x-log\n    topic: some.topic\n"
        "triggers:\n  - name: x-ping\n    filters: [{exact: {type: t}}]\n"
    )
    fn = load_function(path)
    (source,) = fn.kafka_sources
    assert source.is_kafka_source and source.topic == "some.topic" and source.filters == ()
    assert source.consumer_group == "faaspipe.source.x-log"
    assert fn.triggers[0].consumer_group == "faaspipe.trigger.x-ping"
    assert [s.name for s in fn.subscriptions] == ["x-ping", "x-log"]
    path.write_text("name: x\nmodule: m\nkafkaSources:\n  - name: x-log\n    topics: [a]\n")
    with pytest.raises(TopologyError, match="unknown field"):
        load_function(path)
    path.write_text("name: x\nmodule: m\nkafkaSources:\n  - name: x-log\n")
    with pytest.raises(TopologyError, match="topic"):
        load_function(path)


def test_the_prediction_log_has_its_own_topic_read_by_the_monitor() -> None:
    topology = load_topology()
    predict_topic = topology.functions["predict"].env["FAASPIPE_PREDICTION_TOPIC"]
    (source,) = topology.functions["monitor"].kafka_sources
    assert source.topic == predict_topic != "faaspipe.broker"
    assert predict_topic in topology.source_topics  # beside the sensor readings' topic
