"""The local broker against Knative's data-plane rules, on the real stack.

Each test cites its rule: ``data-plane.md`` is knative/specs ``specs/eventing/data-plane.md``;
``rekt`` is knative/eventing ``test/rekt/features/broker/data_plane.go``. The subscriber is
``tests/functions/conformance`` (records headers and exact body bytes). Deliberate
differences are listed in ``DIFFERENCES`` with the reason.
"""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

import pytest
import urllib3
from kafka import KafkaConsumer, TopicPartition

from localdev.broker import wire
from shared.kafka_offsets import true_end_offsets
from tests.conftest import Stack, wait_until

pytestmark = pytest.mark.integration
HTTP = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(connect=2, read=30))
ODD_JSON = '{"message":"x",  "n" : "ä", "unicode":"\\u00e4",\n "nums":[1,2.50,3e2]}'.encode()
BINARY = bytes(range(256)) * 4

DIFFERENCES = {
    "rekt DataPlaneIngress: versions 0.3": "only CloudEvents 1.0 is accepted (the spec asks for at least one)",
    "data-plane.md OPTIONS probe": "not implemented; senders fall back to POST as the spec says",
}


def _headers(event_type: str, **extra: str) -> dict[str, str]:
    return {
        "ce-id": uuid.uuid4().hex,
        "ce-source": "/tests/conformance",
        "ce-type": event_type,
        "ce-specversion": "1.0",
        **extra,
    }


def _deliveries(stack: Stack, event_id: str) -> list[dict[str, Any]]:
    resp = HTTP.request("GET", stack.config.function_url("conformance") + f"records?id={event_id}")
    assert resp.status == 200, resp.data
    return json.loads(resp.data)


def _delivered(stack: Stack, event_id: str, what: str, count: int = 1) -> list[dict[str, Any]]:
    return wait_until(lambda: (d := _deliveries(stack, event_id)) and len(d) >= count and d, 60, what=what)


def _dead_letter(stack: Stack, event_id: str) -> wire.WireEvent | None:
    return _in_topic(stack, stack.config.dlq_topic, event_id)


def _in_topic(stack: Stack, topic: str, event_id: str) -> wire.WireEvent | None:
    """The event with ``event_id`` in ``topic``, read from the beginning to the true log end."""
    cfg = stack.config
    consumer = KafkaConsumer(bootstrap_servers=cfg.kafka_bootstrap, enable_auto_commit=False)
    try:
        parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        ends = true_end_offsets(consumer, parts)
        consumer.assign(parts)
        consumer.resume(*parts)
        consumer.seek_to_beginning(*parts)
        while any(consumer.position(tp) < ends.get(tp, 0) for tp in parts):
            for records in consumer.poll(timeout_ms=1000).values():
                for r in records:
                    if dict(r.headers).get("ce_id") == event_id.encode():
                        return wire.from_kafka(r.key, r.headers, r.value)
        return None
    finally:
        consumer.close(autocommit=False)


# --- ingress ---------------------------------------------------------------------------------


def test_ingress_refuses_get_with_405(stack: Stack) -> None:
    """rekt DataPlaneIngress: Brokers MUST reject non-POST produce requests with 405."""
    assert HTTP.request("GET", stack.config.ingress_url).status == 405


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        ({"content-type": "application/json"}, b'{"not":"an event"}'),
        ({"ce-id": "1", "ce-source": "/s", "ce-type": "t", "ce-specversion": "0.1"}, b""),  # unknown version
        ({"content-type": "application/cloudevents+json"}, b'{"specversion":"1.0","id":"1"}'),
    ],
)
def test_ingress_refuses_what_is_not_a_valid_cloudevent_with_400(
    stack: Stack, headers: dict[str, str], body: bytes
) -> None:
    """rekt DataPlaneIngress: unable to parse a valid CloudEvent MUST give 400 Bad Request."""
    resp = stack.post_raw(body, headers)
    assert resp.status == 400 and json.loads(resp.data)["error"]


# --- delivery --------------------------------------------------------------------------------


def test_json_data_arrives_byte_for_byte_with_prefer_reply(stack: Stack) -> None:
    """data-plane.md: the broker MUST NOT modify the event data; brokers MUST send
    ``Prefer: reply``. rekt: attributes SHOULD be received identical (time keeps its ns)."""
    headers = _headers(
        "com.example.conformance.v1",
        **{
            "content-type": "application/json",
            "ce-time": "2026-12-01T10:00:00.123456789Z",
            "ce-subject": "%C3%A4",
        },
    )
    assert stack.post_raw(ODD_JSON, headers).status == 202
    (got,) = _delivered(stack, headers["ce-id"], "the JSON event")
    assert base64.b64decode(got["body"]) == ODD_JSON
    assert got["headers"]["ce-time"] == "2026-12-01T10:00:00.123456789Z"
    assert got["headers"]["ce-subject"] == "%C3%A4" and got["headers"]["prefer"] == "reply"
    assert got["headers"]["content-type"] == "application/json"


