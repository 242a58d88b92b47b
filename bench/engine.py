"""Ingest validation in process vs on the Dask engine (a LocalCluster), same files, same run.

Where does ``FAASPIPE_DASK_MIN_BYTES`` (the threshold between the two) lie? For each size, one
child process (the train environment's Python) validates the same generated AI4I CSV with
``functions.ingest.chunked.validate_file``:

* ``inprocess``: the replica's own loop;
* ``dask``: the chunks on a LocalCluster of ``--workers`` x 1 thread, the cluster already
  started (what a warm replica pays); ``dask_cold`` adds starting the cluster (what the first
  big file of a replica pays; the workers' first imports are in the untimed warm-up run).

Each engine runs once untimed first (imports, first allocations), then ``--repeat`` times.

Reported: wall seconds (median of ``--repeat``), the replica's CPU seconds, and whether both
engines gave the same offline bytes. Peers in the same run, on the same machine.

    python -m bench.engine [--rows 20000 200000 1000000] [--workers 2] [--repeat 3]
                           [--scheduler tcp://faaspipe-dask-scheduler:8786]
                           [--out bench/results/engine.json]

With ``--scheduler`` the Dask side runs on that cluster's workers (the file is still read by
this process, like the ingest replica): how to find the threshold of another deployment.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.scale import TRAIN_PYTHON, generate

REPO_ROOT = Path(__file__).resolve().parent.parent


def _child(work: Path, rows: int, workers: int, repeat: int, scheduler: str | None) -> dict[str, Any]:
    from functions.ingest.chunked import chunk_rows, validate_file
    from shared import settings
    from shared.contracts import get_contract
    from shared.engine import EngineSettings, cluster

    contract = get_contract("ai4i")
    source = work / f"rows-{rows}.csv"
    chunk = chunk_rows(settings.memory_budget_bytes())

    def once(client: Any, name: str) -> tuple[float, float, bytes]:
        offline = work / f"offline-{name}.parquet"
        rejected = work / f"rejected-{name}.csv"
        for p in (offline, rejected):
            p.unlink(missing_ok=True)
        started, cpu = time.perf_counter(), time.process_time()
        validate_file(
            contract,
            source,
            "csv",
            chunk_rows=chunk,
            offline_path=offline,
            rejected_path=rejected,
            client=client,
        )
        return time.perf_counter() - started, time.process_time() - cpu, offline.read_bytes()

    out: dict[str, Any] = {"rows": rows, "bytes": source.stat().st_size, "chunk_rows": chunk}
    once(None, "local")  # warm-up, untimed: imports and first allocations, as on a warm replica
    local = [once(None, "local") for _ in range(repeat)]
    started = time.perf_counter()
    client = cluster.new(EngineSettings("dask", scheduler, workers=workers, threads=1))
    out["cluster_start_s"] = round(time.perf_counter() - started, 3)
    try:
        once(client, "dask")  # warm-up, untimed: the workers import the validation code
        dask = [once(client, "dask") for _ in range(repeat)]
    finally:
        cluster.close(client)
    out["inprocess_s"] = round(statistics.median(x[0] for x in local), 3)
    out["inprocess_cpu_s"] = round(statistics.median(x[1] for x in local), 3)
    out["dask_s"] = round(statistics.median(x[0] for x in dask), 3)
    out["dask_replica_cpu_s"] = round(statistics.median(x[1] for x in dask), 3)
    out["dask_cold_s"] = round(out["dask_s"] + out["cluster_start_s"], 3)
    out["speedup_warm"] = round(out["inprocess_s"] / out["dask_s"], 2)
    out["same_offline_bytes"] = local[0][2] == dask[0][2]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[20_000, 200_000, 1_000_000])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--scheduler", help="a Dask scheduler's address (default: a LocalCluster)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results" / "engine.json")
    parser.add_argument("--child", nargs=2, metavar=("WORK", "ROWS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child = _child(Path(args.child[0]), int(args.child[1]), args.workers, args.repeat, args.scheduler)
        print(json.dumps(child))
        return
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-engine-") as tmp:
        work = Path(tmp)
        for rows in args.rows:
            generate(work, rows)
            env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
            command = [str(TRAIN_PYTHON), "-m", "bench.engine", "--child", str(work), str(rows)]
            command += ["--workers", str(args.workers), "--repeat", str(args.repeat)]
            command += ["--scheduler", args.scheduler] if args.scheduler else []
            done = subprocess.run(
                command, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=3000
            )
            result = (
                json.loads(done.stdout.strip().splitlines()[-1])
                if done.returncode == 0
                else {"rows": rows, "error": done.stderr[-2000:]}
            )
            print(json.dumps(result), flush=True)
            results.append(result)
            (work / f"rows-{rows}.csv").unlink()
    doc = {
        "bench": "engine",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "workers": args.workers,
        "scheduler": args.scheduler or "LocalCluster",
        "repeat": args.repeat,
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
