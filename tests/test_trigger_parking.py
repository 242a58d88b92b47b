"""An idle trigger parks (it stops fetching until its topic grows) and still delivers.

Tansu holds a group member's fetch for the whole wait even when data arrives, so idle
triggers polling every 20 ms kept the dispatcher at a core; ``localdev/broker/tail_watch.py``
parks them on one tail reader per topic. These tests show parking never costs an event: one
posted while the trigger is parked, and a burst posted while it parks and wakes again.
"""

from __future__ import annotations

import json
import uuid

import pytest
import urllib3

from shared.cloudevents_io import CloudEvent
from tests.conftest import Stack, wait_until

pytestmark = pytest.mark.integration
HTTP = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(connect=2, read=10))
TRIGGER = "rec-exact"


def trigger_state(stack: Stack, name: str) -> dict:  # type: ignore[type-arg]
    port = stack.config.ports["dispatcher"]
    resp = HTTP.request("GET", f"http://127.0.0.1:{port}/triggers")
    assert resp.status == 200, resp.data
    return json.loads(resp.data)[name]


def ping(stack: Stack, tag: str) -> str:
    event_id = f"park-{tag}-{uuid.uuid4().hex[:8]}"
    event = CloudEvent(
        {
            "type": "dev.faaspipe.sample.ping.v1",
            "source": "/tests/parking",
            "id": event_id,
            "subject": "route/exact",
        },
        {"message": event_id},
    )
    resp = stack.post_event(event)
    assert resp.status in (200, 202), resp.data
    return event_id


def delivered(stack: Stack, ids: set[str]) -> set[str]:
    return {r["id"] for r in stack.records(TRIGGER) if r.get("id") in ids}


def test_a_parked_trigger_delivers_what_arrives(stack: Stack) -> None:
    wait_until(lambda: trigger_state(stack, TRIGGER)["parked"], timeout=60, what=f"{TRIGGER} to park")
    event_id = ping(stack, "parked")
    wait_until(lambda: delivered(stack, {event_id}), timeout=30, what=f"{event_id} delivered")


def test_events_posted_while_parking_and_waking_are_all_delivered(stack: Stack) -> None:
    ids = set()
    for i in range(20):  # spread over the idle-before-park window and the wake-ups
        ids.add(ping(stack, f"burst{i}"))
        if i % 5 == 4:
            wait_until(lambda: trigger_state(stack, TRIGGER)["parked"], timeout=60, what="parked again")
    wait_until(lambda: delivered(stack, ids) == ids, timeout=60, what="all 20 delivered")