def test_structured_input_arrives_with_the_data_members_exact_text(stack: Stack) -> None:
    event_id = uuid.uuid4().hex
    envelope = (
        b'{"specversion":"1.0","id":"' + event_id.encode() + b'","source":"/tests/conformance",'
        b'"type":"com.example.conformance.v1","data":' + ODD_JSON + b"}"
    )
    assert stack.post_raw(envelope, {"content-type": "application/cloudevents+json"}).status == 202
    (got,) = _delivered(stack, event_id, "the structured event")
    assert base64.b64decode(got["body"]) == ODD_JSON


def test_binary_data_arrives_byte_for_byte(stack: Stack) -> None:
    """The broker MUST accept all valid CloudEvents, whatever their data's content type."""
    headers = _headers("com.example.conformance.v1", **{"content-type": "application/octet-stream"})
    assert stack.post_raw(BINARY, headers).status == 202
    (got,) = _delivered(stack, headers["ce-id"], "the binary event")
    assert base64.b64decode(got["body"]) == BINARY


def test_delivery_format_json_sends_structured_with_the_same_data(stack: Stack) -> None:
    """DeliverySpec.format: json delivers in structured content mode."""
    headers = _headers("com.example.conformance.structured.v1", **{"content-type": "application/json"})
    assert stack.post_raw(ODD_JSON, headers).status == 202
    (got,) = _delivered(stack, headers["ce-id"], "the structured delivery")
    assert got["headers"]["content-type"].startswith("application/cloudevents+json")
    assert wire.from_structured(base64.b64decode(got["body"])).data == ODD_JSON


def test_failed_event_is_dead_lettered_byte_for_byte(stack: Stack) -> None:
    """data-plane.md retries (conf-binary: retry 1), then the DLQ with knativeerror* and the
    data as received."""
    for data, content_type in ((ODD_JSON, "application/json"), (BINARY, "application/octet-stream")):
        headers = _headers(
            "com.example.conformance.v1", **{"content-type": content_type, "ce-conformance": "fail"}
        )
        assert stack.post_raw(data, headers).status == 202
        _delivered(stack, headers["ce-id"], "both attempts", count=2)
        dead = wait_until(lambda h=headers: _dead_letter(stack, h["ce-id"]), 60, what="the dead letter")
        assert dead.data == data and dead.get("knativeerrorcode") == "500"
        assert (dead.get("knativeerrordest") or "").startswith("http")


def test_reply_is_routed_and_a_202_is_not(stack: Stack) -> None:
    """data-plane.md Derived (Reply) Events: a 200 reply goes to the broker; a 202 MUST NOT be
    processed as a reply. The 202 is sent first; the 200's reply proves routing ran."""
    accepted = _headers(
        "com.example.conformance.v1", **{"ce-conformance": "accepted-reply", "ce-partitionkey": "r"}
    )
    replied = _headers("com.example.conformance.v1", **{"ce-conformance": "reply", "ce-partitionkey": "r"})
    assert stack.post_raw(b"", accepted).status == 202
    _delivered(stack, accepted["ce-id"], "the 202 delivery")
    assert stack.post_raw(b"", replied).status == 202
    reply = _delivered(stack, f"reply-{replied['ce-id']}", "the routed reply")[0]
    assert reply["trigger"] == "conf-replied" and base64.b64decode(reply["body"]) == b"a reply"
    assert _deliveries(stack, f"reply-{accepted['ce-id']}") == []


def test_retry_after_is_honoured_up_to_retry_after_max(stack: Stack) -> None:
    """Knative delivery-retryafter: a 429 with Retry-After: 1 waits max(backoff, 1 s)."""
    headers = _headers("com.example.conformance.retryafter.v1", **{"ce-conformance": "retry-after"})
    assert stack.post_raw(b"", headers).status == 202
    got = _delivered(stack, headers["ce-id"], "the retry", count=2)
    assert [g["attempt"] for g in got] == [1, 2]
    log = (stack.state_dir / "logs" / "dispatcher.log").read_text(errors="replace")
    assert any(headers["ce-id"] in line and "retrying in 1.00s" in line for line in log.splitlines())


def test_legacy_empty_attribute_matches_events_without_it(stack: Stack) -> None:
    """Knative legacy ``spec.filter.attributes``: an empty value matches any value."""
    headers = _headers("com.example.conformance.legacy.v1")  # no subject at all
    assert stack.post_raw(b"", headers).status == 202
    assert _delivered(stack, headers["ce-id"], "the legacy-filtered event")[0]["trigger"] == "conf-legacy"


