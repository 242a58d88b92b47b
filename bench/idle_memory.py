"""The idle stack's memory, replicas spawned against replicas forked from zygotes, same run.

Two stacks of the product's functions, one after the other, alike but for ``FAASPIPE_ZYGOTE``
(``off``: every replica a new interpreter; ``on``: forked from its environment's zygote). On
each, after ``faaspipe up`` and ``--settle`` seconds with nothing to do, every process of the
stack (the supervisor's process tree: platform services, broker, function replicas, zygotes) is
read from ``/proc/PID/smaps_rollup``: **PSS** (a page shared by N processes counts 1/N: the
stack's real footprint) and RSS (what ``ps`` shows; shared pages counted in every process).
Reported per component and in total, with the load average at each reading.

    python -m bench.idle_memory [--settle 30] [--port-base 26700] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.stack import bench_stack, machine_facts, supervisor_status
from localdev.config import StackConfig
from shared.topology import REPO_ROOT


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _smaps(pid: int) -> tuple[float, float]:
    pss = rss = 0.0
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key == "Pss":
                pss = int(rest.split()[0]) / 1024
            elif key == "Rss":
                rss = int(rest.split()[0]) / 1024
    except OSError:
        pass
    return pss, rss


def _name(pid: int) -> str:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").decode(errors="replace").split("\0")
    except OSError:
        return "?"
    if "--name" in argv:  # a function replica (its gunicorn master and worker alike)
        return "fn " + argv[argv.index("--name") + 1]
    for marker, label in (
        ("localdev.zygote.server", "zygote"),
        ("localdev.supervisor", "supervisor"),
        ("localdev.broker.server", "broker"),
        ("localdev.broker.dispatch_server", "dispatcher"),
        ("mlflow", "mlflow"),
        ("weed", "seaweedfs"),
        ("tansu", "kafka"),
    ):
        if any(marker in part for part in argv):
            if label == "zygote" and "--socket" in argv:
                return "zygote " + Path(argv[argv.index("--socket") + 1]).stem
            return label
    return Path(argv[0]).name


def stack_memory(config: StackConfig) -> dict[str, Any]:
    """PSS and RSS (MB) of every process under the supervisor, grouped by component."""
    root = int(supervisor_status(config)["pid"])
    groups: dict[str, dict[str, float]] = {}
    stack, seen = [root], set()
    while stack:
        pid = stack.pop()
        if pid in seen:
            continue
        seen.add(pid)
        stack.extend(_children(pid))
        pss, rss = _smaps(pid)
        group = groups.setdefault(_name(pid), {"processes": 0, "pss_mb": 0.0, "rss_mb": 0.0})
        group["processes"] += 1
        group["pss_mb"] += pss
        group["rss_mb"] += rss
    rounded = {
        k: {**v, "pss_mb": round(v["pss_mb"], 1), "rss_mb": round(v["rss_mb"], 1)} for k, v in groups.items()
    }
    return {
        "processes": len(seen),
        "pss_mb": round(sum(g["pss_mb"] for g in groups.values()), 1),
        "rss_mb": round(sum(g["rss_mb"] for g in groups.values()), 1),
        "by_component": dict(sorted(rounded.items(), key=lambda item: -item[1]["pss_mb"])),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--settle", type=float, default=30.0, help="seconds idle after `up` before reading")
    parser.add_argument("--port-base", type=int, default=26700)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results" / "idle_memory.json")
    args = parser.parse_args(argv)
    report: dict[str, Any] = {
        "bench": "idle_memory",
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_facts("memory"),
        "settle_s": args.settle,
        "stacks": {},
    }
    for zygote in ("off", "on"):
        with bench_stack(
            "memory", args.port_base, str(REPO_ROOT / "functions"), {"FAASPIPE_ZYGOTE": zygote}
        ) as config:
            time.sleep(args.settle)
            report["stacks"][f"zygote_{zygote}"] = reading = stack_memory(config)
            print(
                f"zygote {zygote}: PSS {reading['pss_mb']} MB, RSS {reading['rss_mb']} MB, "
                f"{reading['processes']} processes",
                flush=True,
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"results written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
