"""File drop → champion serving at growing sizes, in process and on the Dask engine, same run.

For each ``--rows`` size a generated AI4I CSV (``localdev.datagen``, seed 7) is dropped into a
fresh stack's landing bucket (``localdev.pipeline.run_chain``, what ``faaspipe run`` does) and
followed until predict serves the promoted champion. Per run: seconds from the upload to the
first event of each step (ingested, materialised, trials, study completed, registered,
promoted) and to serving, the champion's holdout metrics, and the peak RSS of every function
replica still running when the champion serves (``VmHWM`` from ``/proc``). ``--engines`` picks
``inprocess`` and/or ``dask`` (``FAASPIPE_ENGINE=dask`` with a LocalCluster of 2 workers × 1
thread and no size threshold, so the Dask side runs even where the threshold would keep it in
process). The functions run with their own function.yaml settings: what a user gets.

    python -m bench.scale_chain [--rows 10000 1000000] [--engines inprocess dask]
                                [--port-base 26000] [--timeout 3600]
                                [--out bench/results/scale_chain.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.stack import bench_stack, machine_facts, supervisor_status
from localdev import pipeline
from localdev.config import StackConfig
from shared.topology import REPO_ROOT

DASK = {
    "FAASPIPE_ENGINE": "dask",
    "FAASPIPE_DASK_MIN_BYTES": "0",
    "FAASPIPE_DASK_WORKERS": "2",
    "FAASPIPE_DASK_THREADS": "1",
}
ENGINES = {"inprocess": {"FAASPIPE_ENGINE": "inprocess"}, "dask": DASK}


def _peak_rss_mb(pid: int) -> float | None:
    """The highest ``VmHWM`` of ``pid`` and its descendants (a replica's server forks its worker)."""
    peak: float | None = None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                peak = int(line.split()[1]) / 1024
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return peak
    for child in children:
        below = _peak_rss_mb(int(child))
        if below is not None and (peak is None or below > peak):
            peak = below
    return peak


def replica_peaks(config: StackConfig) -> dict[str, float]:
    """The highest peak RSS (MB) among each function's replicas still running (a replica
    already scaled to zero took its figure with it)."""
    peaks: dict[str, float] = {}
    for name, function in supervisor_status(config).get("functions", {}).items():
        for replica in function.get("replicas", []):
            pid = replica.get("pid")
            mb = _peak_rss_mb(int(pid)) if pid else None
            if mb is not None:
                peaks[name] = round(max(peaks.get(name, 0.0), mb))
    return peaks


def one_run(rows: int, engine: str, csv: Path, port_base: int, timeout_s: float) -> dict[str, Any]:
    started = time.monotonic()
    with bench_stack("memory", port_base, str(REPO_ROOT / "functions"), ENGINES[engine]) as config:
        up_s = time.monotonic() - started
        served = pipeline.run_chain(config, timeout_s, source=(csv, f"{rows:,} generated AI4I rows"))
        peaks = replica_peaks(config)
    if served is None:
        return {"rows": rows, "engine": engine, "error": "no champion (see the run's output)"}
    return {
        "rows": rows,
        "engine": engine,
        "stack_up_s": round(up_s, 1),
        "drop_to_serving_s": round(float(served["drop_to_serving_s"]), 1),  # type: ignore[arg-type]
        "first_event_s": served.get("first_event_s"),
        "metrics": served.get("metrics"),
        "peak_rss_mb": peaks,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 1_000_000])
    parser.add_argument("--engines", nargs="+", choices=sorted(ENGINES), default=["inprocess", "dask"])
    parser.add_argument("--port-base", type=int, default=26000)
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results" / "scale_chain.json")
    args = parser.parse_args()
    results: dict[str, Any] = {
        "bench": "scale_chain",
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {**machine_facts("memory"), "load_at_start": os.getloadavg()},
        "runs": [],
    }
    with tempfile.TemporaryDirectory(prefix="bench-scale-chain-") as tmp:
        for rows in args.rows:
            csv = Path(tmp) / f"ai4i-{rows}.csv"
            subprocess.run(
                [sys.executable, "-m", "localdev.datagen", "--rows", str(rows), "--seed", "7", str(csv)],
                cwd=REPO_ROOT,
                check=True,
                stdout=subprocess.DEVNULL,
            )
            for engine in args.engines:
                run = {**one_run(rows, engine, csv, args.port_base, args.timeout), "load": os.getloadavg()}
                print(json.dumps(run), flush=True)
                results["runs"].append(run)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"results written to {args.out}")


if __name__ == "__main__":
    main()
