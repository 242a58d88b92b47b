"""Scale from and to zero on the real stack: KEDA-style on lag, Knative-style on requests."""

from __future__ import annotations

import json
import os
import re
import signal
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import urllib3

from events import new_event
from tests.conftest import Stack, wait_until

pytestmark = pytest.mark.integration
HTTP = urllib3.PoolManager(maxsize=32, retries=False, timeout=urllib3.Timeout(connect=2, read=120))


def function_status(stack: Stack, name: str) -> dict:  # type: ignore[type-arg]
    return json.loads(stack.cli("status", "--json").stdout)["functions"][name]


def live_replicas(stack: Stack, name: str) -> int:
    return len(function_status(stack, name)["replicas"])


def processed(stack: Stack) -> list[str]:
    path = stack.state_dir / "slow-processed.log"
    return [line.split()[0] for line in path.read_text().splitlines()] if path.exists() else []


SCALE_LINE = re.compile(r"scale slow (\d+) -> (\d+): (KEDA|KPA) ?(\w*)")


def supervisor_log(stack: Stack, since: int) -> str:
    with (stack.state_dir / "logs" / "supervisor.log").open("rb") as f:
        f.seek(since)
        return f.read().decode(errors="replace")


def scale_events(stack: Stack, since: int) -> list[tuple[int, int, str]]:
    """``slow``'s scale decisions logged after byte ``since``: (from, to, rule)."""
    text = supervisor_log(stack, since)
    return [(int(m[1]), int(m[2]), m[4] if m[3] == "KEDA" else "kpa") for m in SCALE_LINE.finditer(text)]


def test_lag_scales_an_event_function_from_zero_and_back(stack: Stack) -> None:
    """KEDA's sequence (localdev/keda): activation 0 -> 1, the HPA up to the cap, an immediate
    step down to 1 as the lag drains (scaleDownStabilization 0), then 0 only by the cooldown."""
    # minReplicaCount 0: no process while idle (an earlier test may still be cooling it down)
    wait_until(lambda: live_replicas(stack, "slow") == 0, 60, what="slow idle at zero")
    since = (stack.state_dir / "logs" / "supervisor.log").stat().st_size
    events = [
        new_event(
            "dev.faaspipe.sample.ping.v1",
            {"message": f"m{i}"},
            source="/tests/scale",
            subject=f"scale/{uuid.uuid4().hex}",
        )
        for i in range(30)
    ]
    for event in events:
        assert stack.post_event(event).status == 202
    # lag 30 / threshold 5 = 6, capped at maxReplicaCount 3 (the topic has 4 partitions)
    peak = wait_until(lambda: (n := live_replicas(stack, "slow")) >= 3 and n, 60, what="3 replicas")
    assert peak == 3
    ids = {e.get_id() for e in events}
    wait_until(lambda: ids <= set(processed(stack)), 120, what="every event processed")
    done = [i for i in processed(stack) if i in ids]
    assert sorted(done) == sorted(ids), "an event was processed twice or lost"
    wait_until(lambda: live_replicas(stack, "slow") == 0, 60, what="scale back to zero after the cooldown")
    steps = scale_events(stack, since)
    if steps[0][0] == 0:
        assert steps[0] == (0, 1, "activation"), steps
    else:  # the dispatcher's first push reached the activator before KEDA's poll, as on Knative
        assert "slow: activated by a request" in supervisor_log(stack, since), steps
    top = next(i for i, (_a, b, _r) in enumerate(steps) if b == 3)
    assert steps[top][2] in ("threshold", "cap"), steps
    down = next(i for i, (a, b, _r) in enumerate(steps) if i > top and a > 1 and b == 1)
    assert steps[down][2] not in ("cooldown", "stabilisation"), steps  # the HPA, at once
    assert steps[-1] == (1, 0, "cooldown"), steps
    assert "->" in function_status(stack, "slow")["scaling"]["last_scale_event"]
    assert function_status(stack, "slow")["scaling"]["rule"] in ("cooldown", "activation")


def test_killing_a_replica_mid_event_loses_nothing(stack: Stack) -> None:
    events = [
        new_event(
            "dev.faaspipe.sample.ping.v1",
            {"message": f"k{i}"},
            source="/tests/kill",
            subject=f"scale/{uuid.uuid4().hex}",
        )
        for i in range(12)
    ]
    for event in events:
        assert stack.post_event(event).status == 202
    replica = wait_until(
        lambda: [r for r in function_status(stack, "slow")["replicas"] if r["state"] == "ready"],
        60,
        what="a ready replica",
    )[0]
    time.sleep(0.5)
    os.killpg(replica["pid"], signal.SIGKILL)  # the whole replica (server and worker), as a pod dies
    ids = {e.get_id() for e in events}
    wait_until(lambda: ids <= set(processed(stack)), 120, what="every event processed despite the kill")


def test_draining_replicas_on_scale_down_loses_nothing(stack: Stack) -> None:
    """Replicas scaled down mid-burst leave the routing table and finish what they hold:
    every event is processed exactly once (``slow`` records each id it handles)."""
    events = [
        new_event(
            "dev.faaspipe.sample.ping.v1",
            {"message": f"d{i}"},
            source="/tests/drain",
            subject=f"scale/{uuid.uuid4().hex}",
        )
        for i in range(24)
    ]
    for event in events:
        assert stack.post_event(event).status == 202
    ids = {e.get_id() for e in events}
    wait_until(lambda: live_replicas(stack, "slow") >= 3, 60, what="3 replicas")
    wait_until(lambda: len(ids & set(processed(stack))) >= 3, 60, what="the first events processed")
    result = stack.cli("scale", "slow", "1")  # two busy replicas drain while events remain
    assert result.returncode == 0, result.stderr
    wait_until(lambda: ids <= set(processed(stack)), 120, what="every event processed after the drain")
    done = [i for i in processed(stack) if i in ids]
    assert sorted(done) == sorted(ids), "an event was processed twice or lost"
    assert "drained and stopped" in stack.log("supervisor")


def test_http_function_scales_from_zero_without_errors(stack: Stack) -> None:
    assert live_replicas(stack, "coldhttp") == 0
    url = stack.config.function_url("coldhttp") + "hello"
    started = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda _: HTTP.request("GET", url), range(8)))
    cold_start = time.monotonic() - started
    assert [r.status for r in responses] == [200] * 8, [r.data for r in responses]
    assert all(json.loads(r.data)["model"] == "loaded" for r in responses)
    print(f"cold start of coldhttp (request to first response, 1.5 s model load): {cold_start:.2f}s")
    status = function_status(stack, "coldhttp")
    assert status["scaling"]["last_cold_start_s"] is not None
    wait_until(lambda: live_replicas(stack, "coldhttp") == 0, 60, what="coldhttp back to zero")
