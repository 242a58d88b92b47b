"""Delivery of one event to a subscriber, with Knative's DeliverySpec semantics.

Retries on network errors, timeouts, 5xx, 404, 408, 409 and 429 (Knative's retryable set),
waiting ``backoffDelay * 2^(n-1)`` (exponential) or ``backoffDelay * n`` (linear) before
retry n. Other 4xx are final. A reply event in the response goes back to the broker
ingress; the delivery only succeeds once the reply is in the log.
"""

from __future__ import annotations

import base64
import logging
import threading
import time
from dataclasses import dataclass

import urllib3

from localdev.topology import Delivery
from shared.cloudevents_io import CloudEvent, InvalidCloudEvent, parse_http, to_http, with_attributes

log = logging.getLogger("faaspipe.delivery")

RETRYABLE_STATUS = frozenset({404, 408, 409, 429})
ERROR_DATA_LIMIT = 1024  # bytes of the subscriber's response kept in knativeerrordata
TRIGGER_HEADER = "Faaspipe-Trigger"


@dataclass
class Outcome:
    ok: bool
    status: int  # HTTP status of the last attempt; 0 = no response (network error/timeout)
    body: bytes
    attempts: int
    error: str = ""


def is_retryable(status: int) -> bool:
    return status == 0 or status >= 500 or status in RETRYABLE_STATUS


def _has_event(headers: urllib3.HTTPHeaderDict) -> bool:
    content_type = headers.get("content-type", "")
    return any(k.lower().startswith("ce-") for k in headers) or content_type.startswith(
        "application/cloudevents+json"
    )


class Deliverer:
    """Sends events to subscribers and replies to the ingress; safe to share across threads."""

    def __init__(self, ingress_url: str, pool_size: int = 16) -> None:
        self.ingress_url = ingress_url
        self.http = urllib3.PoolManager(maxsize=pool_size, retries=False)

    def _post(
        self, url: str, event: CloudEvent, timeout: float, trigger: str
    ) -> tuple[int, urllib3.HTTPHeaderDict, bytes]:
        headers, body = to_http(event)
        headers[TRIGGER_HEADER] = trigger
        try:
            resp = self.http.request("POST", url, body=body, headers=headers, timeout=timeout)
        except urllib3.exceptions.HTTPError as exc:
            return 0, urllib3.HTTPHeaderDict(), f"{type(exc).__name__}: {exc}".encode()
        return resp.status, resp.headers, resp.data

    def forward_reply(self, reply: CloudEvent, timeout: float) -> tuple[int, bytes]:
        status, _headers, body = self._post(self.ingress_url, reply, timeout, "reply")
        return status, body

    def deliver(
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
            status, headers, body = self._post(url, event, spec.timeout_s, trigger)
            error = ""
            if 200 <= status < 300:
                if not _has_event(headers) or not forward_replies:
                    return Outcome(True, status, b"", attempts)  # a KafkaSource drops replies
                try:
                    reply = parse_http(dict(headers), body)
                except InvalidCloudEvent as exc:
                    return Outcome(False, 502, f"invalid reply event: {exc}".encode(), attempts, str(exc))
                reply_status, reply_body = self.forward_reply(reply, spec.timeout_s)
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
            if stop is not None and stop.wait(delay):
                return Outcome(False, status, body, attempts, "dispatcher stopping")
            if stop is None:
                time.sleep(delay)


def dead_letter_event(event: CloudEvent, *, trigger: str, destination: str, outcome: Outcome) -> CloudEvent:
    """The event as Knative dead-letters it: with ``knativeerror*`` extensions added."""
    return with_attributes(
        event,
        knativeerrordest=destination,
        knativeerrorcode=str(outcome.status),
        knativeerrordata=base64.b64encode(outcome.body[:ERROR_DATA_LIMIT]).decode(),
        faaspipetrigger=trigger,
    )
