"""Platform behaviour on the real local stack: Tansu, SeaweedFS, MLflow, broker, functions."""

from __future__ import annotations

import io
import json
import uuid

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.structs import OffsetAndMetadata

from events import new_event
from shared import tracing
from shared.kafka_offsets import group_lag, offsets_consumer, true_end_offsets
from tests.conftest import Stack, wait_until

pytestmark = pytest.mark.integration

PING = "dev.faaspipe.sample.ping.v1"


def ping(subject: str | None = None, source: str = "/tests", **data: object):  # type: ignore[no-untyped-def]
    return new_event(PING, {"message": uuid.uuid4().hex, **data}, source=source, subject=subject)


def by_id(records: list[dict], event_id: str) -> list[dict]:  # type: ignore[type-arg]
    return [r for r in records if r["id"] == event_id]


def broker_end_offsets(stack: Stack) -> dict[int, int]:
    consumer = offsets_consumer(stack.config.kafka_bootstrap)
    try:
        topic = stack.config.broker_topic
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
        return {tp.partition: end for tp, end in true_end_offsets(consumer, partitions).items()}
    finally:
        consumer.close()


def records_between(stack: Stack, start: dict[int, int], end: dict[int, int]) -> list:  # type: ignore[type-arg]
    consumer = offsets_consumer(stack.config.kafka_bootstrap)
    topic = stack.config.broker_topic
    partitions = [TopicPartition(topic, p) for p in start]
    consumer.assign(partitions)
    consumer.resume(*partitions)
    for tp in partitions:
        consumer.seek(tp, start[tp.partition])
    records = []
    while any(consumer.position(tp) < end[tp.partition] for tp in partitions):
        batch = consumer.poll(timeout_ms=1000)
        if not batch:
            break
        for recs in batch.values():
            records.extend(r for r in recs if r.offset < end[r.partition])
    consumer.close()
    return records


def test_status_shows_every_component_healthy(stack: Stack) -> None:
    result = stack.cli("status", "--json")
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert status["state"] == "running"
    assert {c["name"] for c in status["components"]} == {
        "seaweedfs",
        "kafka",
        "mlflow",
        "dispatcher",
        "broker",
    }
    assert all(c["state"] == "ready" for c in status["components"])
    for name, fn in status["functions"].items():
        assert len(fn["replicas"]) >= fn["min_replicas"], name

    def settled() -> dict[str, list[str]]:
        """Replicas not ready yet: only ones still starting (a function at zero woken by an
        earlier test's event or request) may be, and those become ready."""
        functions = json.loads(stack.cli("status", "--json").stdout)["functions"]
        states = {
            n: [r["state"] for r in f["replicas"] if r["state"] != "ready"] for n, f in functions.items()
        }
        assert all(s == "starting" for pending in states.values() for s in pending), states
        return {n: pending for n, pending in states.items() if pending}

    wait_until(lambda: not settled(), 120, what="every replica ready")


def test_up_twice_is_harmless(stack: Stack) -> None:
    result = stack.cli("up")
    assert result.returncode == 0, result.stderr
    assert "already running" in result.stdout


def test_port_in_use_is_a_clear_error(stack: Stack, tmp_path) -> None:  # type: ignore[no-untyped-def]
    result = stack.cli("up", env={"FAASPIPE_STATE_DIR": str(tmp_path / "second")}, timeout=60)
    assert result.returncode == 2
    assert "ports are in use" in result.stderr and "kafka" in result.stderr


