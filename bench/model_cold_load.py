"""A second model's cold load while the first keeps serving: does the first model's p99 move?

Starts the product on its own stack (port base 26000) with the test contracts loaded
(``FAASPIPE_CONTRACT_DIRS=tests/contracts``: ``ai4i-lite`` is a second, differently shaped
dataset), runs the main job for AI4I's champion (model A), then drops the same file under
``ai4i-lite/`` so the chain trains and promotes that contract's champion (model B). Then, on one
predict replica (direct, so the unloads and loads hit the replica being measured), ``--rounds``
rounds of two k6 runs (``bench/k6/http_load.js``, constant VUs, ``--concurrency``, ``--seconds``,
AI4I rows, ``Cache-Control: no-cache``) on model A:

* **quiet**: nothing else happens on the replica;
* **loading**: every ``--every`` seconds B is unloaded (``POST /v2/repository/models/<B>/unload``)
  and then asked for by one request, which loads it cold (registry lookup, S3 download, parse)
  on the replica while it serves A.

Quiet runs first in each round, so a drift of the box over time lands on both. Reported: A's
p50/p99 in each (median over rounds), their ratio, and B's cold-load request latency.

    python -m bench.model_cold_load [--rounds 3] [--seconds 10] [--concurrency 16] [--every 2]
                                    [--port-base 26000] [--storage s3|memory] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import urllib3

from bench.ml_serving import NO_CACHE, dataset_rows, direct_url
from bench.predict_load import Target, run_point, write_bodies
from bench.stack import bench_stack, machine_facts
from localdev import pipeline
from shared.topology import REPO_ROOT

SECOND_DATASET = "ai4i-lite"
_HTTP = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(connect=2, read=60))


def second_dataset_file(folder: Path) -> tuple[Path, str]:
    """The AI4I file with only the columns the second contract declares (it refuses others)."""
    import pandas as pd

    from shared.contracts import get_contract

    path, what = pipeline.dataset_file()
    columns = [c.source for c in get_contract(SECOND_DATASET).columns]
    out = folder / "ai4i-lite.csv"
    pd.read_csv(path)[columns].to_csv(out, index=False)
    return out, f"{what}, the {SECOND_DATASET} contract's columns"


def cold_loads(
    base: str, model: str, body: bytes, every_s: float, stop: threading.Event, out: list[float]
) -> None:
    """Until ``stop``: unload ``model`` on the replica at ``base``, then time one request to it."""
    while not stop.wait(every_s):
        resp = _HTTP.request("POST", f"{base}v2/repository/models/{model}/unload")
        if resp.status != 200:
            raise RuntimeError(f"unload of {model} answered {resp.status}: {resp.data[:200]!r}")
        started = time.perf_counter()
        resp = _HTTP.request(
            "POST",
            f"{base}predict",
            body=body,
            headers={"Content-Type": "application/json", "Cache-Control": NO_CACHE},
        )
        if resp.status != 200:
            raise RuntimeError(f"the cold request to {model} answered {resp.status}: {resp.data[:200]!r}")
        out.append((time.perf_counter() - started) * 1000)


def keep_alive(gateway: str, stop: threading.Event) -> None:
    """A request through the gateway every 5 s: the KPA counts only what passes the gateway, and
    the load here goes straight to a replica, which would otherwise be scaled to zero."""
    while not stop.wait(5.0):
        _HTTP.request("GET", f"{gateway}v2/health/live")


def measure(target: Target, args: argparse.Namespace, second: dict[str, Any], gateway: str) -> dict[str, Any]:
    """``--rounds`` × (quiet, loading) k6 runs on model A."""
    alive = threading.Event()
    threading.Thread(target=keep_alive, args=(gateway, alive), daemon=True).start()
    try:
        return summarise(_rounds(target, args, second))
    finally:
        alive.set()


def _rounds(target: Target, args: argparse.Namespace, second: dict[str, Any]) -> list[dict[str, Any]]:
    body = json.dumps({"dataset": SECOND_DATASET, "instances": [second["row"]]}).encode()
    run_point(target, 1, 2)  # warm-up
    rounds = []
    for number in range(1, args.rounds + 1):
        quiet = run_point(target, args.concurrency, args.seconds)
        base = quiet["url"].removesuffix("predict")  # the replica just measured
        loads: list[float] = []
        stop = threading.Event()
        loader = threading.Thread(
            target=cold_loads, args=(base, second["model_name"], body, args.every, stop, loads), daemon=True
        )
        loader.start()
        try:
            loading = run_point(target, args.concurrency, args.seconds)
        finally:
            stop.set()
            loader.join(timeout=60)
        rounds.append({"round": number, "quiet": quiet, "loading": loading, "cold_load_ms": loads})
        print(
            f"  round {number}: quiet p50 {quiet['latency_ms']['p50']} p99 {quiet['latency_ms']['p99']} ms, "
            f"loading p50 {loading['latency_ms']['p50']} p99 {loading['latency_ms']['p99']} ms "
            f"({len(loads)} cold loads, median {statistics.median(loads) if loads else None} ms)",
            flush=True,
        )
    return rounds


def summarise(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    def median_of(kind: str, stat: str) -> float:
        return round(statistics.median(r[kind]["latency_ms"][stat] for r in rounds), 2)

    loads = [ms for r in rounds for ms in r["cold_load_ms"]]
    summary = {
        kind: {
            "p50_ms": median_of(kind, "p50"),
            "p99_ms": median_of(kind, "p99"),
            "req_per_s": round(statistics.median(r[kind]["req_per_s"] for r in rounds), 1),
            "status_5xx": sum(r[kind]["status_5xx"] for r in rounds),
        }
        for kind in ("quiet", "loading")
    }
    summary["p99_loading_over_quiet"] = round(summary["loading"]["p99_ms"] / summary["quiet"]["p99_ms"], 3)
    summary["second_model_cold_load_ms"] = {
        "count": len(loads),
        "median": round(statistics.median(loads), 1) if loads else None,
        "max": round(max(loads), 1) if loads else None,
    }
    return {"summary": summary, "rounds": rounds}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds per k6 run")
    parser.add_argument("--concurrency", type=int, default=16, help="k6 VUs on the first model")
    parser.add_argument("--every", type=float, default=2.0, help="seconds between cold loads of the second")
    parser.add_argument("--port-base", type=int, default=26000)
    parser.add_argument("--storage", choices=["s3", "memory"], default="s3")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results" / "model_cold_load.json")
    args = parser.parse_args(argv)
    os.environ["FAASPIPE_CONTRACT_DIRS"] = str(REPO_ROOT / "tests" / "contracts")  # the stack inherits it
    from shared.contracts import get_contract

    results: dict[str, Any] = {
        "benchmark": "model_cold_load",
        "machine": machine_facts(args.storage),
        "at": datetime.now(UTC).isoformat(),
    }
    with bench_stack(args.storage, args.port_base, str(REPO_ROOT / "functions")) as config:
        first = pipeline.run_chain(config)
        second = pipeline.run_chain(
            config, landing_key=f"{SECOND_DATASET}/ai4i2020.csv", source=second_dataset_file(config.state_dir)
        )
        if first is None or second is None:
            print("the chain did not produce both champions", file=sys.stderr)
            return 1
        rows = dataset_rows(1000)
        lite = get_contract(SECOND_DATASET)
        second_info = {**second, "row": {k: rows[0][k] for k in lite.raw_inputs}}
        bodies = write_bodies(
            config.state_dir / "cold-load-bodies.json", [json.dumps({"instances": [r]}) for r in rows]
        )
        target = Target(
            "direct_json",
            f"predict POST /predict on one replica, model {first['model_name']} (no-cache)",
            lambda: direct_url(config),
            bodies,
            NO_CACHE,
        )
        print(f"load: {args.rounds} rounds × (quiet, loading) × {args.seconds:g} s at {args.concurrency} VUs")
        measured = measure(target, args, second_info, config.function_url("predict"))
        results.update(
            {
                "method": {
                    "load_generator": "k6 bench/k6/http_load.js, constant-vus (closed loop)",
                    "rounds": args.rounds,
                    "seconds_per_run": args.seconds,
                    "concurrency": args.concurrency,
                    "cold_load_every_s": args.every,
                    "first_model": {"name": first["model_name"], "version": first["version"]},
                    "second_model": {"name": second["model_name"], "version": second["version"]},
                    "target": target.description,
                },
                "chains": {"first": first, "second": second},
                **measured,
            }
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results["summary"], indent=2))
    print(f"results written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
