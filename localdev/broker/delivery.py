"""Delivery of one event to a subscriber, with Knative's DeliverySpec semantics (asyncio).

Retries on network errors, timeouts, 5xx, 404, 408, 409 and 429 (Knative's retryable set),
waiting ``backoffDelay * 2^(n-1)`` (exponential) or ``backoffDelay * n`` (linear) before
retry n. Other 4xx are final. A reply event in the response goes back to the broker
ingress; the delivery only succeeds once the reply is in the log.

One ``Deliverer`` per dispatcher process: one aiohttp session (keep-alive pool) on the
process's event loop, shared by every trigger.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import threading
import time
from dataclasses import dataclass

import aiohttp
from multidict import CIMultiDictProxy

from localdev.broker.protocol import TRIGGER_HEADER
from localdev.topology import Delivery
from shared.cloudevents_io import CloudEvent, InvalidCloudEvent, parse_http, to_http, with_attributes

log = logging.getLogger("faaspipe.delivery")

RETRYABLE_STATUS = frozenset({404, 408, 409, 429})
ERROR_DATA_LIMIT = 1024  # bytes of the subscriber's response kept in knativeerrordata
__all__ = ["TRIGGER_HEADER", "Deliverer", "Outcome", "dead_letter_event", "is_retryable"]


@dataclass
class Outcome:
    ok: bool
    status: int  # HTTP status of the last attempt; 0 = no response (network error/timeout)
    body: bytes
    attempts: int
    error: str = ""


def is_retryable(status: int) -> bool:
    return status == 0 or status >= 500 or status in RETRYABLE_STATUS


def _has_event(headers: CIMultiDictProxy[str]) -> bool:
    content_type = headers.get("content-type", "")
    return any(k.lower().startswith("ce-") for k in headers) or content_type.startswith(
        "application/cloudevents+json"
    )


async def _pause(delay: float, stop: threading.Event | None) -> bool:
    """Sleep ``delay`` seconds; True if ``stop`` was set meanwhile."""
    deadline = time.monotonic() + delay
    while True:
        if stop is not None and stop.is_set():
            return True
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        await asyncio.sleep(min(left, 0.05))


class Deliverer:
    """Sends events to subscribers and replies to the ingress; use on its event loop only."""

    def __init__(self, ingress_url: str) -> None:
        self.ingress_url = ingress_url
        self._session: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=15),
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept-Encoding"),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def _post(
        self, url: str, event: CloudEvent, timeout: float, trigger: str
    ) -> tuple[int, CIMultiDictProxy[str] | None, bytes]:
        assert self._session is not None, "Deliverer.open() first"
        headers, body = to_http(event)
        headers[TRIGGER_HEADER] = trigger
        try:
            async with self._session.post(
                url, data=body, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout)
            ) as resp:
                return resp.status, resp.headers, await resp.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            return 0, None, f"{type(exc).__name__}: {exc}".encode()

    async def forward_reply(self, reply: CloudEvent, timeout: float) -> tuple[int, bytes]:
        status, _headers, body = await self._post(self.ingress_url, reply, timeout, "reply")
        return status, body

    async def deliver(
        self,
        event: CloudEvent,
        url: str,
        spec: Delivery,
        *,
        trigger: str,
        stop: threading.Event | None = None,
        forward_replies: bool = True,
    ) -> Outcome:
        attempts = 0
        while True:
            attempts += 1
            status, headers, body = await self._post(url, event, spec.timeout_s, trigger)
            error = ""
            if 200 <= status < 300:
                if headers is None or not _has_event(headers) or not forward_replies:
                    return Outcome(True, status, b"", attempts)  # a KafkaSource drops replies
                try:
                    reply = parse_http(headers, body)
                except InvalidCloudEvent as exc:
                    return Outcome(False, 502, f"invalid reply event: {exc}".encode(), attempts, str(exc))
                reply_status, reply_body = await self.forward_reply(reply, spec.timeout_s)
                if 200 <= reply_status < 300:
                    return Outcome(True, status, b"", attempts)
                error = f"reply rejected by the broker ingress ({reply_status})"
                status, body = (reply_status, reply_body) if reply_status else (503, reply_body)
                if not is_retryable(reply_status):
                    return Outcome(False, status, body, attempts, error)
            if not is_retryable(status) or attempts > spec.retry:
                return Outcome(False, status, body, attempts, error or f"subscriber answered {status}")
            delay = spec.delay_before(attempts)
            log.info(
                "trigger %s: event %s attempt %d got %s; retrying in %.2fs",
                trigger,
                event.get_id(),
                attempts,
                status or "no response",
                delay,
            )
            if await _pause(delay, stop):
                return Outcome(False, status, body, attempts, "dispatcher stopping")


def dead_letter_event(event: CloudEvent, *, trigger: str, destination: str, outcome: Outcome) -> CloudEvent:
    """The event as Knative dead-letters it: with ``knativeerror*`` extensions added."""
    return with_attributes(
        event,
        knativeerrordest=destination,
        knativeerrorcode=str(outcome.status),
        knativeerrordata=base64.b64encode(outcome.body[:ERROR_DATA_LIMIT]).decode(),
        faaspipetrigger=trigger,
    )