def test_object_put_reaches_subscriber_as_cloudevent(stack: Stack) -> None:
    key = f"e2e/{uuid.uuid4().hex}/part-1.csv"
    body = b"a,b\n1,2\n"
    stack.s3().put_object("landing", key, io.BytesIO(body), len(body), content_type="text/csv")
    first = wait_until(
        lambda: [r for r in stack.records("rec-object") if r["subject"] == key],
        30,
        what="object.created for the put object",
    )
    assert len(first) == 1
    event = first[0]
    assert event["type"] == "dev.faaspipe.object.created.v1"
    assert event["source"] == "s3://landing"
    assert event["data"]["bucket"] == "landing" and event["data"]["key"] == key
    assert event["data"]["size"] == len(body)
    # an overwrite is a new object version: a new event with a new id
    body2 = b"a,b\n1,3\n9,9\n"
    stack.s3().put_object("landing", key, io.BytesIO(body2), len(body2), content_type="text/csv")
    both = wait_until(
        lambda: len(r := [x for x in stack.records("rec-object") if x["subject"] == key]) >= 2 and r,
        30,
        what="object.created for the overwrite",
    )
    assert both[1]["id"] != both[0]["id"] and both[1]["data"]["size"] == len(body2)


def test_filters_route_only_to_matching_triggers(stack: Stack) -> None:
    sent = {
        "exact": ping("route/exact"),
        "prefix": ping("route/pre-1"),
        "any_a": ping("route/a"),
        "any_b_blocked": ping("route/b", source="/blocked/tests"),
        "any_b": ping("route/b"),
        "none": ping("route/none"),
    }
    for event in sent.values():
        assert stack.post_event(event).status == 202
    ids = {name: e.get_id() for name, e in sent.items()}
    expected = {
        "rec-exact": {ids["exact"]},
        "rec-prefix": {ids["prefix"]},
        "rec-any-not": {ids["any_a"], ids["any_b"]},
        "rec-suffix": set(),
    }
    # the sample trigger replies pong to every ping: wait for all of them, then the filters had their turn
    wait_until(
        lambda: {r["subject"] for r in stack.records("rec-pong")} >= set(ids.values()),
        30,
        what="pongs for every ping",
    )
    ours = set(ids.values())
    for trigger, want in expected.items():
        got = {r["id"] for r in stack.records(trigger) if r["id"] in ours}
        assert got == want, trigger


@pytest.mark.parametrize(
    ("mode", "content_type", "body"),
    [
        ("binary", "text/plain; charset=utf-8", "h\u00e9llo, foreign world".encode()),
        ("binary", "application/json", b'{"reading": 21.5, "unit": "C"}'),
    ],
)
def test_a_foreign_event_type_is_accepted_and_routed(
    stack: Stack, mode: str, content_type: str, body: bytes
) -> None:
    """Any valid CloudEvent enters, as a Knative broker takes it; a trigger filtering on its
    type gets it (the JavaScript SDK posting its own type was refused before)."""
    event_id = uuid.uuid4().hex
    headers = {
        "ce-specversion": "1.0",
        "ce-id": event_id,
        "ce-source": "/tests/foreign",
        "ce-type": "com.example.foreign.v1",
        "content-type": content_type,
    }
    resp = stack.post_raw(body, headers)
    assert resp.status == 202, resp.data
    got = wait_until(
        lambda: by_id(stack.records("rec-foreign"), event_id), 30, what="the foreign event delivered"
    )
    assert len(got) == 1 and got[0]["type"] == "com.example.foreign.v1"
    assert got[0]["source"] == "/tests/foreign"


def test_reply_is_routed_onward_and_keeps_the_trace(stack: Stack) -> None:
    parent = tracing.new_traceparent()
    event = new_event(PING, {"message": "trace me"}, source="/tests", extensions={"traceparent": parent})
    assert stack.post_event(event, structured=True).status == 202
    pong = wait_until(
        lambda: [r for r in stack.records("rec-pong") if r["subject"] == event.get_id()],
        30,
        what="the pong reply",
    )[0]
    assert pong["data"]["message"] == "trace me"
    assert tracing.trace_id(pong["traceparent"]) == tracing.trace_id(parent)
    assert pong["traceparent"] != parent  # a new span for the new hop


