"""Soak: a constant rate (80 % of the broker's highest sustained rate) for 60 s through the
ingress to the noop function: no event lost, no duplicate effect, no 5xx.

Run by ``bench.broker_throughput`` on its stack after the rate search (results in
``bench/results/soak.json``); alone, on its own stack:

    python -m bench.soak [--rate R | --from PATH-to-broker_throughput.json] [--seconds S]
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.broker_load import Sustained, offer, warm_up
from bench.functions.noop.handler import receipts_path
from bench.receipts import ReceiptLog
from bench.stack import bench_stack, machine_facts
from localdev.config import StackConfig
from shared.topology import REPO_ROOT

FRACTION = 0.8
DEFAULT_OUT = REPO_ROOT / "bench" / "results" / "soak.json"
DEFAULT_BROKER_RESULTS = REPO_ROOT / "bench" / "results" / "broker_throughput.json"


def run_soak(
    config: StackConfig, receipts: ReceiptLog, rate: int, seconds: float, rule: Sustained
) -> dict[str, Any]:
    """The soak run, its pass criteria and whether they held."""
    print(f"soak: {rate} events/s for {seconds:g} s", flush=True)
    result = offer(config, receipts, rate, seconds, "soak", rule)
    k6, delivery = result["k6"], result["delivery"]
    targets = {"lost": 0, "duplicates": 0, "status_5xx": 0}
    met = {
        "no_event_lost": delivery["lost"] == 0 and k6["status_202"] == k6["offered"],
        "no_duplicate_effect": delivery["duplicates"] == 0,
        "no_5xx": k6["status_5xx"] == 0,
    }
    return {
        "benchmark": "soak",
        "rate_eps": rate,
        "seconds": seconds,
        "targets": targets,
        "met": met,
        **result,
    }


def write(report: dict[str, Any], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"soak results written to {out}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--rate", type=int, help="events/s (default: 80 %% of --from's highest sustained rate)"
    )
    parser.add_argument("--from", dest="source", type=Path, default=DEFAULT_BROKER_RESULTS)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--storage", choices=["memory", "s3"], default="memory")
    parser.add_argument("--port-base", type=int, default=23000)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    rate = args.rate
    if rate is None:
        best = json.loads(args.source.read_text())["summary"]["highest_sustained_eps"]
        if not best:
            print(f"{args.source} has no sustained rate; pass --rate", file=sys.stderr)
            return 2
        rate = int(best * FRACTION)
    started = datetime.now(UTC).isoformat(timespec="seconds")
    with bench_stack(args.storage, args.port_base) as config:
        receipts = ReceiptLog(receipts_path(config.state_dir))
        warm_up(config, receipts)
        report = run_soak(config, receipts, rate, args.seconds, Sustained())
    report = {"started_at": started, "machine": machine_facts(args.storage), **report}
    write(report, args.out)
    return 0 if all(report["met"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
