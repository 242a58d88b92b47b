"""ML serving benchmark: file drop → champion serving, then predict under k6 load beside
``mlflow models serve`` on the same registered version, then predict's return to zero and
cold start (the autoscaler's reaction to lag is ``bench/autoscale.py``).

Load: ``bench/k6/http_load.js`` (constant-vus) at each concurrency for a fixed time, on
predict through the gateway (JSON route and Open Inference Protocol v2), predict direct to a
replica (its URL from the supervisor's ``/status``), and ``mlflow models serve``
``/invocations``; one AI4I dataset row per request, cycling through ``--rows`` rows.

    python -m bench.ml_serving [--concurrency 1,16,64] [--seconds S] [--rows N]
                               [--port-base P] [--storage s3|memory] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.cold_start import predict_scale_to_zero_and_cold_start
from bench.mlflow_peer import MlflowServe, mlflow_bodies
from bench.predict_load import Target, run_matrix, write_bodies
from bench.stack import bench_stack, machine_facts, ready_replica_urls, supervisor_status
from localdev import pipeline
from localdev.config import StackConfig
from shared.topology import REPO_ROOT

NO_CACHE = "no-cache"  # predict scores the row: a fair peer of mlflow serve, which has no cache
TARGETS = {
    "gateway_p99_ms_at_c1_max": 5.0,
    "gateway_req_per_s_at_c16_min": 2000,
    "gateway_p99_ms_at_c16_max": 20.0,
    "gateway_overhead_p50_ms_max": 0.3,
    "beats_mlflow_serve_at_every_concurrency": True,  # req/s higher and p99 lower, via the gateway
}


def dataset_rows(count: int, seed: int = 7) -> list[dict[str, Any]]:
    """``count`` random rows of the file the chain trained on, as raw model inputs.

    A realistic request stream: one row repeated would be a drifted stream, and the monitor
    would rightly answer it with a retrain in the middle of the measurement.
    """
    import csv
    import random

    from shared.contracts import get_contract

    contract = get_contract("ai4i")
    rename = {c.source: c.name for c in contract.columns}
    path, _ = pipeline.dataset_file()
    with path.open(newline="") as handle:
        rows = [{rename[k]: v for k, v in raw.items() if k in rename} for raw in csv.DictReader(handle)]
    picked = random.Random(seed).sample(rows, min(count, len(rows)))
    return [
        {n: r[n] if n in contract.categoricals else float(r[n]) for n in contract.raw_inputs} for r in picked
    ]


def v2_body(row: dict[str, Any]) -> str:
    inputs = [
        {"name": k, "shape": [1], "datatype": "BYTES" if k == "type" else "FP32", "data": [v]}
        for k, v in row.items()
    ]
    return json.dumps({"inputs": inputs})


def direct_url(config: StackConfig) -> str:
    """``/predict`` on predict's first ready replica (from ``/status``), bypassing the gateway."""
    urls = ready_replica_urls(config, "predict")
    if not urls:  # idled to zero since the last point: one request through the activator wakes it
        import urllib3

        urllib3.request("GET", config.function_url("predict") + "v2/health/ready", timeout=120, retries=False)
        deadline = time.monotonic() + 60
        while not (urls := ready_replica_urls(config, "predict")) and time.monotonic() < deadline:
            time.sleep(0.2)
    if not urls:
        raise RuntimeError("predict has no ready replica to measure directly")
    return urls[0] + "/predict"


def compare(matrix: dict[str, dict[str, Any]], concurrencies: list[int]) -> dict[str, Any]:
    """Headline figures, the gateway's overhead, and predict (gateway) against mlflow serve."""

    def point(target: str, c: int) -> dict[str, Any] | None:
        return matrix.get(target, {}).get(f"c{c}")

    gw1, direct1 = point("gateway_json", 1), point("direct_json", 1)
    overhead = (
        round(gw1["latency_ms"]["p50"] - direct1["latency_ms"]["p50"], 3)
        if gw1
        and direct1
        and gw1["latency_ms"]["p50"] is not None
        and direct1["latency_ms"]["p50"] is not None
        else None
    )
    versus: dict[str, Any] = {}
    for c in concurrencies:
        ours, peer = point("gateway_json", c), point("mlflow_serve", c)
        if ours is None or peer is None:
            continue
        versus[f"c{c}"] = {
            "predict_req_per_s": ours["req_per_s"],
            "mlflow_req_per_s": peer["req_per_s"],
            "predict_p99_ms": ours["latency_ms"]["p99"],
            "mlflow_p99_ms": peer["latency_ms"]["p99"],
            "beats": (ours["req_per_s"] or 0) > (peer["req_per_s"] or 0)
            and (ours["latency_ms"]["p99"] or 1e9) < (peer["latency_ms"]["p99"] or 1e9),
        }
    cache: dict[str, Any] = {}
    for c in concurrencies:
        hit, miss = point("gateway_json_cached", c), point("gateway_json", c)
        if hit is None or miss is None:
            continue
        cache[f"c{c}"] = {
            "hit_p50_ms": hit["latency_ms"]["p50"],
            "miss_p50_ms": miss["latency_ms"]["p50"],
            "hit_req_per_s": hit["req_per_s"],
            "miss_req_per_s": miss["req_per_s"],
        }
    return {
        "gateway_overhead_p50_ms_at_c1": overhead,
        "predict_vs_mlflow_serve": versus,
        "response_cache_hit_vs_miss": cache,
    }


