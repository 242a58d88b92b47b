"""Delivery of one event to a subscriber, with Knative's DeliverySpec semantics (asyncio).

Per the Knative Eventing data-plane spec and eventing-kafka-broker:
- Retries on network errors, timeouts, 5xx, 404, 408, 409 and 429 (Knative's retryable set),
  waiting ``backoffDelay * 2^n`` (exponential) or ``backoffDelay * n`` (linear) before retry
  n; with ``retryAfterMax`` set, a 429 or 503 with ``Retry-After`` waits the longer of that
  and the backoff, up to ``retryAfterMax``. Other 4xx are final.
- Each delivery carries ``Prefer: reply`` (triggers; a Kafka source takes no replies).
- A ``2xx`` other than ``202`` with an event in it is a reply: it goes back to the broker
  ingress, and the delivery succeeds once the reply is in the log. Storing a reply is
  retried with the same spec; if it still fails, the original event is dead-lettered with
  the reason. A ``202`` is never a reply.
- The event is sent as received (``wire``): binary content mode, or structured with
  ``delivery.format: json``; its data bytes are never re-encoded.

One ``Deliverer`` per dispatcher process: one aiohttp session (keep-alive pool) on the
process's event loop, shared by every trigger.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import aiohttp
from multidict import CIMultiDictProxy

from localdev.broker import wire
from localdev.broker.protocol import TRIGGER_HEADER
from shared.cloudevents_io import InvalidCloudEvent
from shared.topology import Delivery

log = logging.getLogger("faaspipe.delivery")

RETRYABLE_STATUS = frozenset({404, 408, 409, 429})
RETRY_AFTER_STATUS = frozenset({429, 503})
ERROR_DATA_LIMIT = 1024  # bytes of the subscriber's response kept in knativeerrordata
__all__ = ["TRIGGER_HEADER", "Deliverer", "Outcome", "dead_letter_event", "is_retryable", "retry_after"]


@dataclass
class Outcome:
    ok: bool
    status: int  # HTTP status of the last attempt; 0 = no response (network error/timeout)
    body: bytes
    attempts: int
    error: str = ""


def is_retryable(status: int) -> bool:
    return status == 0 or status >= 500 or status in RETRYABLE_STATUS


def retry_after(headers: Mapping[str, str] | None, now: float | None = None) -> float | None:
    """Seconds a ``Retry-After`` header asks for (delay-seconds or an HTTP-date), if any."""
    value = (headers or {}).get("retry-after", "").strip()
    if not value:
        return None
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _has_event(headers: CIMultiDictProxy[str]) -> bool:
    content_type = headers.get("content-type", "")
    return any(k.lower().startswith("ce-") for k in headers) or content_type.startswith(wire.STRUCTURED)


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


def _delay(spec: Delivery, attempt: int, status: int, headers: CIMultiDictProxy[str] | None) -> float:
    delay = spec.delay_before(attempt)
    cap = spec.retry_after_max_s
    if cap > 0 and status in RETRY_AFTER_STATUS:
        asked = retry_after(headers)
        if asked is not None:
            delay = max(delay, min(asked, cap))
    return delay


class Deliverer:
    """Sends events to subscribers and replies to the ingress; use on its event loop only."""

    def __init__(
        self, ingress_url: str, authorization: Callable[[str], dict[str, str]] | None = None
    ) -> None:
        """``authorization``: trigger name → its ``Authorization`` header (auth on: the trigger's
        OIDC identity, as Knative's dispatcher sends it to the subscriber and with the reply)."""
        self.ingress_url = ingress_url
        self.authorization = authorization or (lambda _trigger: {})
        self._session: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=15),
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def _post(
        self, url: str, headers: dict[str, str], body: bytes, timeout: float
    ) -> tuple[int, CIMultiDictProxy[str] | None, bytes]:
        assert self._session is not None, "Deliverer.open() first"
        try:
            async with self._session.post(
                url, data=body, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout)
            ) as resp:
                return resp.status, resp.headers, await resp.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            return 0, None, f"{type(exc).__name__}: {exc}".encode()

    async def forward_reply(
        self, reply: wire.WireEvent, timeout: float, trigger: str = ""
    ) -> tuple[int, bytes]:
        headers, body = wire.to_http(reply)
        headers.update(self.authorization(trigger))
        status, _headers, answer = await self._post(self.ingress_url, headers, body, timeout)
        return status, answer

    async def deliver(
        self,
        event: wire.WireEvent,
        url: str,
        spec: Delivery,
        *,
        trigger: str,
        stop: threading.Event | None = None,
        forward_replies: bool = True,
    ) -> Outcome:
        headers, body = wire.to_structured(event) if spec.format == "json" else wire.to_http(event)
        headers[TRIGGER_HEADER] = trigger
        headers.update(self.authorization(trigger))
        if forward_replies:
            headers["Prefer"] = "reply"
        attempts = 0
        while True:
            attempts += 1
            status, answer_headers, answer = await self._post(url, headers, body, spec.timeout_s)
            error = f"subscriber answered {status}"
            if 200 <= status < 300:
                if status == 202 or not forward_replies or answer_headers is None:
                    return Outcome(True, status, b"", attempts)
                if not _has_event(answer_headers):
                    return Outcome(True, status, b"", attempts)
                try:
                    reply = wire.from_http(answer_headers, answer)
                except InvalidCloudEvent as exc:
                    return Outcome(False, 502, f"invalid reply event: {exc}".encode(), attempts, str(exc))
                stored, answer = await self.forward_reply(reply, spec.timeout_s, trigger)
                if 200 <= stored < 300:
                    return Outcome(True, status, b"", attempts)
                error = f"reply {reply.id} not stored: the broker ingress answered {stored or 'nothing'}"
                status = 503  # a failed attempt, retried like any other
            if not is_retryable(status) or attempts > spec.retry:
                return Outcome(False, status, answer, attempts, error)
            delay = _delay(spec, attempts, status, answer_headers)
            log.info(
                "trigger %s: event %s attempt %d failed (%s); retrying in %.2fs",
                trigger,
                event.id,
                attempts,
                error if status else "no response",
                delay,
            )
            if await _pause(delay, stop):
                return Outcome(False, status, answer, attempts, "dispatcher stopping")


def dead_letter_event(
    event: wire.WireEvent, *, trigger: str, destination: str, outcome: Outcome
) -> wire.WireEvent:
    """The event as Knative dead-letters it: with ``knativeerror*`` extensions added (its
    data untouched)."""
    return event.with_attributes(
        knativeerrordest=destination,
        knativeerrorcode=str(outcome.status),
        knativeerrordata=base64.b64encode(outcome.body[:ERROR_DATA_LIMIT]).decode(),
        faaspipetrigger=trigger,
    )
