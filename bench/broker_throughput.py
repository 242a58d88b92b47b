"""Broker benchmark: faaspipe's event path under k6 load, beside raw Kafka on the same broker.

Starts a dedicated stack (only the ``noop`` function of ``bench/functions``), then
1. offers binary-mode pings to the ingress with k6 (``bench/k6/ingress.js``,
   constant-arrival-rate) at fixed rates (500 and 1,000 events/s): delivery latency from the
   noop function's receipts;
2. searches the highest sustained rate (``bench.broker_load.search``);
3. runs the raw Kafka peer (``bench.kafka_peer``): produce→consume as fast as possible, and
   paced at the same fixed rates;
4. soaks at 80 % of the highest sustained rate for 60 s (``bench.soak``).
Results, with the issue's targets beside them, go to ``bench/results/broker_throughput.json``
and ``soak.json``; the exit status is non-zero if an accepted event was lost or the soak failed.

    python -m bench.broker_throughput [--fixed-rates 500,1000] [--fixed-seconds S]
        [--step-seconds S] [--start-rate R] [--max-rate R] [--soak-seconds S (0: none)]
        [--peer-events N] [--storage memory|s3] [--port-base P] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import soak
from bench.broker_load import Sustained, offer, search, warm_up
from bench.functions.noop.handler import receipts_path
from bench.kafka_peer import KafkaPeer
from bench.receipts import ReceiptLog
from bench.stack import bench_stack, machine_facts
from shared import tracing
from shared.cloudevents_io import CloudEvent, to_kafka
from shared.topology import REPO_ROOT

PING = "dev.faaspipe.sample.ping.v1"
SOURCE = "/faaspipe/bench/broker-throughput"
# Below Linux's ephemeral range (32768-60999): a base inside it collides with the local ends
# of other programs' connections. Main stack 17000, tests 27000.
DEFAULT_PORT_BASE = 23000
DEFAULT_OUT = REPO_ROOT / "bench" / "results" / "broker_throughput.json"
TARGETS = {
    "highest_sustained_eps_min": 2000,
    "fraction_of_raw_kafka_min": 0.40,
    "p99_delivery_ms_at_500_eps_max": 50.0,
}


def reference_record_bytes() -> int:
    """Size of the Kafka record the ingress writes for one benchmark ping (value + headers)."""
    event = CloudEvent(
        {
            "id": f"m-{uuid.uuid4().hex[:6]}-{0:06d}",
            "source": SOURCE,
            "type": PING,
            "datacontenttype": "application/json",
            "traceparent": tracing.new_traceparent(),
        },
        {"message": f"t={time.time():.3f}"},
    )
    _key, headers, value = to_kafka(event)
    return len(value) + sum(len(k) + len(v) for k, v in headers)


def summarize(
    best: int | None, steps: list[dict[str, Any]], fixed: dict[str, Any], raw: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, bool | None]]:
    """The headline figures and which targets they meet (None: not measured)."""
    best_step = next((s for s in steps if s["offered_rate_eps"] == best and s["sustained"]), None)
    raw_eps = raw["max_throughput"]["end_to_end_throughput_eps"]
    at_500 = fixed.get("500")
    p99_500 = at_500["delivery"]["latency_ms"]["p99"] if at_500 else None
    summary = {
        "highest_sustained_eps": best,
        "delivered_eps_at_highest": best_step["delivery"]["end_to_end_throughput_eps"] if best_step else None,
        "raw_kafka_produce_consume_eps": raw_eps,
        "fraction_of_raw_kafka": round(best / raw_eps, 3) if best and raw_eps else None,
        "p50_p99_delivery_ms": {
            rate: [r["delivery"]["latency_ms"]["p50"], r["delivery"]["latency_ms"]["p99"]]
            for rate, r in fixed.items()
        },
        "raw_kafka_p50_p99_ms": {
            rate: [r["latency_ms"]["p50"], r["latency_ms"]["p99"]] for rate, r in raw["fixed_rate"].items()
        },
    }
    met = {
        "highest_sustained_eps_min": (best or 0) >= TARGETS["highest_sustained_eps_min"],
        "fraction_of_raw_kafka_min": (summary["fraction_of_raw_kafka"] or 0)
        >= TARGETS["fraction_of_raw_kafka_min"],
        "p99_delivery_ms_at_500_eps_max": None
        if p99_500 is None
        else p99_500 <= TARGETS["p99_delivery_ms_at_500_eps_max"],
    }
    return summary, met


def print_table(fixed: dict[str, Any], raw: dict[str, Any], best: int | None) -> None:
    print(
        f"\n{'':<28}{'offered/s':>10}{'e2e ev/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'delivered':>14}"
    )
    rows = [(f"faaspipe @{r}/s", b["offered_rate_eps"], b["delivery"]) for r, b in fixed.items()]
    rows += [(f"kafka @{r}/s", b["offered_rate_eps"], b) for r, b in raw["fixed_rate"].items()]
    rows.append(("kafka max throughput", "-", raw["max_throughput"]))
    for name, offered, d in rows:
        lat = d["latency_ms"]
        cells = "".join(f"{'-' if lat[q] is None else lat[q]:>9}" for q in ("p50", "p99", "max"))
        print(
            f"{name:<28}{offered:>10}{d['end_to_end_throughput_eps']:>10}{cells}"
            f"{d['delivered']:>7}/{d['expected']:<6}"
        )
    print(f"highest sustained rate through faaspipe: {best} events/s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--fixed-rates", default="500,1000", help="offered rates for latency (default 500,1000)"
    )
    parser.add_argument("--fixed-seconds", type=float, default=10.0, help="seconds per fixed rate (10)")
    parser.add_argument("--step-seconds", type=float, default=10.0, help="seconds per search step (10)")
    parser.add_argument("--start-rate", type=int, default=100, help="first search step, events/s (100)")
    parser.add_argument("--factor", type=float, default=1.5, help="search step factor (1.5)")
    parser.add_argument("--max-rate", type=int, default=8000, help="search ceiling, events/s (8000)")
    parser.add_argument("--refine", type=int, default=2, help="bisections after the first failed step (2)")
    parser.add_argument("--bound-ms", type=float, default=Sustained.bound_ms, help="delivery bound (1000 ms)")
    parser.add_argument("--soak-seconds", type=float, default=60.0, help="soak length, 0 for none (60)")
    parser.add_argument("--peer-events", type=int, default=20000, help="raw Kafka max-throughput records")
    parser.add_argument("--storage", choices=["memory", "s3"], default="memory", help="Tansu storage engine")
    parser.add_argument("--port-base", type=int, default=DEFAULT_PORT_BASE, help="bench stack port base")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON results (default {DEFAULT_OUT})")
    args = parser.parse_args(argv)

    rule = Sustained(bound_ms=args.bound_ms)
    rates = [int(r) for r in args.fixed_rates.split(",") if r]
    started = datetime.now(UTC).isoformat(timespec="seconds")
    size = reference_record_bytes()
    soak_report: dict[str, Any] | None = None
    machine = machine_facts(args.storage)  # before the stack: the load average is the box's
    with bench_stack(args.storage, args.port_base) as config:
        receipts = ReceiptLog(receipts_path(config.state_dir))
        warm_up(config, receipts)
        fixed: dict[str, Any] = {}
        for r in rates:
            print(f"faaspipe at {r} events/s for {args.fixed_seconds:g} s", flush=True)
            fixed[str(r)] = offer(config, receipts, r, args.fixed_seconds, f"f{r}", rule)
            time.sleep(2)
        print("searching the highest sustained rate", flush=True)
        best, steps = search(
            config,
            receipts,
            rule,
            args.step_seconds,
            args.start_rate,
            args.factor,
            args.max_rate,
            args.refine,
        )
        print("raw Kafka peer", flush=True)
        peer = KafkaPeer(config.kafka_bootstrap, config.broker_partitions, size)
        try:
            raw = {
                "max_throughput": peer.max_throughput(args.peer_events),
                "fixed_rate": {str(r): peer.fixed_rate(r, args.fixed_seconds) for r in rates},
            }
        finally:
            peer.close()
        if args.soak_seconds > 0 and best:
            soak_report = soak.run_soak(config, receipts, int(best * soak.FRACTION), args.soak_seconds, rule)
    summary, met = summarize(best, steps, fixed, raw)
    report = {
        "benchmark": "broker_throughput",
        "started_at": started,
        "machine": machine,
        "method": {
            "load_generator": "k6 bench/k6/ingress.js, constant-arrival-rate, binary-mode CloudEvents",
            "path": "k6 POST → ingress → Kafka (acks=all) → trigger dispatcher (at-least-once commits)"
            " → gateway → noop function (receipts file)",
            "latency": "noop arrival time − send time carried in the event (k6 Date.now(), ms resolution)",
            "sustained": rule.as_dict(),
            "search": {
                "step_seconds": args.step_seconds,
                "start_rate": args.start_rate,
                "factor": args.factor,
                "max_rate": args.max_rate,
                "refine": args.refine,
            },
            "partitions": config.broker_partitions,
            "record_bytes": size,
            "event_type": PING,
        },
        "targets": TARGETS,
        "met": met,
        "summary": summary,
        "faaspipe": {"fixed_rate": fixed, "search_steps": steps},
        "raw_kafka": raw,
        "soak": None
        if soak_report is None
        else {"rate_eps": soak_report["rate_eps"], "met": soak_report["met"]},
    }
    print_table(fixed, raw, best)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nresults written to {args.out}")
    print(json.dumps({"summary": summary, "targets": TARGETS, "met": met}, indent=2))
    if soak_report is not None:
        soak.write({"started_at": started, "machine": machine, **soak_report}, args.out.parent / "soak.json")
        print(json.dumps({"soak": soak_report["met"]}))
    lost = {
        name: b["delivery"]["lost"]
        for name, b in [*fixed.items(), *((f"step {s['offered_rate_eps']}", s) for s in steps)]
        if b["delivery"]["lost"]
    }
    lost.update(
        {
            f"kafka {r}": b["expected"] - b["delivered"]
            for r, b in raw["fixed_rate"].items()
            if b["delivered"] < b["expected"]
        }
    )
    if lost:
        print(f"EVENTS LOST (not delivered within the timeout): {lost}", file=sys.stderr)
    soak_failed = soak_report is not None and not all(soak_report["met"].values())
    return 1 if lost or soak_failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
