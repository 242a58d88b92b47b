"""Ingest and materialise at scale: seconds and peak RSS per step, before and after chunking.

Each step runs in its own child process (the train environment's Python), on local files and
a local SQLite online store (no stack: the steps' own work, not S3 transfers), and reports its
wall and CPU seconds and its peak RSS (``VmHWM``) plus its RSS before the step:

* ``ingest``: ``functions.ingest.chunked.validate_file`` (streamed, chunks from the memory
  budget) of a generated AI4I CSV into the offline Parquet;
* ``materialise``: ``functions.materialise.online_writer`` (newest row per entity, bounded
  batches) of that Parquet into the online store;
* ``training_set``: ``shared.modelling.load_training_set`` (what tune builds a study from) of
  that Parquet: the contract's ``training:`` rule samples the entity frame (key, event time,
  label, read row group by row group) before Feast's point-in-time join over a local FileSource;
  ``--cap N`` replaces the rule's ``max_rows``;
* ``ingest_before`` / ``materialise_before`` (``--before``): the whole-file paths they replace
  (``validate_bytes`` + ``offline_frame`` + ``to_parquet``; Feast's ``materialize``);
  ``training_set_uncapped`` (``--before``): the same join of every row, as before the cap.

``--steps`` picks some steps (``ingest`` first: the others read its Parquet).

    python -m bench.scale [--rows 10000 1000000] [--ten-million] [--before] [--budget-mb 256]
                          [--redis HOST:PORT,db=N] [--steps ingest training_set] [--cap 100000]
                          [--out bench/results/scale.json]

With ``--redis``, materialise also runs into Feast's Redis online store at that address (step
``materialise_redis``); that database is **flushed** before the step.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
TRAIN_PYTHON = REPO_ROOT / ".venvs" / "train" / "bin" / "python"
STEPS = ("ingest", "materialise", "training_set")
BEFORE = ("ingest_before", "materialise_before", "training_set_uncapped")


def _child(step: str, work: Path, rows: int, cap: int = 0) -> dict[str, Any]:
    """Run one step in this (child) process; its figures."""
    os.environ["FAASPIPE_STATE_DIR"] = str(work / f"state-{step}")
    from datetime import datetime as dt

    import pandas as pd
    import pyarrow.parquet as pq

    from functions.ingest.chunked import chunk_rows, validate_file
    from functions.ingest.validation import offline_frame, validate_bytes
    from shared import feast_repo, memory, settings
    from shared.contracts import get_contract

    contract = get_contract("ai4i")
    source, offline = work / f"rows-{rows}.csv", work / f"offline-{rows}.parquet"
    store = None
    if step.startswith(("materialise", "training_set")):
        local = str(offline)
        feast_repo.offline_uri = lambda contract, version: local  # a local FileSource
    if step.startswith("materialise"):
        store = feast_repo.feature_store(contract)
        store.apply(list(feast_repo.definitions(contract, "bench")))
    lineage: dict[str, Any] = {}
    rest = memory.rss_mb()
    started, cpu = time.perf_counter(), time.process_time()
    if step == "ingest":
        result = validate_file(
            contract,
            source,
            "csv",
            chunk_rows=chunk_rows(settings.memory_budget_bytes()),
            offline_path=offline,
            rejected_path=work / "rej.csv",
        )
        count = result.rows_written
    elif step == "ingest_before":
        validation = validate_bytes(contract, source.read_bytes(), key="a.csv", content_type=None)
        offline_frame(contract, validation.valid_table()).to_parquet(work / "before.parquet", index=False)
        count = validation.rows_written
    elif step in ("materialise", "materialise_redis"):
        from functions.materialise.online_writer import batch_rows, newest_rows, write_online

        parquet = pq.ParquetFile(offline)
        chosen = newest_rows(
            parquet, contract.entity_key, dt(2000, 1, 1, tzinfo=UTC), dt(2100, 1, 1, tzinfo=UTC)
        )
        count = write_online(contract, parquet, chosen, batch_rows(settings.memory_budget_bytes()))
    elif step.startswith("training_set"):
        import dataclasses

        from shared import modelling

        cap = 10**15 if step == "training_set_uncapped" else cap
        rule = dataclasses.replace(contract.sample_rule, max_rows=cap or contract.sample_rule.max_rows)
        # no streamed parts here (no object store): the batch view's join alone
        contract = dataclasses.replace(contract, training=rule, streaming=None)
        frame, lineage = modelling.load_training_set(contract, "bench", pq.ParquetFile(offline))
        count = len(frame)
        del frame
    else:
        assert store is not None
        store.materialize(dt(2000, 1, 1, tzinfo=UTC), dt(2100, 1, 1, tzinfo=UTC), [contract.feature_view])
        count = int(pd.read_parquet(offline, columns=[contract.entity_key]).nunique().iloc[0])
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    peak = memory.peak_rss_mb()
    memory.release()
    return {
        "step": step,
        "rows": rows,
        "rows_out": count,
        "seconds": round(seconds, 2),
        "cpu_seconds": round(cpu, 2),
        "rows_per_s": round(rows / seconds),
        "rss_before_mb": round(rest),
        "peak_rss_mb": round(peak),
        "rss_after_release_mb": round(memory.rss_mb()),
        **({"sample": {k: lineage[k] for k in ("rule", "sampled", "classes")}} if lineage else {}),
    }


def _flush(redis_address: str) -> None:
    import redis

    host_port, _, db = redis_address.partition(",db=")
    host, _, port = host_port.rpartition(":")
    redis.Redis(host, int(port), db=int(db or 0)).flushdb()


def run_step(
    step: str,
    work: Path,
    rows: int,
    budget_mb: float,
    timeout: float,
    cap: int | None = None,
    redis_address: str | None = None,
) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "FAASPIPE_MEMORY_BUDGET_MB": str(budget_mb)}
    if step == "materialise_redis":
        if not redis_address:
            raise ValueError("materialise_redis needs --redis")
        _flush(redis_address)
        env["FAASPIPE_FEAST_REDIS"] = redis_address
    env.update({"OMP_NUM_THREADS": "2", "OPENBLAS_NUM_THREADS": "2"})
    command = [str(TRAIN_PYTHON), "-m", "bench.scale", "--child", step, str(work), str(rows), str(cap or 0)]
    try:
        done = subprocess.run(
            command, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return {"step": step, "rows": rows, "error": f"timed out after {timeout:.0f} s"}
    if done.returncode != 0:
        return {"step": step, "rows": rows, "error": done.stderr[-2000:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def generate(work: Path, rows: int) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "localdev.datagen",
            "--rows",
            str(rows),
            "--seed",
            "7",
            str(work / f"rows-{rows}.csv"),
        ],
        cwd=REPO_ROOT,
        check=True,
        stdout=subprocess.DEVNULL,
    )


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(json.dumps(_child(sys.argv[2], Path(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))))
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 1_000_000])
    parser.add_argument("--ten-million", action="store_true", help="also 10,000,000 rows")
    parser.add_argument("--before", action="store_true", help="also the whole-file paths (slow, GBs at 1M)")
    parser.add_argument("--budget-mb", type=float, default=256)
    parser.add_argument("--redis", help="also materialise into Redis at HOST:PORT,db=N (flushed first)")
    parser.add_argument(
        "--steps",
        nargs="+",
        choices=[*STEPS, "materialise_redis", *BEFORE],
        help="only these steps, in this order",
    )
    parser.add_argument("--cap", type=int, help="training_set: max_rows instead of the contract's")
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results" / "scale.json")
    args = parser.parse_args()
    sizes = [*args.rows, *([10_000_000] if args.ten_million else [])]
    results: dict[str, Any] = {
        "bench": "scale",
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"nproc": os.cpu_count(), "platform": platform.platform(), "load": os.getloadavg()},
        "budget_mb": args.budget_mb,
        "training_cap": args.cap,
        "online_store": ["sqlite", *(["redis"] if args.redis else [])],
        "runs": [],
    }
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        work = Path(tmp)
        for rows in sizes:
            generate(work, rows)
            redis_step = ["materialise_redis"] if args.redis else []
            for step in args.steps or [*STEPS, *redis_step, *(BEFORE if args.before else ())]:
                figures = run_step(step, work, rows, args.budget_mb, args.timeout, args.cap, args.redis)
                print(json.dumps(figures), flush=True)
                results["runs"].append(figures)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"results written to {args.out}")


if __name__ == "__main__":
    main()
