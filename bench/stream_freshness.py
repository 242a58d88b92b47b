"""Streamed readings → online features: how fresh are the features a prediction by entity sees?

A stack of its own (``--port-base``, default 22000) with only ``stream-features``. k6
(``bench/k6/readings.js``, constant arrival rate) posts AI4I-like readings of ``--machines``
machines (``localdev.datagen.stream_readings``) to the broker ingress at each ``--rates`` for
``--seconds``; meanwhile ``bench/stream_poller.py`` (train venv) reads every machine's row of
the Feast online store (``get_online_features``, what the feature server serves) every 20 ms
and notes when each reading id first appears. Freshness of a reading = first seen online −
sent (the send time, ms, is in its id). A reading replaced by the next reading of its machine
before a poll saw it is not counted (``observed`` says how many were). After k6 stops the
poller runs until the last reading is online, or none of the run's came for 15 s (at most
600 s): ``drain_s`` is the time from k6's end to the last reading seen.

``--paths`` also measures, in the same run, the readings topic (``kafka``): the same readings
as records on ``faaspipe.readings`` (CloudEvents, Kafka binary binding), which stream-features
reads itself in batches; a kafka-python producer paces them (k6 has no Kafka client).

    python -m bench.stream_freshness [--rates 200,1000] [--seconds 20] [--machines 200]
                                     [--paths cloudevents,kafka]
                                     [--port-base 22000] [--out bench/results/stream_freshness.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kafka import KafkaProducer

from bench.k6run import run_k6
from bench.stack import bench_stack, machine_facts
from bench.stats import latency_summary
from localdev.config import StackConfig
from localdev.datagen import stream_readings
from shared.topology import REPO_ROOT

DEFAULT_PORT_BASE = 22000
DEFAULT_OUT = REPO_ROOT / "bench" / "results" / "stream_freshness.json"
TRAIN_PYTHON = REPO_ROOT / ".venvs" / "train" / "bin" / "python"
SOURCE = "/faaspipe/bench/stream"
TARGETS = {"freshness_p99_ms_at_1000_per_s": 1000.0}
READINGS_TOPIC = "faaspipe.readings"
PATHS = ("cloudevents", "kafka")


class Poller:
    """``bench/stream_poller.py`` as a subprocess; its output file is read at the end."""

    def __init__(self, config: StackConfig, machines: int, workdir: Path) -> None:
        self.out, self.stop = workdir / "seen.jsonl", workdir / "stop"
        self.stop.unlink(missing_ok=True)
        self.out.unlink(missing_ok=True)  # the poller creates it once it is ready to read
        env = {**os.environ, **config.function_env(), "PYTHONPATH": str(REPO_ROOT)}
        self.proc = subprocess.Popen(
            [str(TRAIN_PYTHON), str(REPO_ROOT / "bench" / "stream_poller.py"), "ai4i", str(machines)]
            + [str(self.out), str(self.stop)],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )

    def seen(self) -> list[dict[str, Any]]:
        if not self.out.exists():
            return []
        return [json.loads(line) for line in self.out.read_text().splitlines() if line.endswith("}")]

    def close(self) -> dict[str, Any]:
        self.stop.touch()
        stdout, _ = self.proc.communicate(timeout=60)
        lines = stdout.strip().splitlines()
        return json.loads(lines[-1]) if lines else {}


def _sent(reading_id: str, prefix: str) -> tuple[int, float] | None:
    """(iteration, send time s) of a reading id of this run, None for another run's."""
    head = f"{SOURCE}/{prefix}"
    if not reading_id.startswith(head):
        return None
    iteration, _, millis = reading_id[len(head) :].partition("-")
    return int(iteration), int(millis) / 1000


