"""Scale from and to zero on the real stack, in the cluster's two layers: KEDA scales a
trigger's consumers on its group's raw lag, the KPA scales the function on what they push."""

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
from shared.cloudevents_io import CloudEvent
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


def consumers(stack: Stack, function: str, trigger: str) -> int:
    return int(function_status(stack, function)["scaling"]["triggers"][trigger]["consumers"])


CONSUMER_LINE = re.compile(r"scale trigger slow-scale consumers (\d+) -> (\d+): KEDA (\w+)")
REPLICA_LINE = re.compile(r"scale slow (\d+) -> (\d+): KPA")


def supervisor_log(stack: Stack, since: int) -> str:
    with (stack.state_dir / "logs" / "supervisor.log").open("rb") as f:
        f.seek(since)
        return f.read().decode(errors="replace")


def consumer_events(stack: Stack, since: int) -> list[tuple[int, int, str]]:
    """KEDA's decisions for ``slow-scale``'s consumers logged after byte ``since``: (from, to, rule)."""
    return [(int(m[1]), int(m[2]), m[3]) for m in CONSUMER_LINE.finditer(supervisor_log(stack, since))]


def replica_events(stack: Stack, since: int) -> list[tuple[int, int]]:
    """The KPA's decisions for ``slow``'s replicas logged after byte ``since``: (from, to)."""
    return [(int(m[1]), int(m[2])) for m in REPLICA_LINE.finditer(supervisor_log(stack, since))]


def test_lag_scales_an_event_function_from_zero_and_back(stack: Stack) -> None:
    """KEDA's sequence (localdev/keda) on the trigger's consumers: activation 0 -> 1, the HPA
    up to the cap, an immediate step down to 1 as the lag drains (scaleDownStabilization 0),
    then 0 only by the cooldown. The function follows its pushes (KPA, a replica per event in
    flight, up to maxReplicaCount) and returns to zero too."""
    # minReplicaCount 0: no process and no consumer while idle (an earlier test may still be
    # cooling them down)
    wait_until(lambda: live_replicas(stack, "slow") == 0, 60, what="slow idle at zero")
    wait_until(lambda: consumers(stack, "slow", "slow-scale") == 0, 60, what="no slow-scale consumer")
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
    # consumers: lag 30 / threshold 5 = 6, capped at maxReplicaCount 3 (the topic has 4
    # partitions); replicas: up to 30 pushes in flight, one per replica, capped at 3
    peak = wait_until(lambda: (n := live_replicas(stack, "slow")) >= 3 and n, 60, what="3 replicas")
    assert peak == 3
    ids = {e.get_id() for e in events}
    wait_until(lambda: ids <= set(processed(stack)), 120, what="every event processed")
    done = [i for i in processed(stack) if i in ids]
    assert sorted(done) == sorted(ids), "an event was processed twice or lost"
    wait_until(lambda: consumers(stack, "slow", "slow-scale") == 0, 60, what="no consumer after the cooldown")
    wait_until(lambda: live_replicas(stack, "slow") == 0, 60, what="scale back to zero after the window")
    steps = consumer_events(stack, since)
    assert steps[0] == (0, 1, "activation"), steps
    top = next(i for i, (_a, b, _r) in enumerate(steps) if b == 3)
    assert steps[top][2] in ("threshold", "cap"), steps
    down = next(i for i, (a, b, _r) in enumerate(steps) if i > top and a > 1 and b == 1)
    assert steps[down][2] not in ("cooldown", "stabilisation"), steps  # the HPA, at once
    assert steps[-1] == (1, 0, "cooldown"), steps
    trigger = function_status(stack, "slow")["scaling"]["triggers"]["slow-scale"]
    assert "->" in trigger["last_scale_event"]
    assert trigger["rule"] in ("cooldown", "activation"), trigger
    replicas = replica_events(stack, since)
    assert max(b for _a, b in replicas) == 3 and replicas[-1][1] == 0, replicas


def test_a_backlog_of_other_events_wakes_the_consumer_not_the_function(stack: Stack) -> None:
    """The raw lag counts every record of the topic, as KEDA's does on the cluster: events no
    filter of ``slow-scale`` matches activate its consumer, which reads and skips them, and
    ``slow`` itself stays at zero (nothing was pushed to it), then the consumer cools down."""
    wait_until(lambda: live_replicas(stack, "slow") == 0, 60, what="slow idle at zero")
    wait_until(lambda: consumers(stack, "slow", "slow-scale") == 0, 60, what="no slow-scale consumer")
    since = (stack.state_dir / "logs" / "supervisor.log").stat().st_size
    for i in range(20):  # a type no trigger of the stack subscribes to
        event = CloudEvent(
            {
                "type": "dev.example.unrouted.v1",
                "source": "/tests/other",
                "id": uuid.uuid4().hex,
                "specversion": "1.0",
                "datacontenttype": "application/json",
            },
            {"i": i},
        )
        assert stack.post_event(event).status == 202
    wait_until(
        lambda: (0, 1, "activation") in consumer_events(stack, since),
        30,
        what="slow-scale's consumer activated",
    )
    seen = []

    def cooled() -> bool:
        seen.append(live_replicas(stack, "slow"))
        return consumers(stack, "slow", "slow-scale") == 0

    wait_until(cooled, 60, what="the consumer back to zero after its cooldown")
    assert set(seen) == {0}, seen
    assert replica_events(stack, since) == []
    assert "slow: activated by a request" not in supervisor_log(stack, since)


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
    since = (stack.state_dir / "logs" / "supervisor.log").stat().st_size
    result = stack.cli("scale", "slow", "1")  # two busy replicas drain while events remain
    assert result.returncode == 0, result.stderr
    wait_until(lambda: ids <= set(processed(stack)), 120, what="every event processed after the drain")
    done = [i for i in processed(stack) if i in ids]
    assert sorted(done) == sorted(ids), "an event was processed twice or lost"
    # a drained replica stops once its in-flight events are done, which may be after the last
    # event was recorded: wait for it in the log written since the scale command
    wait_until(lambda: "drained and stopped" in supervisor_log(stack, since), 60, what="a replica drained")


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
