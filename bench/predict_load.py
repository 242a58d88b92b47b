"""Closed-loop HTTP load on predict and its peer with k6 (``bench/k6/http_load.js``).

Each target (predict through the gateway, predict direct to a replica, ``mlflow models
serve``) is run at each concurrency for a fixed time, interleaved (c=1: every target, then
c=16, …) so that a noisy moment on a shared box does not land on one target only.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.k6run import run_k6


@dataclass
class Target:
    name: str
    description: str
    url: Callable[[], str]  # resolved just before each run (a replica's port can change)
    bodies: Path  # JSON array of request bodies (strings)
    cache_control: str = ""  # sent as Cache-Control ("no-cache": predict skips its response cache)


def write_bodies(path: Path, bodies: list[str]) -> Path:
    path.write_text(json.dumps(bodies))
    return path


def run_point(target: Target, concurrency: int, seconds: float) -> dict[str, Any]:
    """One k6 run: ``concurrency`` VUs posting for ``seconds``; throughput, latency, statuses."""
    url = target.url()
    run = run_k6(
        "http_load.js",
        {
            "URL": url,
            "BODIES": target.bodies,
            "VUS": concurrency,
            "DURATION": f"{seconds:g}s",
            "CACHE_CONTROL": target.cache_control,
        },
        timeout_s=seconds + 120,
    )
    ok = run.count("status_200")
    return {
        "url": url,
        "concurrency": concurrency,
        "seconds": round(run.duration_s, 2),
        "requests": run.count("http_reqs"),
        "status_200": ok,
        "status_5xx": run.count("status_5xx"),
        "status_other": run.count("status_other"),
        "req_per_s": round(ok / run.duration_s, 1) if run.duration_s else None,
        "latency_ms": run.latency_ms(),
        "load_generator": run.load_generator(),
    }


def run_matrix(
    targets: list[Target],
    concurrencies: list[int],
    seconds: float,
    after_each: Callable[[Target, dict[str, Any]], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """``{target: {"c<N>": point}}`` for every target and concurrency (2 s k6 warm-up first)."""
    for target in targets:
        run_point(target, 1, 2)
    results: dict[str, dict[str, Any]] = {t.name: {} for t in targets}
    for c in concurrencies:
        for target in targets:
            point = run_point(target, c, seconds)
            if after_each is not None:
                after_each(target, point)
            results[target.name][f"c{c}"] = point
            lat = point["latency_ms"]
            print(
                f"  c={c:<3} {target.name:<14} {point['req_per_s']:>8} req/s  p50 {lat['p50']} ms"
                f"  p99 {lat['p99']} ms  5xx {point['status_5xx']}"
                f"  k6 cpu {point['load_generator']['cpu_cores_busy']}",
                flush=True,
            )
            time.sleep(1)
    return results
