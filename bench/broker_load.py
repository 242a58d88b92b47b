"""Offered load on the broker ingress with k6, judged from the noop function's receipts.

One ``offer()`` = one k6 run of ``bench/k6/ingress.js`` at a constant arrival rate, then the
receipts of its events: delivered/expected, duplicates, delivery latency, latency growth.
A rate is *sustained* when k6 offered it in full (no dropped iterations), the ingress
answered every request 202 (no 5xx), every accepted event reached the noop function within
``bound_ms``, and delivery latency did not grow over the run (the dispatcher kept up).
``search()`` steps the rate up geometrically until a step is not sustained, then bisects.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

from bench.k6run import run_k6
from bench.receipts import ReceiptLog, delivery_figures
from localdev.config import StackConfig


@dataclass(frozen=True)
class Sustained:
    """What "sustained" means (recorded in the JSON next to each verdict)."""

    bound_ms: float = 1000.0  # every event delivered within this
    growth_ms: float = 100.0  # median latency of the last quarter − first quarter, at most
    offered_fraction: float = 0.97  # k6 offered at least this fraction of rate × duration

    def as_dict(self) -> dict[str, float]:
        return {
            "max_delivery_latency_ms": self.bound_ms,
            "max_latency_growth_ms": self.growth_ms,
            "min_offered_fraction": self.offered_fraction,
        }


def drain_timeout_s(accepted: int, bound_ms: float) -> float:
    """How long to wait for a run's events after k6 ends: the bound, plus a backlog at 50/s."""
    return max(30.0, bound_ms / 1000 + accepted / 50)


def offer(
    config: StackConfig, receipts: ReceiptLog, rate: int, duration_s: float, label: str, rule: Sustained
) -> dict[str, Any]:
    """``rate`` events/s for ``duration_s`` through the ingress; figures and verdict."""
    prefix = f"{label}-{uuid.uuid4().hex[:6]}-"
    run = run_k6(
        "ingress.js",
        {"URL": config.ingress_url, "PREFIX": prefix, "RATE": rate, "DURATION": f"{duration_s:g}s"},
        timeout_s=duration_s + 120,
    )
    offered = run.count("iterations")
    accepted = run.count("accepted_202")
    status_5xx = run.count("status_5xx")
    status_other = run.count("status_other")
    dropped = run.count("dropped_iterations")
    got = receipts.wait_for(prefix, accepted, drain_timeout_s(accepted, rule.bound_ms))
    delivery = delivery_figures(got, accepted)
    worst = delivery["latency_ms"]["max"]
    growth = delivery["latency_growth_ms"]
    checks = {
        "offered_in_full": dropped == 0 and offered >= rule.offered_fraction * rate * duration_s,
        "all_accepted": accepted == offered and status_5xx == 0 and status_other == 0,
        "all_delivered_within_bound": delivery["lost"] == 0 and worst is not None and worst <= rule.bound_ms,
        "latency_not_growing": growth is None or growth <= rule.growth_ms,
    }
    return {
        "offered_rate_eps": rate,
        "duration_s": duration_s,
        "ce_id_prefix": prefix,
        "k6": {
            "offered": offered,
            "dropped_iterations": dropped,
            "offered_rate_eps": round(offered / run.duration_s, 1) if run.duration_s else None,
            "status_202": accepted,
            "status_5xx": status_5xx,
            "status_other": status_other,
            "ingress_response_ms": run.latency_ms(),
        },
        "delivery": delivery,
        "checks": checks,
        "sustained": all(checks.values()),
        "load_generator": run.load_generator(),
    }


def search(
    config: StackConfig,
    receipts: ReceiptLog,
    rule: Sustained,
    step_s: float,
    start: int,
    factor: float,
    max_rate: int,
    refine: int,
) -> tuple[int | None, list[dict[str, Any]]]:
    """Highest sustained rate: ×``factor`` from ``start`` until a step fails (÷``factor`` while
    none is sustained), then ``refine`` bisections between the highest sustained and the
    lowest failed rate (rounded to 10/s above 200/s)."""
    steps: list[dict[str, Any]] = []

    def step(rate: int) -> bool:
        result = offer(config, receipts, rate, step_s, f"s{rate}", rule)
        steps.append(result)
        d = result["delivery"]
        print(
            f"  {rate:>6}/s  sustained={result['sustained']!s:<5}  delivered {d['delivered']}/{d['expected']}"
            f"  p50 {d['latency_ms']['p50']} ms  p99 {d['latency_ms']['p99']} ms"
            f"  growth {d['latency_growth_ms']} ms  k6 cpu {result['load_generator']['cpu_cores_busy']}",
            flush=True,
        )
        time.sleep(2)  # let the box settle between steps
        return bool(result["sustained"])

    best: int | None = None
    failed: int | None = None
    rate = start
    while rate <= max_rate:
        if not step(rate):
            failed = rate
            break
        best = rate
        rate = int(round(rate * factor))
    while best is None and rate >= 20:  # even the first step failed: step down
        rate = int(round(rate / factor))
        if step(rate):
            best = rate
        else:
            failed = rate
    low = best or 0
    for _ in range(refine if failed is not None else 0):
        grain = 10 if failed > 200 else 1  # type: ignore[operator]
        mid = int(round((low + failed) / 2 / grain) * grain)  # type: ignore[operator]
        if mid <= low or mid >= failed:  # type: ignore[operator]
            break
        if step(mid):
            low = best = mid
        else:
            failed = mid
    return best, steps


def warm_up(config: StackConfig, receipts: ReceiptLog) -> None:
    """100 events at 50/s, all of which must arrive (connections, consumer groups, JIT-free k6)."""
    result = offer(config, receipts, 50, 2, "w", Sustained(bound_ms=60_000, growth_ms=60_000))
    if result["delivery"]["lost"] or result["k6"]["status_202"] < result["k6"]["offered"]:
        raise RuntimeError(f"warm-up failed: {result['k6']} {result['delivery']}")
