"""Send events to the broker from inside a handler (more than the one reply it may return).

Knative's pattern for a function that produces several events: post them to ``K_SINK``.
"""

from __future__ import annotations

import time

import urllib3

from shared import settings
from shared.auth.bearer import own_authorization
from shared.cloudevents_io import CloudEvent, to_http

_HTTP = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(connect=2.0, read=15.0))


class EmitError(RuntimeError):
    pass


def emit(event: CloudEvent, *, attempts: int = 4) -> None:
    """Post ``event`` to the broker; retries on 5xx/connection errors, raises on refusal."""
    headers, body = to_http(event)
    headers.update(own_authorization())  # the function's own identity (shared/auth), when it has one
    last = ""
    for attempt in range(attempts):
        try:
            resp = _HTTP.request("POST", settings.sink_url(), body=body, headers=headers)
        except urllib3.exceptions.HTTPError as exc:
            last = str(exc)
        else:
            if 200 <= resp.status < 300:
                return
            last = f"{resp.status} {resp.data[:300]!r}"
            if resp.status < 500 and resp.status != 429:
                raise EmitError(f"broker refused event {event.get_type()} {event.get_id()}: {last}")
        time.sleep(0.2 * 2**attempt)
    raise EmitError(f"could not emit {event.get_type()} {event.get_id()}: {last}")