def test_cesql_trigger_routes_as_knative_would(stack: Stack) -> None:
    """conf-cesql: ``type = '…cesql.v1' AND EXISTS color AND color IN ('red', 'blue') AND
    INT(size) > 3``. A missing attribute, a failed cast or a false comparison: no delivery.
    The matching events are sent last; once they are in, the others had their chance."""
    kind = "com.example.conformance.cesql.v1"
    misses = [
        _headers(kind, **{"ce-color": "green", "ce-size": "5"}),
        _headers(kind, **{"ce-size": "5"}),  # color missing: EXISTS is false
        _headers(kind, **{"ce-color": "red", "ce-size": "big"}),  # INT() cast error: no match
        _headers(kind, **{"ce-color": "red", "ce-size": "2"}),
    ]
    hits = [
        _headers(kind, **{"ce-color": "red", "ce-size": "5"}),
        _headers(kind, **{"ce-color": "blue", "ce-size": "40"}),
    ]
    for headers in misses + hits:
        assert stack.post_raw(b"", headers).status == 202
    for headers in hits:
        assert _delivered(stack, headers["ce-id"], "a matching event")[0]["trigger"] == "conf-cesql"
    assert all(_deliveries(stack, h["ce-id"]) == [] for h in misses)


def test_trigger_subscriber_path(stack: Stack) -> None:
    """Trigger ``subscriber.uri`` relative to the ref: conf-path delivers to /hooks/conformance."""
    headers = _headers("com.example.conformance.path.v1")
    assert stack.post_raw(b"", headers).status == 202
    got = _delivered(stack, headers["ce-id"], "the delivery on its path")[0]
    assert (got["trigger"], got["path"]) == ("conf-path", "/hooks/conformance")


# --- several brokers -------------------------------------------------------------------------
# tests/functions/brokers.yaml declares the broker faaspipe/conformance (retry 1); its trigger
# conf-other-broker has conf-binary's filter and no delivery of its own.


def _post_to(stack: Stack, path: str, headers: dict[str, str], body: bytes = b"") -> int:
    return HTTP.request("POST", stack.config.url("ingress") + path, body=body, headers=headers).status


def test_an_event_reaches_only_its_brokers_triggers(stack: Stack) -> None:
    """Knative Broker: a Trigger subscribes to the events of its ``spec.broker`` only; the Kafka
    broker gives each Broker its own topic. The same type is posted to each broker: each event
    is in its broker's topic only, and delivered by that broker's trigger only."""
    other, default = _headers("com.example.conformance.v1"), _headers("com.example.conformance.v1")
    assert _post_to(stack, "/faaspipe/conformance", other) == 202
    assert _post_to(stack, "/faaspipe/faaspipe", default) == 202
    got = _delivered(stack, other["ce-id"], "the second broker's delivery")
    assert [(g["trigger"], g["path"]) for g in got] == [("conf-other-broker", "/hooks/other-broker")]
    assert [g["trigger"] for g in _delivered(stack, default["ce-id"], "the default's")] == ["conf-binary"]
    cfg = stack.config
    assert _in_topic(stack, cfg.broker_topic + ".conformance", other["ce-id"]) is not None
    assert _in_topic(stack, cfg.broker_topic, other["ce-id"]) is None
    assert _in_topic(stack, cfg.broker_topic + ".conformance", default["ce-id"]) is None
    assert len(_deliveries(stack, other["ce-id"])) == len(_deliveries(stack, default["ce-id"])) == 1


def test_a_trigger_takes_its_brokers_delivery_defaults(stack: Stack) -> None:
    """eventing-kafka-broker trigger.go: the trigger's delivery merged over the broker's
    (``MergeEgressConfig``): conf-other-broker sets none, so the broker's retry 1 holds (two
    attempts, not the platform's four), then the broker's dead-letter sink."""
    headers = _headers("com.example.conformance.v1", **{"ce-conformance": "fail"})
    assert _post_to(stack, "/faaspipe/conformance", headers) == 202
    dead = wait_until(lambda: _dead_letter(stack, headers["ce-id"]), 60, what="the dead letter")
    assert dead.get("knativeerrorcode") == "500" and dead.get("faaspipetrigger") == "conf-other-broker"
    assert [g["attempt"] for g in _deliveries(stack, headers["ce-id"])] == [1, 2]


def test_a_reply_goes_back_to_the_triggers_broker(stack: Stack) -> None:
    """data-plane.md Derived (Reply) Events: the reply is sent to the broker the event came
    from. conf-replied (default broker) must not see a reply made on faaspipe/conformance."""
    headers = _headers("com.example.conformance.v1", **{"ce-conformance": "reply"})
    assert _post_to(stack, "/faaspipe/conformance", headers) == 202
    _delivered(stack, headers["ce-id"], "the delivery that replies")
    reply_id = f"reply-{headers['ce-id']}"
    topic = stack.config.broker_topic + ".conformance"
    wait_until(lambda: _in_topic(stack, topic, reply_id), 30, what="the reply in the second broker's topic")
    assert _in_topic(stack, stack.config.broker_topic, reply_id) is None
    assert _deliveries(stack, reply_id) == []


@pytest.mark.parametrize("path", ["/faaspipe/undeclared", "/elsewhere/faaspipe", "/elsewhere/conformance"])
def test_an_undeclared_broker_is_404(stack: Stack, path: str) -> None:
    """Knative's broker ingress answers 404 for a broker it does not know."""
    assert _post_to(stack, path, _headers("com.example.conformance.v1")) == 404
