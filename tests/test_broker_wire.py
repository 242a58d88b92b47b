"""The broker's wire form and its delivery rules, checked against real HTTP servers.

Sources: Knative ``specs/eventing/data-plane.md`` (knative/specs), CloudEvents 1.0 core spec,
HTTP protocol binding (3.1.3.2 header encoding) and JSON format, eventing-kafka-broker's
backoff, Knative's ``delivery-retryafter`` feature.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiohttp import web

from localdev.broker import wire
from localdev.broker.delivery import Deliverer, dead_letter_event, retry_after
from shared.cloudevents_io import InvalidCloudEvent
from shared.topology import Delivery

ODD_JSON = '{"message":"x",  "n" : "ä",\n "list":[1,2.50,3e2]}'.encode()
BINARY = bytes(range(256))
HEADERS = {"ce-id": "1", "ce-source": "/s", "ce-type": "t", "ce-specversion": "1.0"}


def test_binary_mode_keeps_data_and_attributes_byte_for_byte() -> None:
    event = wire.from_http(
        {**HEADERS, "ce-time": "2026-12-01T00:00:00.123456789Z", "content-type": "application/json"}, ODD_JSON
    )
    headers, body = wire.to_http(event)
    assert body == ODD_JSON and headers["ce-time"] == "2026-12-01T00:00:00.123456789Z"
    assert wire.from_kafka(*wire.to_kafka(event)) == event


def test_structured_mode_keeps_the_data_members_text() -> None:
    envelope = b'{"specversion":"1.0","id":"1","source":"/s","type":"t","data":' + ODD_JSON + b"}"
    event = wire.from_http({"content-type": "application/cloudevents+json"}, envelope)
    assert event.data == ODD_JSON and event.get("datacontenttype") == "application/json"
    _headers, body = wire.to_structured(event)
    assert ODD_JSON in body and wire.from_structured(body) == event


def test_binary_data_survives_both_modes() -> None:
    event = wire.from_http({**HEADERS, "content-type": "application/octet-stream"}, BINARY)
    assert wire.to_http(event)[1] == BINARY
    _headers, body = wire.to_structured(event)
    assert b'"data_base64"' in body and wire.from_structured(body).data == BINARY


def test_text_data_in_structured_mode_is_the_string() -> None:
    body = b'{"specversion":"1.0","id":"1","source":"/s","type":"t","datacontenttype":"text/plain","data":"h\\u00e9"}'
    assert wire.from_structured(body).data == "hé".encode()


def test_header_values_are_percent_encoded_and_decoded() -> None:
    """HTTP binding 3.1.3.2: space, '"', '%' and non-printable-ASCII are percent-encoded."""
    event = wire.from_http({**HEADERS, "ce-subject": "%C3%A4 b%25"}, b"")
    assert event.get("subject") == "ä b%"
    assert wire.to_http(event)[0]["ce-subject"] == "%C3%A4%20b%25"


@pytest.mark.parametrize(
    ("headers", "body", "message"),
    [
        ({"ce-id": "1", "ce-source": "/s", "ce-type": "t"}, b"", "specversion"),
        ({**HEADERS, "ce-specversion": "0.1"}, b"", "unsupported specversion"),
        ({**HEADERS, "ce-time": "yesterday"}, b"", "RFC 3339"),
        ({**HEADERS, "ce-Bad_Name": "x"}, b"", "lowercase letters and digits"),
        ({**HEADERS, "content-type": "application/json"}, b"{not json", "not valid JSON"),
        ({"content-type": "text/plain"}, b"hello", "not a CloudEvent"),
        ({"content-type": "application/cloudevents+json"}, b"[1]", "must be a JSON object"),
        ({"content-type": "application/cloudevents+json"}, b"{not json", "not valid JSON"),
        ({"content-type": "application/cloudevents+json"}, b'{"id":"1"}', "missing required"),
    ],
)
def test_invalid_events_are_refused_naming_the_problem(
    headers: dict[str, str], body: bytes, message: str
) -> None:
    with pytest.raises(InvalidCloudEvent, match=message):
        wire.from_http(headers, body)


def test_dead_letter_adds_extensions_and_keeps_data() -> None:
    from localdev.broker.delivery import Outcome

    event = wire.from_http({**HEADERS, "content-type": "application/json"}, ODD_JSON)
    dead = dead_letter_event(
        event, trigger="t", destination="http://x", outcome=Outcome(False, 500, b"no", 4)
    )
    assert dead.data == ODD_JSON and dead.get("knativeerrorcode") == "500"
    assert base64.b64decode(dead.get("knativeerrordata") or "") == b"no"


def test_backoff_is_delay_times_two_to_the_n() -> None:
    """eventing-kafka-broker and Knative's DeliverySpec docs: backoffDelay * 2^n before retry n."""
    spec = Delivery(backoff_delay="PT0.1S")
    assert [round(spec.delay_before(n), 3) for n in (1, 2, 3)] == [0.2, 0.4, 0.8]


