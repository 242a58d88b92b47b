"""Batch scoring against one-row-per-request scoring, with the same champion on the same stack.

The chain trains and promotes an AI4I champion (as ``bench/ml_serving.py`` does). Then:

* **batch**: an AI4I-style file of ``--rows`` rows (``localdev/datagen.py``), as CSV and as
  Parquet, is dropped under ``landing/ai4i/score/bench/``; the time from the start of the
  upload to its ``batch.scored`` event in the broker's log gives end-to-end rows/s (upload,
  object event, trigger, replica wake-up if at zero, download, chunked read, checks, scoring,
  output upload); the event's ``duration_s`` gives the function's own rows/s (download to last
  output written). A small file is scored first so the replica is warm; ``--repeats`` runs per
  format, median reported. After each run the peak RSS (VmHWM) of the batch-score replica's
  processes is read, so a larger file showing the same peak shows the chunking bounds memory.
* **one row per request**: k6 ``constant-vus`` on predict ``POST /predict`` through the gateway
  (one dataset row per request, ``Cache-Control: no-cache`` so every row is scored) at each
  ``--concurrency`` for ``--seconds``: rows/s = requests answered 200 per second.

    python -m bench.batch_scoring [--rows 100000] [--repeats 3] [--concurrency 1,16]
                                  [--seconds 8] [--port-base 25000] [--storage s3|memory] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
from minio import Minio

from bench.ml_serving import NO_CACHE, dataset_rows
from bench.predict_load import Target, run_point, write_bodies
from bench.stack import bench_stack, machine_facts, supervisor_status
from localdev import pipeline
from localdev.config import StackConfig
from localdev.datagen import generate
from localdev.event_log import EventLog
from shared import layout
from shared.topology import REPO_ROOT

SCORED = "dev.faaspipe.batch.scored.v1"
REJECTED = "dev.faaspipe.batch.rejected.v1"
CONTENT_TYPES = {"csv": "text/csv", "parquet": "application/vnd.apache.parquet"}


def s3_client(config: StackConfig) -> Minio:
    return Minio(
        f"127.0.0.1:{config.ports['s3']}",
        access_key=config.access_key,
        secret_key=config.secret_key,
        secure=False,
        region="us-east-1",
    )


def write_input(directory: Path, rows: int, fmt: str, seed: int) -> Path:
    """An AI4I-style file of ``rows`` rows (all the dataset's columns) in ``fmt``."""
    frame = pd.DataFrame(generate(rows, seed=seed))
    path = directory / f"batch-{rows}-{seed}.{fmt}"
    if fmt == "csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path, index=False, row_group_size=50_000)
    return path


def replica_peak_rss_mb(config: StackConfig) -> float | None:
    """Peak resident memory (VmHWM) of the batch-score replica's process tree, in MiB (largest process)."""
    replicas = supervisor_status(config)["functions"]["batch-score"]["replicas"]
    peaks: list[int] = []
    for replica in replicas:
        pid = replica.get("pid")
        pending = [pid] if pid else []
        while pending:
            current = pending.pop()
            proc = Path(f"/proc/{current}")
            try:
                status = (proc / "status").read_text()
                for task in (proc / "task").iterdir():
                    pending.extend(int(p) for p in (task / "children").read_text().split())
            except OSError:
                continue
            peaks.extend(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:"))
    return round(max(peaks) / 1024, 1) if peaks else None


def score_file(
    config: StackConfig, log: EventLog, path: Path, fmt: str, timeout_s: float = 600
) -> dict[str, Any]:
    """Drop ``path`` under the score prefix and wait for its ``batch.scored`` (or ``batch.rejected``)."""
    key = f"{layout.score_prefix('ai4i/')}bench/{uuid.uuid4().hex[:8]}/{path.name}"
    started = time.monotonic()
    s3_client(config).fput_object(layout.LANDING, key, str(path), content_type=CONTENT_TYPES[fmt])
    uploaded = time.monotonic() - started
    for event in log.events(timeout_s):
        if event.get_subject() != key or event.get_type() not in (SCORED, REJECTED):
            continue
        wall = time.monotonic() - started
        data = event.get_data() or {}
        if event.get_type() == REJECTED:
            raise RuntimeError(f"{key} was not scored: {data}")
        return {
            "key": key,
            "format": fmt,
            "bytes": path.stat().st_size,
            "rows_in": data["rows_in"],
            "rows_scored": data["rows_scored"],
            "rows_rejected": data["rows_rejected"],
            "chunks": data["chunks"],
            "model_version": data["model_version"],
            "upload_s": round(uploaded, 3),
            "end_to_end_s": round(wall, 3),
            "function_s": data["duration_s"],
            "rows_per_s_end_to_end": round(data["rows_in"] / wall, 1),
            "rows_per_s_in_function": round(data["rows_in"] / data["duration_s"], 1)
            if data["duration_s"]
            else None,
            "replica_peak_rss_mb": replica_peak_rss_mb(config),
        }
    raise TimeoutError(f"no batch.scored for {key} within {timeout_s:.0f}s")


def summarise(batch: dict[str, list[dict[str, Any]]], single: dict[str, dict[str, Any]]) -> dict[str, Any]:
    def median(runs: list[dict[str, Any]], field: str) -> float | None:
        values = [r[field] for r in runs if r.get(field) is not None]
        return round(statistics.median(values), 1) if values else None

    batch_figures = {
        fmt: {
            "rows_per_s_end_to_end": median(runs, "rows_per_s_end_to_end"),
            "rows_per_s_in_function": median(runs, "rows_per_s_in_function"),
            "replica_peak_rss_mb": max((r["replica_peak_rss_mb"] or 0) for r in runs) or None,
        }
        for fmt, runs in batch.items()
    }
    single_figures = {c: point["req_per_s"] for c, point in single.items()}
    best_single = max((v for v in single_figures.values() if v), default=None)
    best_batch = max((f["rows_per_s_end_to_end"] or 0 for f in batch_figures.values()), default=0)
    return {
        "batch": batch_figures,
        "one_row_per_request_rows_per_s": single_figures,
        "batch_end_to_end_vs_best_one_row_per_request": round(best_batch / best_single, 1)
        if best_single
        else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=100_000, help="rows of each measured file")
    parser.add_argument("--repeats", type=int, default=3, help="measured files per format")
    parser.add_argument("--concurrency", default="1,16", help="k6 VUs of the one-row-per-request points")
    parser.add_argument("--seconds", type=float, default=8.0, help="seconds per one-row-per-request point")
    parser.add_argument("--port-base", type=int, default=25000)
    parser.add_argument("--storage", choices=["s3", "memory"], default="s3")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results" / "batch_scoring.json")
    args = parser.parse_args(argv)
    concurrencies = [int(c) for c in args.concurrency.split(",") if c]
    results: dict[str, Any] = {
        "benchmark": "batch_scoring",
        "machine": machine_facts(args.storage),
        "at": datetime.now(UTC).isoformat(),
    }
    with bench_stack(args.storage, args.port_base, str(REPO_ROOT / "functions")) as config:
        chain = pipeline.run_chain(config)
        if chain is None:
            print("the chain did not produce a champion", file=sys.stderr)
            return 1
        results["chain"] = chain
        files = config.state_dir / "bench-batch"
        files.mkdir(exist_ok=True)
        log = EventLog(config)
        try:
            warm = score_file(config, log, write_input(files, 1000, "csv", seed=1), "csv")
            print(f"warm-up: {warm['rows_in']} rows in {warm['end_to_end_s']} s", flush=True)
            batch: dict[str, list[dict[str, Any]]] = {"csv": [], "parquet": []}
            for repeat in range(args.repeats):
                for fmt in batch:
                    run = score_file(config, log, write_input(files, args.rows, fmt, seed=10 + repeat), fmt)
                    batch[fmt].append(run)
                    print(
                        f"  batch {fmt:<7} {run['rows_in']} rows: {run['rows_per_s_end_to_end']} rows/s end to end,"
                        f" {run['rows_per_s_in_function']} rows/s in the function, {run['chunks']} chunks,"
                        f" peak RSS {run['replica_peak_rss_mb']} MiB",
                        flush=True,
                    )
        finally:
            log.close()
        rows = dataset_rows(1000)
        bodies = write_bodies(files / "json.json", [json.dumps({"instances": [r]}) for r in rows])
        gateway = config.function_url("predict")
        target = Target(
            "gateway_json",
            "predict POST /predict via the gateway, one row per request, every row scored (no-cache)",
            lambda: gateway + "predict",
            bodies,
            NO_CACHE,
        )
        run_point(target, 1, 2)  # k6 warm-up, predict awake
        single: dict[str, dict[str, Any]] = {}
        for c in concurrencies:
            single[f"c{c}"] = point = run_point(target, c, args.seconds)
            print(f"  one row per request c={c}: {point['req_per_s']} rows/s", flush=True)
        summary = summarise(batch, single)
        results.update(
            {
                "method": {
                    "rows_per_file": args.rows,
                    "repeats": args.repeats,
                    "chunk_rows": "FAASPIPE_BATCH_CHUNK_ROWS of functions/batch_score/function.yaml",
                    "batch": "file upload → object.created → batch-score → batch.scored in the broker log",
                    "one_row_per_request": target.description + "; k6 bench/k6/http_load.js constant-vus",
                    "seconds_per_point": args.seconds,
                    "concurrency": concurrencies,
                },
                "summary": summary,
                "batch_runs": batch,
                "warm_up": warm,
                "one_row_per_request": single,
            }
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results["summary"], indent=2))
    print(f"results written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