def test_failing_handler_is_dead_lettered_and_replayable(stack: Stack) -> None:
    event = ping(fail_times=4)  # the sample trigger retries 3 times: 4 attempts fail
    assert stack.post_event(event).status == 202

    def dead_letter() -> dict | None:  # type: ignore[type-arg]
        out = stack.cli("dlq", "list", "--json")
        assert out.returncode == 0, out.stderr
        return next((d for d in json.loads(out.stdout) if d["id"] == event.get_id()), None)

    letter = wait_until(dead_letter, 30, interval=1, what="the dead letter")
    assert letter["trigger"] == "sample-ping" and letter["code"] == "500"
    assert letter["destination"].endswith("/sample/")
    assert "failing on purpose: attempt 4" in letter["error"]
    assert not [r for r in stack.records("rec-pong") if r["subject"] == event.get_id()]

    replay = stack.cli("dlq", "replay", event.get_id())
    assert replay.returncode == 0 and "replayed 1" in replay.stdout, replay.stdout + replay.stderr
    pong = wait_until(
        lambda: [r for r in stack.records("rec-pong") if r["subject"] == event.get_id()],
        30,
        what="the pong after replay",
    )
    assert pong[0]["data"]["attempt"] == 5
    # only the failing trigger got the replay: the other subscribers saw the ping once at most
    assert len(by_id(stack.records(), event.get_id())) <= 1
    listed = json.loads(stack.cli("dlq", "list", "--json", "--all").stdout)
    replayed = next(d for d in listed if d["id"] == event.get_id())
    assert replayed["replayed"] is True
    assert replayed["replayed_by"].startswith("cli:") and replayed["replayed_at"]  # who replayed it, when


def test_duplicate_delivery_is_processed_once(stack: Stack) -> None:
    event = ping()
    assert stack.post_event(event).status == 202
    assert stack.post_event(event).status == 202  # the same id and source: a redelivery
    pongs = wait_until(
        lambda: len(p := [r for r in stack.records("rec-pong") if r["subject"] == event.get_id()]) >= 2 and p,
        30,
        what="two pong deliveries",
    )
    # the handler ran once: the second delivery got the stored reply (same event id, attempt 1)
    assert {p["id"] for p in pongs} == {pongs[0]["id"]}
    assert [p["data"]["attempt"] for p in pongs] == [1, 1]


@pytest.mark.parametrize(
    ("case", "headers", "body", "status", "says"),
    [
        (
            "not a cloudevent",
            {"content-type": "application/json"},
            b'{"message": "x"}',
            400,
            "not a CloudEvent",
        ),
        (
            "missing id",
            {"ce-specversion": "1.0", "ce-source": "/t", "ce-type": PING, "content-type": "application/json"},
            b'{"message": "x"}',
            400,
            "ce-id",
        ),
        ("bad json", {"content-type": "application/cloudevents+json"}, b"{not json", 400, "not valid JSON"),
        (
            "unknown type",
            {
                "ce-specversion": "1.0",
                "ce-id": "1",
                "ce-source": "/t",
                "ce-type": "dev.faaspipe.nope.v1",
                "content-type": "application/json",
            },
            b"{}",
            400,
            "unknown event type",
        ),
        (
            "schema-breaking data",
            {
                "ce-specversion": "1.0",
                "ce-id": "1",
                "ce-source": "/t",
                "ce-type": PING,
                "content-type": "application/json",
            },
            b'{"message": 5}',
            400,
            "data.message",
        ),
        (
            "oversized",
            {
                "ce-specversion": "1.0",
                "ce-id": "1",
                "ce-source": "/t",
                "ce-type": PING,
                "content-type": "application/json",
            },
            json.dumps({"message": "x" * (2 * 1024 * 1024)}).encode(),
            413,
            "limit",
        ),
    ],
)
def test_bad_input_is_refused_and_never_logged(
    stack: Stack,
    case: str,
    headers: dict,
    body: bytes,  # type: ignore[type-arg]
    status: int,
    says: str,
) -> None:
    before = broker_end_offsets(stack)
    resp = stack.post_raw(body, headers)
    assert resp.status == status, (case, resp.data)
    assert says in json.loads(resp.data)["error"], (case, resp.data)
    # the shared stack has other traffic: look at what was appended meanwhile, not at counts
    appended = records_between(stack, before, broker_end_offsets(stack))
    assert not [r for r in appended if r.value == body or dict(r.headers).get("ce_source") == b"/t"], case