def test_retry_after_reads_seconds_and_dates() -> None:
    assert retry_after({"retry-after": "3"}) == 3.0
    assert retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, now=1445412470.0) == 10.0
    assert retry_after({}) is None


# --- the Deliverer against real HTTP servers --------------------------------------------------


@asynccontextmanager
async def _servers(subscriber: Any, ingress: Any) -> AsyncIterator[tuple[str, str]]:
    runners = []
    urls = []
    for handler in (subscriber, ingress):
        app = web.Application()
        app.router.add_post("/", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # noqa: SLF001 - the bound port
        runners.append(runner)
        urls.append(f"http://127.0.0.1:{port}/")
    try:
        yield urls[0], urls[1]
    finally:
        for runner in runners:
            await runner.cleanup()


REPLY = {**HEADERS, "ce-id": "reply-1", "ce-type": "reply", "content-type": "text/plain"}


def _run(subscriber_answers: list[tuple[int, dict[str, str]]], ingress_status: int, spec: Delivery) -> dict:
    seen: dict[str, Any] = {"requests": [], "stored": []}

    async def subscriber(request: web.Request) -> web.Response:
        seen["requests"].append((dict(request.headers), await request.read()))
        status, headers = subscriber_answers[min(len(seen["requests"]), len(subscriber_answers)) - 1]
        return web.Response(status=status, headers=headers, body=b"a reply" if headers else b"")

    async def ingress(request: web.Request) -> web.Response:
        seen["stored"].append(dict(request.headers))
        return web.Response(status=ingress_status)

    async def main() -> None:
        async with _servers(subscriber, ingress) as (sub_url, ingress_url):
            deliverer = Deliverer(ingress_url)
            await deliverer.open()
            event = wire.from_http({**HEADERS, "content-type": "application/json"}, ODD_JSON)
            seen["outcome"] = await deliverer.deliver(event, sub_url, spec, trigger="trig")
            await deliverer.close()

    asyncio.run(main())
    return seen


FAST = Delivery(retry=2, backoff_delay="PT0.01S", timeout="PT5S")


def test_deliveries_carry_prefer_reply_and_the_exact_bytes() -> None:
    """data-plane.md, Derived (Reply) Events: brokers MUST send ``Prefer: reply``."""
    seen = _run([(202, {})], 202, FAST)
    headers, body = seen["requests"][0]
    assert headers.get("Prefer") == "reply" and body == ODD_JSON and seen["outcome"].ok


def test_a_202_is_never_a_reply() -> None:
    """data-plane.md: responses with a 202 MUST NOT be processed as reply events."""
    seen = _run([(202, REPLY)], 202, FAST)
    assert seen["outcome"].ok and seen["stored"] == []


def test_a_200_reply_is_stored() -> None:
    seen = _run([(200, REPLY)], 202, FAST)
    assert seen["outcome"].ok and seen["stored"][0]["ce-id"] == "reply-1"


def test_a_reply_the_ingress_refuses_fails_the_attempt_and_is_retried_then_dead_lettered() -> None:
    """rekt DataPlaneConformance: "If the reply event was not accepted, the initial event
    SHOULD be redelivered"; after the retries the event is dead-lettered with the reason."""
    seen = _run([(200, REPLY)], 400, FAST)
    outcome = seen["outcome"]
    assert not outcome.ok and len(seen["requests"]) == 3 and len(seen["stored"]) == 3
    assert "reply reply-1 not stored" in outcome.error and outcome.status == 503


def test_structured_format_sends_the_envelope_with_the_same_data() -> None:
    seen = _run([(202, {})], 202, Delivery(retry=0, format="json"))
    headers, body = seen["requests"][0]
    assert headers["Content-Type"].startswith("application/cloudevents+json") and ODD_JSON in body


def test_retry_after_lengthens_the_wait_up_to_retry_after_max(caplog: pytest.LogCaptureFixture) -> None:
    spec = Delivery(retry=1, backoff_delay="PT0.01S", retry_after_max="PT0.5S")
    with caplog.at_level("INFO", logger="faaspipe.delivery"):
        seen = _run([(429, {"Retry-After": "7"}), (202, {})], 202, spec)
    assert seen["outcome"].ok and "retrying in 0.50s" in caplog.text  # min(7 s, retryAfterMax)


def test_retry_after_is_ignored_without_retry_after_max(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("INFO", logger="faaspipe.delivery"):
        _run([(503, {"Retry-After": "7"}), (202, {})], 202, Delivery(retry=1, backoff_delay="PT0.01S"))
    assert "retrying in 0.02s" in caplog.text
