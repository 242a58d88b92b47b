"""Zygotes on the real stack (the session stack runs with FAASPIPE_ZYGOTE=on, the default):
replicas are the supervisor's children forked from their environment's zygote, and a zygote
killed while a scale-up waits on it is restarted and the waiting events are delivered."""

from __future__ import annotations

import json
import os
import signal
import uuid
from pathlib import Path
from typing import Any

import pytest

from events import new_event
from tests.conftest import Stack, wait_until
from tests.test_autoscaling import function_status, live_replicas, processed, supervisor_log

pytestmark = pytest.mark.integration


def status(stack: Stack) -> dict[str, Any]:
    return json.loads(stack.cli("status", "--json").stdout)


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def test_replicas_are_the_supervisors_children_forked_from_their_environments_zygote(stack: Stack) -> None:
    doc = status(stack)
    replicas = [
        (name, r) for name, fn in doc["functions"].items() for r in fn["replicas"] if r["state"] == "ready"
    ]
    assert replicas
    for name, replica in replicas:
        assert replica["forked"] is True, name
        assert parent_of(replica["pid"]) == doc["pid"], name  # adopted: crash handling as before
        cmdline = Path(f"/proc/{replica['pid']}/cmdline").read_bytes().split(b"\0")
        assert b"shared.runtime" in cmdline and name.encode() in cmdline  # `ps` names the replica
    environments = {doc["functions"][name]["environment"] for name, _ in replicas}
    # each environment's zygote forked them; it may since have idled out (FAASPIPE_ZYGOTE_IDLE_S)
    assert environments <= {env for env, z in doc["zygotes"].items() if z["forks"] > 0}


def test_a_zygote_killed_while_a_scale_up_waits_on_it_is_restarted_and_the_events_delivered(
    stack: Stack,
) -> None:
    """``slow`` (serving environment, from zero on lag): its zygote is frozen, events arrive,
    the KPA's scale-up waits on the frozen zygote's fork, the zygote is killed: the supervisor
    starts it again, forks the replicas, and every event is processed once."""
    wait_until(lambda: live_replicas(stack, "slow") == 0, 120, what="slow at zero")
    before = status(stack)["zygotes"]["serving"]
    assert before["running"]
    zygote_pid = before["pid"]
    since = (stack.state_dir / "logs" / "supervisor.log").stat().st_size
    os.kill(zygote_pid, signal.SIGSTOP)
    events = [
        new_event(
            "dev.faaspipe.sample.ping.v1",
            {"message": f"z{i}"},
            source="/tests/zygote",
            subject=f"scale/{uuid.uuid4().hex}",
        )
        for i in range(4)
    ]
    try:
        for event in events:
            assert stack.post_event(event).status == 202
        # the KPA scales slow up; the claimed replica waits on the frozen zygote's fork: it is
        # listed as starting, with no process yet
        wait_until(
            lambda: [
                r
                for r in function_status(stack, "slow")["replicas"]
                if r["state"] == "starting" and not r["pid"]
            ],
            60,
            what="a replica of slow waiting on its fork",
        )
    finally:
        os.kill(zygote_pid, signal.SIGKILL)
    ids = {e.get_id() for e in events}
    wait_until(
        lambda: ids <= set(processed(stack)), 240, what="every event processed after the zygote's restart"
    )
    assert sorted(i for i in processed(stack) if i in ids) == sorted(ids), (
        "an event was processed twice or lost"
    )
    after = status(stack)["zygotes"]["serving"]
    assert after["running"] and after["pid"] != zygote_pid and after["starts"] == before["starts"] + 1
    assert "could not fork" in supervisor_log(stack, since)