def targets_met(matrix: dict[str, dict[str, Any]], comparison: dict[str, Any]) -> dict[str, bool | None]:
    c1, c16 = matrix.get("gateway_json", {}).get("c1"), matrix.get("gateway_json", {}).get("c16")
    overhead = comparison["gateway_overhead_p50_ms_at_c1"]
    versus = comparison["predict_vs_mlflow_serve"]
    return {
        "gateway_p99_ms_at_c1_max": None
        if c1 is None
        else c1["latency_ms"]["p99"] <= TARGETS["gateway_p99_ms_at_c1_max"],
        "gateway_req_per_s_at_c16_min": None
        if c16 is None
        else c16["req_per_s"] >= TARGETS["gateway_req_per_s_at_c16_min"],
        "gateway_p99_ms_at_c16_max": None
        if c16 is None
        else c16["latency_ms"]["p99"] <= TARGETS["gateway_p99_ms_at_c16_max"],
        "gateway_overhead_p50_ms_max": None
        if overhead is None
        else overhead <= TARGETS["gateway_overhead_p50_ms_max"],
        "beats_mlflow_serve_at_every_concurrency": all(v["beats"] for v in versus.values())
        if versus
        else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--concurrency", default="1,16,64", help="k6 VUs per point (default 1,16,64)")
    parser.add_argument("--seconds", type=float, default=8.0, help="seconds per point (default 8)")
    parser.add_argument("--rows", type=int, default=1000, help="distinct dataset rows cycled through")
    parser.add_argument("--port-base", type=int, default=24000)
    parser.add_argument("--storage", choices=["s3", "memory"], default="s3")
    parser.add_argument("--skip-cold-start", action="store_true", help="skip the ~2 min wait for zero")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results" / "ml_serving.json")
    args = parser.parse_args(argv)
    concurrencies = [int(c) for c in args.concurrency.split(",") if c]
    results: dict[str, Any] = {
        "benchmark": "ml_serving",
        "machine": machine_facts(args.storage),
        "at": datetime.now(UTC).isoformat(),
    }
    with bench_stack(args.storage, args.port_base, str(REPO_ROOT / "functions")) as config:
        chain = pipeline.run_chain(config)
        if chain is None:
            print("the chain did not produce a champion", file=sys.stderr)
            return 1
        model, version = str(chain["model_name"]), str(chain["version"])
        results["chain"] = chain
        rows = dataset_rows(args.rows)
        bodies = config.state_dir / "bench-bodies"
        bodies.mkdir(exist_ok=True)
        json_bodies = write_bodies(bodies / "json.json", [json.dumps({"instances": [r]}) for r in rows])
        v2_bodies = write_bodies(bodies / "v2.json", [v2_body(r) for r in rows])
        peer = MlflowServe(config, model, version)
        try:
            results["mlflow_serve_startup_s"] = round(peer.wait_ready(), 2)
            peer_bodies = write_bodies(bodies / "mlflow.json", mlflow_bodies(config, model, version, rows))
            gateway = config.function_url("predict")
            targets = [
                Target(
                    "gateway_json",
                    "predict POST /predict via the gateway, every row scored (Cache-Control: no-cache)",
                    lambda: gateway + "predict",
                    json_bodies,
                    NO_CACHE,
                ),
                Target(
                    "gateway_json_cached",
                    "predict POST /predict via the gateway, rows answered by the response cache after their first pass",
                    lambda: gateway + "predict",
                    json_bodies,
                ),
                Target(
                    "gateway_v2",
                    "predict Open Inference Protocol v2 infer via the gateway (no-cache)",
                    lambda: f"{gateway}v2/models/{model}/infer",
                    v2_bodies,
                    NO_CACHE,
                ),
                Target(
                    "direct_json",
                    "predict POST /predict on a replica's port (no-cache)",
                    lambda: direct_url(config),
                    json_bodies,
                    NO_CACHE,
                ),
                Target(
                    "mlflow_serve",
                    f"mlflow models serve models:/{model}/{version} --workers 1, POST /invocations",
                    lambda: peer.invocations_url,
                    peer_bodies,
                ),
            ]
            last_predict = time.monotonic()

            def after_each(target: Target, point: dict[str, Any]) -> None:
                nonlocal last_predict
                predict = supervisor_status(config)["functions"]["predict"]
                point["predict_replicas_after"] = len(predict["replicas"])
                if target.name != "mlflow_serve":
                    last_predict = time.monotonic()

            print(
                f"load: {len(targets)} targets × concurrency {concurrencies}, {args.seconds:g} s each",
                flush=True,
            )
            matrix = run_matrix(targets, concurrencies, args.seconds, after_each)
        finally:
            peer.stop()
        comparison = compare(matrix, concurrencies)
        results.update(
            {
                "method": {
                    "load_generator": "k6 bench/k6/http_load.js, constant-vus (closed loop)",
                    "seconds_per_point": args.seconds,
                    "concurrency": concurrencies,
                    "rows": len(rows),
                    "model": {"name": model, "version": version},
                    "targets": {t.name: t.description for t in targets},
                },
                "targets": TARGETS,
                "met": targets_met(matrix, comparison),
                "summary": comparison,
                "load": matrix,
            }
        )
        if not args.skip_cold_start:
            results["faaspipe_predict_from_zero"] = predict_scale_to_zero_and_cold_start(
                config, last_predict, rows[0]
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({k: results.get(k) for k in ("targets", "met", "summary")}, indent=2))
    print(f"results written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