def test_event_log_readers_may_stop_mid_batch_and_miss_nothing(stack: Stack) -> None:
    """`faaspipe run` and the tests stop reading at the event they wait for, then read on:
    events fetched in the same batch must come next, not be skipped (regression: a
    retrain.requested right behind its drift.detected was lost)."""
    from localdev.event_log import EventLog

    log = EventLog(stack.config)
    try:
        subject = f"batch/{uuid.uuid4().hex}"
        sent = [
            new_event(
                "dev.faaspipe.sample.ping.v1", {"message": f"m{i}"}, source="/tests/batch", subject=subject
            )
            for i in range(5)
        ]
        for event in sent:
            assert stack.post_event(event).status == 202
        wanted = {e.get_id() for e in sent}
        got: list[str] = []
        while len(got) < len(wanted):
            for event in log.events(30):  # a new iteration for each event, like wait_for_event
                if event.get_id() in wanted:
                    got.append(event.get_id())
                    break
            else:
                break
        assert sorted(got) == sorted(wanted), "an event fetched with another was skipped"
    finally:
        log.close()


def test_lag_is_exact_when_producers_batch(stack: Stack) -> None:
    """Tansu reports the last batch's base offset + 1 as the log end; our lag must not."""
    bootstrap = stack.config.kafka_bootstrap
    topic, group = f"lagtest-{uuid.uuid4().hex[:8]}", f"lagtest-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic(topic, 3, 1)])
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=50, acks="all")
    for i in range(60):
        producer.send(topic, value=b"x" * 100, partition=i % 3)
    producer.flush()
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    partitions = [TopicPartition(topic, p) for p in range(3)]
    consumer.assign(partitions)
    consumer.commit({tp: OffsetAndMetadata(5, "", -1) for tp in partitions})  # 15 of 60 delivered
    lag = group_lag(bootstrap, group, topic)
    assert lag.total == 45
    assert [p.end for p in lag.partitions] == [20, 20, 20]
    reported = consumer.end_offsets(partitions)
    consumer.close()
    admin.close()
    producer.close()
    if all(reported[tp] == 20 for tp in partitions):
        pytest.fail(
            "Tansu now reports true log ends (upstream defect fixed?): review shared/kafka_offsets.py"
        )


def test_events_survive_a_restart_with_s3_storage(durable_stack: Stack) -> None:
    stack = durable_stack
    event = ping("route/restart")
    assert stack.post_event(event).status == 202
    wait_until(
        lambda: [r for r in stack.records("rec-pong") if r["subject"] == event.get_id()],
        30,
        what="pong before restart",
    )
    ends_before = broker_end_offsets(stack)
    assert stack.cli("down").returncode == 0
    result = stack.cli("up")
    assert result.returncode == 0, result.stdout + result.stderr
    assert broker_end_offsets(stack) == ends_before  # the log survived
    consumer = offsets_consumer(stack.config.kafka_bootstrap)
    topic = stack.config.broker_topic
    partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
    consumer.assign(partitions)
    consumer.seek_to_beginning(*partitions)
    ids = set()
    while sum(consumer.position(tp) for tp in partitions) < sum(ends_before.values()):
        for records in consumer.poll(timeout_ms=1000).values():
            ids.update(dict(r.headers)["ce_id"].decode() for r in records)
    consumer.close()
    assert event.get_id() in ids
    # committed trigger offsets survived too: nothing old is delivered again
    new = ping("route/after-restart")
    assert stack.post_event(new).status == 202
    wait_until(
        lambda: [r for r in stack.records("rec-pong") if r["subject"] == new.get_id()],
        30,
        what="pong after restart",
    )
    assert not [r for r in stack.records() if r["subject"] == event.get_id() or r["id"] == event.get_id()]
