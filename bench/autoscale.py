"""Autoscaling benchmark: how fast the lag autoscaler reacts, and when it returns to zero,
against the values configured in the topology.

Starts a dedicated stack (memory Kafka, port base 25000) with only the ``burst`` function of
``bench/scaling_functions`` (minReplicaCount 0, max 4, lagThreshold 10, pollingInterval 1 s,
cooldownPeriod 10 s, 0.1 s of work per event, one event at a time per replica). Two scenarios,
each repeated ``--runs`` times:

- ``from_zero``: the function has no process and its trigger no consumer; a burst of N events
  arrives. Measured from the first POST: first replica ready, first event handled, second
  replica's first event handled, peak consumers (KEDA on the raw lag: expected
  min(ceil(N / lagThreshold), partitions, max)), peak replicas (the KPA on the pushes: expected
  min(ceil(events in flight / target), max), in flight at most consumers x 16), all handled;
  then the time from the last event handled to zero replicas (expected: about the KPA's
  stable window plus the grace, here cooldownPeriod each).
- ``from_one``: one event wakes a replica; once it is handled, a burst arrives. Measured from
  the burst's first POST: a second replica started, ready, and handling its first event — the
  "lag appears → second replica consuming" figure.

The supervisor's status is sampled every 0.1 s for replica counts; which replica handled
which event, and when, comes from the function's own log (pid + time per event).

    python -m bench.autoscale [--events N] [--runs R] [--port-base P] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import urllib3

from bench.scaling_functions.burst.handler import handled_path
from bench.stack import bench_stack, machine_facts
from events import new_event
from localdev.broker.dispatcher import PER_CONSUMER_IN_FLIGHT
from localdev.config import StackConfig
from localdev.scaling_policy import kpa_target
from shared.cloudevents_io import to_http
from shared.topology import REPO_ROOT, load_function

FUNCTION = "burst"
FUNCTION_DIR = REPO_ROOT / "bench" / "scaling_functions"
DEFAULT_PORT_BASE = 25000  # main stack 17000, broker bench 23000, ML bench 24000, tests 27000
DEFAULT_OUT = REPO_ROOT / "bench" / "results" / "autoscale.json"
HTTP = urllib3.PoolManager(maxsize=16, retries=False, timeout=urllib3.Timeout(connect=5, read=30))


class ReplicaSampler(threading.Thread):
    """Samples the function's live and ready replica counts every 0.1 s."""

    def __init__(self, config: StackConfig) -> None:
        super().__init__(name="sampler", daemon=True)
        self.url = config.url("supervisor") + "/status"
        self.samples: list[tuple[float, int, int]] = []  # (unix time, live, ready)
        self.consumers: list[tuple[float, int]] = []  # (unix time, the trigger's consumers)
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.wait(0.1):
            try:
                fn = json.loads(HTTP.request("GET", self.url).data)["functions"][FUNCTION]
            except (urllib3.exceptions.HTTPError, ValueError, KeyError):
                continue
            replicas = fn["replicas"]
            ready = sum(1 for r in replicas if r["state"] == "ready")
            now = time.time()
            self.samples.append((now, len(replicas), ready))
            triggers = (fn.get("scaling") or {}).get("triggers") or {}
            self.consumers.append((now, sum(int(t.get("consumers") or 0) for t in triggers.values())))

    def latest(self) -> tuple[int, int]:
        return self.samples[-1][1:] if self.samples else (-1, -1)

    def first(self, since: float, condition: Callable[[int, int], bool]) -> float | None:
        """Seconds from ``since`` to the first sample after it meeting ``condition(live, ready)``."""
        for at, live, ready in self.samples:
            if at >= since and condition(live, ready):
                return round(at - since, 2)
        return None

    def peak(self, since: float, until: float) -> int:
        return max((live for at, live, _ in self.samples if since <= at <= until), default=0)

    def peak_consumers(self, since: float, until: float) -> int:
        return max((n for at, n in self.consumers if since <= at <= until), default=0)

    def idle(self) -> bool:
        """No replica and no consumer."""
        return self.latest()[0] == 0 and bool(self.consumers) and self.consumers[-1][1] == 0


def post_burst(config: StackConfig, count: int, threads: int = 8) -> tuple[float, set[str]]:
    """POST ``count`` burst pings from ``threads`` clients; returns (first POST time, event ids)."""
    events = [
        new_event(
            "dev.faaspipe.sample.ping.v1",
            {"message": "burst"},
            source="/faaspipe/bench/autoscale",
            subject=f"burst/{uuid.uuid4().hex}",
        )
        for _ in range(count)
    ]
    failures: list[int] = []

    def send(chunk: list[Any]) -> None:
        for event in chunk:
            headers, body = to_http(event)
            resp = HTTP.request("POST", config.ingress_url, body=body, headers=headers)
            if resp.status != 202:
                failures.append(resp.status)

    workers = [threading.Thread(target=send, args=(events[i::threads],)) for i in range(threads)]
    started = time.time()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    if failures:
        raise RuntimeError(f"the ingress refused {len(failures)} events: {sorted(set(failures))}")
    return started, {e.get_id() for e in events}


def handled(config: StackConfig) -> dict[str, tuple[int, float]]:
    """Event id → (pid of the replica that handled it, unix time), first handling only."""
    path = handled_path(config.state_dir)
    out: dict[str, tuple[int, float]] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            event_id, pid, at = line.split()
            out.setdefault(event_id, (int(pid), float(at)))
    return out