def produce(
    bootstrap: str, readings: list[dict[str, Any]], prefix: str, rate: int, seconds: float
) -> dict[str, Any]:
    """Readings as Kafka records (CloudEvents, binary binding) on ``READINGS_TOPIC``, paced at
    ``rate``/s for ``seconds`` (open loop: a late send does not delay the next ones' schedule).
    ce-id and ce-time carry the send time as k6's do. k6 has no Kafka client (xk6-kafka is a
    custom build), so this path's load generator is a kafka-python producer in this process."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    failed: list[BaseException] = []
    count = int(rate * seconds)
    cpu0, start = time.process_time(), time.time()
    try:
        for i in range(count):
            delay = start + i / rate - time.time()
            if delay > 0:
                time.sleep(delay)
            reading = readings[i % len(readings)]
            now = time.time()
            stamp = datetime.fromtimestamp(now, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
            headers = [
                ("ce_specversion", b"1.0"),
                ("ce_type", b"dev.faaspipe.sensor.reading.v1"),
                ("ce_source", SOURCE.encode()),
                ("ce_id", f"{prefix}{i}-{int(now * 1000)}".encode()),
                ("ce_time", stamp.encode()),
                ("ce_subject", str(reading["udi"]).encode()),
                ("content-type", b"application/json"),
            ]
            value = json.dumps({"dataset": "ai4i", "reading": reading}).encode()
            producer.send(READINGS_TOPIC, value=value, headers=headers).add_errback(failed.append)
        producer.flush(timeout=60)
        sent_for = time.time() - start
    finally:
        producer.close(10)
    return {
        "sent": count - len(failed),
        "failed": len(failed),
        "achieved_rate_eps": round(count / sent_for, 1),
        "duration_s": sent_for,
        "load_generator": {
            "tool": "kafka-python KafkaProducer (acks=all, linger_ms=5), paced in the bench process",
            "cpu_s": round(time.process_time() - cpu0, 2),
        },
    }


def offer(
    config: StackConfig,
    readings: Path,
    machines: int,
    rate: int,
    seconds: float,
    workdir: Path,
    path: str = "cloudevents",
) -> dict[str, Any]:
    prefix = f"{uuid.uuid4().hex[:6]}-"
    poller = Poller(config, machines, workdir)
    deadline = time.monotonic() + 120
    while not poller.out.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(3.0)  # the poller's first read (Feast's registry, the store's client) is done by now
    figures: dict[str, Any]
    if path == "kafka":
        produced = produce(config.kafka_bootstrap, json.loads(readings.read_text()), prefix, rate, seconds)
        sent = produced["sent"]
        figures = {
            "path": f"records on {READINGS_TOPIC}",
            "produced": produced["sent"],
            "produce_failed": produced["failed"],
            "achieved_rate_eps": produced["achieved_rate_eps"],
            "load_generator": produced["load_generator"],
        }
    else:
        run = run_k6(
            "readings.js",
            {
                "URL": config.ingress_url,
                "READINGS": str(readings),
                "PREFIX": prefix,
                "RATE": rate,
                "DURATION": f"{seconds:g}s",
            },
            timeout_s=seconds + 120,
        )
        sent = run.count("accepted_202")
        figures = {
            "path": "CloudEvents via the ingress",
            "k6_iterations": run.count("iterations"),
            "accepted_202": sent,
            "status_5xx": run.count("status_5xx"),
            "status_other": run.count("status_other"),
            "achieved_rate_eps": round(sent / run.duration_s, 1) if run.duration_s else None,
            "ingress_latency_ms": run.latency_ms(),
            "load_generator": run.load_generator(),
        }
    k6_end = time.time()
    last_new, last_count = time.monotonic(), 0
    while True:
        mine = [s for s in poller.seen() if _sent(s["reading_id"], prefix)]
        top = max((_sent(s["reading_id"], prefix)[0] for s in mine), default=-1)  # type: ignore[index]
        quiet = bool(mine) and time.monotonic() - last_new > 15  # the run's readings stopped coming
        if top >= sent - 1 or quiet or time.time() - k6_end > 600:
            break
        if len(mine) != last_count:
            last_new, last_count = time.monotonic(), len(mine)
        time.sleep(0.5)
    reads = poller.close()
    mine = [s for s in poller.seen() if _sent(s["reading_id"], prefix)]
    fresh = [s["seen_at"] - _sent(s["reading_id"], prefix)[1] for s in mine]  # type: ignore[index]
    last_seen = max((s["seen_at"] for s in mine), default=k6_end)
    top = max((_sent(s["reading_id"], prefix)[0] for s in mine), default=-1)  # type: ignore[index]
    return {
        "offered_rate_eps": rate,
        "seconds": seconds,
        **{k: v for k, v in figures.items() if k != "load_generator"},
        "freshness_ms": latency_summary(fresh),
        "observed": len(mine),
        "last_reading_online": top >= sent - 1,
        "drain_s": round(max(0.0, last_seen - k6_end), 2),
        "poller": reads,
        "load_generator": figures["load_generator"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rates", default="200,1000", help="offered readings/s (default 200,1000)")
    parser.add_argument("--seconds", type=float, default=20.0, help="seconds per rate (20)")
    parser.add_argument(
        "--paths", default=",".join(PATHS), help="cloudevents (k6 → ingress), kafka (records on the topic)"
    )
    parser.add_argument("--machines", type=int, default=200, help="machines (entities) streamed (200)")
    parser.add_argument("--port-base", type=int, default=DEFAULT_PORT_BASE)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    started = datetime.now(UTC).isoformat(timespec="seconds")
    machine = machine_facts("memory")
    with tempfile.TemporaryDirectory(prefix="faaspipe-stream-bench-") as tmp:
        workdir = Path(tmp)
        functions = workdir / "functions"
        functions.mkdir()
        (functions / "stream_features").symlink_to(REPO_ROOT / "functions" / "stream_features")
        readings = workdir / "readings.json"
        readings.write_text(json.dumps(stream_readings(20_000, args.machines, seed=11)))
        paths = [p for p in args.paths.split(",") if p]
        unknown = set(paths) - set(PATHS)
        if unknown:
            parser.error(f"unknown path(s) {sorted(unknown)}; known: {', '.join(PATHS)}")
        results: dict[str, dict[str, Any]] = {p: {} for p in paths}
        warm: dict[str, Any] = {}
        with bench_stack("memory", args.port_base, str(functions)) as config:
            for path in paths:
                print(f"{path}: warm-up: 50 readings/s for 5 s", flush=True)
                warm[path] = offer(config, readings, args.machines, 50, 5, workdir, path)["freshness_ms"]
                for rate in [int(r) for r in args.rates.split(",") if r]:
                    print(f"{path}: {rate} readings/s for {args.seconds:g} s", flush=True)
                    got = offer(config, readings, args.machines, rate, args.seconds, workdir, path)
                    results[path][str(rate)] = got
                    print(json.dumps({path: {rate: got["freshness_ms"]}}), flush=True)
                    time.sleep(3)
    at_1000 = {p: r.get("1000", {}).get("freshness_ms", {}).get("p99") for p, r in results.items()}
    report = {
        "benchmark": "stream_freshness",
        "started_at": started,
        "machine": machine,
        "method": {
            "load_generator": {
                "cloudevents": "k6 bench/k6/readings.js, constant-arrival-rate, binary-mode sensor.reading CloudEvents",
                "kafka": "kafka-python producer paced open-loop in the bench process (k6 has no Kafka client)",
            },
            "paths": {
                "cloudevents": "k6 POST → ingress → Kafka → trigger → stream-features (contract check, window"
                " in SQLite, Feast push; micro-batches of the deliveries in flight) → Feast online store (SQLite)",
                "kafka": f"producer → {READINGS_TOPIC} → stream-features' own consumer (a poll's records as one"
                " batch: one transaction, one push) → Feast online store (SQLite)",
            },
            "reader": "bench/stream_poller.py: get_online_features of every machine every 20 ms",
            "freshness": "first poll showing the reading id − send time in the id (ms); readings replaced"
            " before a poll saw them are not counted",
            "machines": args.machines,
            "warm_up": {"rate_eps": 50, "seconds": 5, "freshness_ms": warm},
        },
        "targets": TARGETS,
        "met": {
            p: {"freshness_p99_ms_at_1000_per_s": v is not None and v <= 1000.0} for p, v in at_1000.items()
        },
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"results written to {args.out}")
    print(
        json.dumps(
            {
                p: {r: v["freshness_ms"] | {"achieved": v["achieved_rate_eps"]} for r, v in rs.items()}
                for p, rs in results.items()
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
