"""Cold start per function, spawned and forked from its environment's zygote, same stack, same run.

On a stack of the product's own functions (``functions/``), each function gets extra replicas,
started the two ways the supervisor can start one: **spawn** (a new interpreter: ``python -m
shared.runtime …``, imports everything) and **fork** (from its environment's zygote,
``localdev/zygote/``, which imported the third-party modules once). Either way the replica
runs the function's real import and ``init`` (clients, model load) against the stack's real
S3, Kafka and MLflow. Timed from the start request to the replica's first ``200`` on
``/health/readiness`` (polled every 2 ms; a gRPC replica: its port open), which is when the
activator would forward a held request or the dispatcher deliver a waiting event. Also per
start: the replica's PSS and RSS once ready (its process tree; PSS counts pages it shares with
the zygote and its siblings once). Per environment: the zygote's own start (preload) and
size. Spawn and fork alternate, ``--repeat`` times each.

    python -m bench.cold_start_functions [--functions trial predict …] [--repeat 3]
                                         [--port-base 26500] [--out PATH]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.stack import bench_stack, machine_facts, supervisor_status
from localdev import components
from localdev.config import StackConfig
from localdev.processes import http_ok, pick_port, port_open
from localdev.zygote.pool import ZygotePool
from shared.topology import REPO_ROOT, Function, load_topology


def _tree(pid: int) -> list[int]:
    pids, frontier = [pid], [pid]
    while frontier:
        parent = frontier.pop()
        try:
            children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
        except OSError:
            continue
        frontier.extend(int(c) for c in children)
        pids.extend(int(c) for c in children)
    return pids


def memory_mb(pid: int) -> dict[str, float]:
    """PSS and RSS (MB) of ``pid`` and its descendants, from ``smaps_rollup``."""
    totals = {"pss_mb": 0.0, "rss_mb": 0.0}
    for member in _tree(pid):
        try:
            lines = Path(f"/proc/{member}/smaps_rollup").read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            key, _, rest = line.partition(":")
            if key in ("Pss", "Rss"):
                totals[f"{key.lower()}_mb"] += int(rest.split()[0]) / 1024
    return {k: round(v, 1) for k, v in totals.items()}


def start_once(
    config: StackConfig, fn: Function, how: str, pool: ZygotePool, logs: Path, taken: set[int], index: int
) -> dict[str, Any]:
    port = pick_port(config.replica_ports, taken)
    child = components.function_replica(config, fn, index, port)
    child.name = f"bench-{fn.name}-{how}-{index}"
    child.log_path = logs / f"{child.name}.log"
    child.pid_dir = logs / "pids"
    if how == "fork":
        child.forker = functools.partial(pool.fork, fn.environment)
    url = f"http://127.0.0.1:{port}/health/readiness"
    started = time.perf_counter()
    child.start()
    ready_s = None
    try:
        deadline = started + 600
        while time.perf_counter() < deadline and child.alive():
            if (fn.kind == "grpc" and port_open(port)) or (fn.kind != "grpc" and http_ok(url)):
                ready_s = time.perf_counter() - started
                break
            time.sleep(0.002)
        assert child.proc is not None
        memory = memory_mb(child.proc.pid) if ready_s is not None else {}
        forked = type(child.proc).__name__ == "ForkedProcess"
    finally:
        child.stop(30)
    result: dict[str, Any] = {
        "how": how,
        "forked": forked,
        "ready_s": None if ready_s is None else round(ready_s, 4),
    }
    if ready_s is None:
        result["error"] = child.log_tail(15)
    return {**result, **memory}


def _summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    times = [r["ready_s"] for r in rows if r.get("ready_s") is not None]
    if not times:
        return {"runs": len(rows), "failed": len(rows)}
    pss = [r["pss_mb"] for r in rows if "pss_mb" in r]
    return {
        "runs": len(rows),
        "failed": len(rows) - len(times),
        "ready_s_min": min(times),
        "ready_s_median": round(statistics.median(times), 4),
        "ready_s_max": max(times),
        "pss_mb_median": round(statistics.median(pss), 1) if pss else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--functions", nargs="*", default=None, help="default: every function in functions/")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--port-base", type=int, default=26500)
    parser.add_argument(
        "--out", type=Path, default=REPO_ROOT / "bench" / "results" / "cold_start_functions.json"
    )
    args = parser.parse_args(argv)

    facts = machine_facts("memory")
    report: dict[str, Any] = {
        "bench": "cold_start_functions",
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": facts,
        "ready": "first 200 on /health/readiness after the start request (gRPC: port open)",
    }
    with bench_stack("memory", args.port_base, str(REPO_ROOT / "functions")) as config:
        topology = load_topology(config.function_dirs)
        names = args.functions or sorted(topology.functions)
        logs = Path(tempfile.mkdtemp(prefix="faaspipe-coldstart-"))
        pool = ZygotePool(
            topology,
            python_for=components.python_for,
            state_dir=logs,
            logs_dir=logs,
            env=config.function_env(),
            start_timeout_s=900,
            idle_s=10**9,
        )
        zygotes: dict[str, Any] = {}
        try:
            for env in sorted({topology.functions[n].environment for n in names}):
                zygote = pool.zygote(env)
                started = time.perf_counter()
                zygote.ensure_running(900)
                assert zygote.process.proc is not None
                zygotes[env] = {
                    "start_s": round(time.perf_counter() - started, 2),
                    **memory_mb(zygote.process.proc.pid),
                }
                print(f"zygote {env}: {zygotes[env]}", flush=True)
            taken = {
                r["url"] and int(r["url"].rsplit(":", 1)[1])
                for f in supervisor_status(config)["functions"].values()
                for r in f["replicas"]
            }
            functions: dict[str, Any] = {}
            for name in names:
                fn = topology.functions[name]
                runs: list[dict[str, Any]] = []
                for index in range(args.repeat):
                    for how in ("spawn", "fork"):
                        row = start_once(config, fn, how, pool, logs, taken, index)
                        print(f"{name:18} {how:5} {row}", flush=True)
                        runs.append(row)
                functions[name] = {
                    "environment": fn.environment,
                    "spawn": _summary([r for r in runs if r["how"] == "spawn"]),
                    "fork": _summary([r for r in runs if r["how"] == "fork"]),
                    "runs": runs,
                }
        finally:
            pool.stop()
    report.update(
        zygotes=zygotes, functions=functions, load_average_at_end=[round(x, 2) for x in os.getloadavg()]
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"results written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