def wait_for(probe: Callable[[], bool], timeout_s: float, what: str) -> float:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if probe():
            return time.time()
        time.sleep(0.05)
    raise TimeoutError(f"{what}: not within {timeout_s:.0f}s")


def wait_all_handled(config: StackConfig, ids: set[str], timeout_s: float) -> dict[str, tuple[int, float]]:
    wait_for(lambda: ids <= handled(config).keys(), timeout_s, f"{len(ids)} events handled")
    return {i: h for i, h in handled(config).items() if i in ids}


def first_event_per_replica(events: dict[str, tuple[int, float]]) -> list[tuple[int, float]]:
    """(pid, time of its first event), in the order the replicas started handling."""
    first: dict[int, float] = {}
    for pid, at in events.values():
        first[pid] = min(at, first.get(pid, math.inf))
    return sorted(first.items(), key=lambda item: item[1])


def back_to_zero(sampler: ReplicaSampler, last_handled: float, timeout_s: float) -> float:
    """Seconds from the last event handled until the function has no process."""
    at_zero = wait_for(lambda: sampler.latest()[0] == 0, timeout_s, "scale to zero")
    return round(at_zero - last_handled, 2)


def from_zero(config: StackConfig, sampler: ReplicaSampler, events: int, timeout_s: float) -> dict[str, Any]:
    wait_for(sampler.idle, timeout_s, "no replica and no consumer before the run")
    started, ids = post_burst(config, events)
    done = wait_all_handled(config, ids, timeout_s)
    replicas = first_event_per_replica(done)
    last = max(at for _, at in done.values())
    return {
        "events": events,
        "first_replica_ready_s": sampler.first(started, lambda live, ready: ready >= 1),
        "first_event_handled_s": round(replicas[0][1] - started, 2),
        "second_replica_first_event_s": round(replicas[1][1] - started, 2) if len(replicas) > 1 else None,
        "replicas_that_handled_events": len(replicas),
        "peak_consumers": sampler.peak_consumers(started, last),
        "peak_replicas": sampler.peak(started, last),
        "all_handled_s": round(last - started, 2),
        "scale_to_zero_after_last_event_s": back_to_zero(sampler, last, timeout_s),
    }


def from_one(config: StackConfig, sampler: ReplicaSampler, events: int, timeout_s: float) -> dict[str, Any]:
    wait_for(lambda: sampler.latest()[0] == 0, timeout_s, "no replica before the run")
    _, warm_ids = post_burst(config, 1, threads=1)
    warm = wait_all_handled(config, warm_ids, timeout_s)
    warm_pid = next(iter(warm.values()))[0]
    wait_for(lambda: sampler.latest() == (1, 1), timeout_s, "one ready replica")
    started, ids = post_burst(config, events)
    done = wait_all_handled(config, ids, timeout_s)
    others = [(pid, at) for pid, at in first_event_per_replica(done) if pid != warm_pid]
    last = max(at for _, at in done.values())
    return {
        "events": events,
        "second_replica_started_s": sampler.first(started, lambda live, ready: live >= 2),
        "second_replica_ready_s": sampler.first(started, lambda live, ready: ready >= 2),
        "second_replica_first_event_s": round(others[0][1] - started, 2) if others else None,
        "peak_replicas": sampler.peak(started, last),
        "all_handled_s": round(last - started, 2),
        "scale_to_zero_after_last_event_s": back_to_zero(sampler, last, timeout_s),
    }


def medians(runs: list[dict[str, Any]]) -> dict[str, float | None]:
    keys = [k for k, v in runs[0].items() if k.endswith("_s") or k.startswith("peak_")]
    out: dict[str, float | None] = {}
    for key in keys:
        values = [r[key] for r in runs if r.get(key) is not None]
        out[key] = round(statistics.median(values), 2) if values else None
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--port-base", type=int, default=DEFAULT_PORT_BASE)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)

    policy = load_function(FUNCTION_DIR / FUNCTION / "function.yaml").scaling
    results: dict[str, Any] = {"machine": machine_facts("memory"), "at": datetime.now(UTC).isoformat()}
    timeout_s = 120 + 2 * policy.cooldown_period_s
    with bench_stack("memory", args.port_base, str(FUNCTION_DIR)) as config:
        partitions = config.broker_partitions
        consumers = min(math.ceil(args.events / policy.lag_threshold), partitions, policy.max_replicas)
        target = kpa_target(policy, load_function(FUNCTION_DIR / FUNCTION / "function.yaml").concurrency)
        results["configured"] = {
            "lag_threshold": policy.lag_threshold,
            "activation_lag_threshold": policy.activation_lag_threshold,
            "polling_interval_s": policy.polling_interval_s,
            "cooldown_period_s": policy.cooldown_period_s,
            "scale_down_stabilization_s": policy.scale_down_stabilization_s,
            "min_replicas": policy.min_replicas,
            "max_replicas": policy.max_replicas,
            "partitions": partitions,
            "expected_peak_consumers": consumers,
            "expected_peak_replicas": min(
                math.ceil(min(args.events, consumers * PER_CONSUMER_IN_FLIGHT) / target), policy.max_replicas
            ),
        }
        sampler = ReplicaSampler(config)
        sampler.start()
        try:
            for name, scenario in (("from_zero", from_zero), ("from_one", from_one)):
                runs = [scenario(config, sampler, args.events, timeout_s) for _ in range(args.runs)]
                results[name] = {"median": medians(runs), "runs": runs}
                print(f"{name}: {json.dumps(results[name]['median'])}", flush=True)
        finally:
            sampler.stop_event.set()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(json.dumps({k: v for k, v in results.items() if k != "machine"}, indent=2))
    print(f"results written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
