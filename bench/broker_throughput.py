"""Broker benchmark: faaspipe's event path against raw Kafka on the same Tansu broker.

Starts a dedicated stack (only the ``noop`` function of ``bench/functions``), then measures
1. faaspipe: HTTP POST to the ingress (binary mode, C client threads) → Kafka → trigger
   dispatcher → HTTP → noop function, which records the arrival time of every event;
2. kafka pipelined: one kafka-python producer (linger_ms=1, acks=all) sending without
   waiting → a consumer-group consumer in a thread, on a fresh topic with as many partitions;
3. kafka send().get(): the same, but C threads each wait for every ack, as the ingress
   does per request.
Each run sends the same number of records of the same size (the ingress's Kafka record:
value + CloudEvent headers), after a warm-up that is not counted. Results are printed and
written as JSON; the exit status is non-zero if any event was lost.

    python -m bench.broker_throughput [--events N] [--concurrency C] [--storage memory|s3]
                                      [--port-base P] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import kafka
import urllib3
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic

from bench.functions.noop.handler import receipts_path
from localdev.config import StackConfig
from localdev.processes import port_free
from localdev.topology import REPO_ROOT
from shared import tracing
from shared.cloudevents_io import CloudEvent, to_kafka

PING = "dev.faaspipe.sample.ping.v1"
SOURCE = "/faaspipe/bench/broker-throughput"
WARMUP_EVENTS = 100
# Below Linux's ephemeral range (32768-60999): a base inside it collides with the local ends
# of other programs' connections. Main stack 17000, tests 27000.
DEFAULT_PORT_BASE = 23000
DEFAULT_OUT = REPO_ROOT / "bench" / "results" / "broker_throughput.json"
Latencies = dict[str, float]  # event id → seconds from send to receipt


# --- helpers ----------------------------------------------------------------------------
def latency_summary(latencies: Latencies) -> dict[str, float | None]:
    """p50/p90/p99/max in milliseconds (nearest rank)."""
    values = sorted(latencies.values())
    if not values:
        return {"p50": None, "p90": None, "p99": None, "max": None}

    def rank(q: float) -> float:
        return round(values[max(0, math.ceil(q * len(values)) - 1)] * 1000, 2)

    return {"p50": rank(0.50), "p90": rank(0.90), "p99": rank(0.99), "max": round(values[-1] * 1000, 2)}


def rate(count: int, seconds: float) -> float:
    return round(count / seconds, 1) if seconds > 0 else 0.0


def run_threads(count: int, concurrency: int, work: Callable[[int], None]) -> None:
    """Call ``work(i)`` for i in 0..count-1 from ``concurrency`` threads; re-raise the first error."""
    indexes = iter(range(count))
    lock = threading.Lock()
    errors: list[BaseException] = []

    def loop() -> None:
        while not errors:
            with lock:
                i = next(indexes, None)
            if i is None:
                return
            try:
                work(i)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
                errors.append(exc)

    threads = [threading.Thread(target=loop, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def delivery_timeout(events: int) -> float:
    return max(60.0, events / 20)


def reference_record_bytes() -> int:
    """Size of the Kafka record the ingress writes for one benchmark ping (value + headers)."""
    event = CloudEvent(
        {
            "id": f"m-{uuid.uuid4().hex[:8]}-{0:06d}",
            "source": SOURCE,
            "type": PING,
            "datacontenttype": "application/json",
            "traceparent": tracing.new_traceparent(),
        },
        {"message": f"t={time.time():.6f}"},
    )
    _key, headers, value = to_kafka(event)
    return len(value) + sum(len(k) + len(v) for k, v in headers)


# --- the stack --------------------------------------------------------------------------
def wait_for_ports(config: StackConfig, timeout_s: float = 90.0) -> None:
    """Wait for the stack's ports to be free.

    Ports above 32768 are also handed out as the local end of outgoing connections, and
    stay taken while such a connection is in TIME_WAIT (60 s): wait that out, don't fail.
    """
    deadline = time.monotonic() + timeout_s
    while busy := [f"{name} ({port})" for name, port in config.ports.items() if not port_free(port)]:
        if time.monotonic() > deadline:
            return  # `faaspipe up` reports them
        print(f"waiting for ports in use: {', '.join(busy)}", file=sys.stderr, flush=True)
        time.sleep(5)


@contextmanager
def bench_stack(storage: str, port_base: int, function_dirs: str | None = None) -> Iterator[StackConfig]:
    """A dedicated stack in a temporary state dir; always stopped, state kept on failure."""
    state_dir = Path(tempfile.mkdtemp(prefix="faaspipe-bench-"))
    env = {
        **os.environ,
        "FAASPIPE_STATE_DIR": str(state_dir),
        "FAASPIPE_PORT_BASE": str(port_base),
        "FAASPIPE_FUNCTION_DIRS": function_dirs or str(REPO_ROOT / "bench" / "functions"),
        "FAASPIPE_KAFKA_STORAGE": storage,
        "PYTHONPATH": str(REPO_ROOT),
    }

    def cli(command: str) -> int:
        return subprocess.call([sys.executable, "-m", "localdev.cli", command], env=env, cwd=REPO_ROOT)

    wait_for_ports(StackConfig.from_env(env))
    ok = False
    try:
        if cli("up") != 0:
            raise RuntimeError(f"`faaspipe up` failed; logs in {state_dir / 'logs'}")
        yield StackConfig.from_env(env)
        ok = True
    finally:
        cli("down")
        if ok and not os.environ.get("FAASPIPE_BENCH_KEEP_STATE"):
            shutil.rmtree(state_dir, ignore_errors=True)
        else:
            print(f"stack state kept for inspection: {state_dir}", file=sys.stderr)


# --- 1. faaspipe: ingress → Kafka → dispatcher → noop function -------------------------------
def read_receipts(
    path: Path, prefix: str, expected: int, timeout_s: float
) -> tuple[Latencies, float | None, int]:
    """Wait until the noop function recorded ``expected`` events with ids starting ``prefix``.

    Returns (latencies by id, time of the last receipt, duplicate deliveries); at the
    timeout, with what arrived so far.
    """
    latencies: Latencies = {}
    last_receipt: float | None = None
    duplicates = 0
    offset = 0
    deadline = time.monotonic() + timeout_s
    while len(latencies) < expected and time.monotonic() < deadline:
        if path.exists():
            with path.open("rb") as f:
                f.seek(offset)
                chunk = f.read()
            complete = chunk[: chunk.rfind(b"\n") + 1]
            offset += len(complete)
            for line in complete.decode().splitlines():
                event_id, message, received = line.split(" ")
                if not event_id.startswith(prefix):
                    continue
                if event_id in latencies:
                    duplicates += 1
                latencies[event_id] = float(received) - float(message.removeprefix("t="))
                last_receipt = max(last_receipt or 0.0, float(received))
        time.sleep(0.05)
    return latencies, last_receipt, duplicates


def post_pings(
    http: urllib3.PoolManager, url: str, prefix: str, count: int, concurrency: int
) -> tuple[float, float]:
    """POST ``count`` pings (binary mode); returns (first send, last 202) as time.time()."""
    accepted: list[float] = []
    first_send = time.time()

    def post(i: int) -> None:
        sent = time.time()
        headers = {
            "ce-specversion": "1.0",
            "ce-id": f"{prefix}{i:06d}",
            "ce-source": SOURCE,
            "ce-type": PING,
            "content-type": "application/json",
        }
        body = json.dumps({"message": f"t={sent:.6f}"}).encode()
        resp = http.request("POST", url, body=body, headers=headers)
        if resp.status != 202:
            raise RuntimeError(f"ingress answered {resp.status}: {resp.data[:300]!r}")
        accepted.append(time.time())

    run_threads(count, concurrency, post)
    return first_send, max(accepted)


def bench_faaspipe(config: StackConfig, events: int, concurrency: int) -> dict[str, Any]:
    http = urllib3.PoolManager(maxsize=concurrency, retries=False, timeout=urllib3.Timeout(30))
    receipts = receipts_path(config.state_dir)
    run = uuid.uuid4().hex[:8]
    warm = f"w-{run}-"
    post_pings(http, config.ingress_url, warm, WARMUP_EVENTS, concurrency)
    got, _, _ = read_receipts(receipts, warm, WARMUP_EVENTS, delivery_timeout(WARMUP_EVENTS))
    if len(got) < WARMUP_EVENTS:
        raise RuntimeError(f"warm-up: only {len(got)}/{WARMUP_EVENTS} events reached the noop function")

    measured = f"m-{run}-"
    first_send, last_accept = post_pings(http, config.ingress_url, measured, events, concurrency)
    latencies, last_receipt, duplicates = read_receipts(receipts, measured, events, delivery_timeout(events))
    return {
        "path": "HTTP POST → ingress → Kafka (acks=all) → trigger dispatcher → gateway → noop function",
        "expected": events,
        "delivered": len(latencies),
        "duplicates": duplicates,
        "ingress_accept_rate_eps": rate(events, last_accept - first_send),
        "end_to_end_throughput_eps": rate(len(latencies), (last_receipt or first_send) - first_send),
        "latency_ms": latency_summary(latencies),
    }


# --- 2./3. raw Kafka peers -----------------------------------------------------------------
class PeerConsumer(threading.Thread):
    """A consumer-group member reading a topic from the earliest offset, timing every record."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        super().__init__(name=f"consume-{topic}", daemon=True)
        self.consumer = KafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=f"{topic}.consumer",
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            session_timeout_ms=6000,
            heartbeat_interval_ms=1000,
        )
        self.consumer.subscribe([topic])
        self.assigned = threading.Event()
        self.stopping = threading.Event()
        self.latencies: Latencies = {}
        self.received_at: dict[str, float] = {}
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stopping.is_set():
                batches = self.consumer.poll(timeout_ms=100)
                now = time.time()
                if self.consumer.assignment():
                    self.assigned.set()
                for records in batches.values():
                    for record in records:
                        record_id, sent, _pad = record.value.split(b" ", 2)
                        key = record_id.decode()
                        self.latencies[key] = now - float(sent)
                        self.received_at[key] = now
        except BaseException as exc:  # noqa: BLE001 - reported by the caller
            self.error = exc
        finally:
            self.consumer.close(autocommit=False)

    def wait_for(self, prefix: str, expected: int, timeout_s: float) -> Latencies:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.error is None:
            got = {k: v for k, v in list(self.latencies.items()) if k.startswith(prefix)}
            if len(got) >= expected:
                return got
            time.sleep(0.05)
        if self.error is not None:
            raise RuntimeError(f"peer consumer failed: {self.error}") from self.error
        return {k: v for k, v in list(self.latencies.items()) if k.startswith(prefix)}


def peer_value(record_id: str, size: int) -> bytes:
    return f"{record_id} {time.time():.6f} ".encode().ljust(size, b"x")


def bench_kafka(
    bootstrap: str, events: int, partitions: int, size: int, concurrency: int | None
) -> dict[str, Any]:
    """Pipelined producer (``concurrency=None``) or C threads waiting for each ack."""
    topic = f"bench.peer.{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000)
    try:
        admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        admin.close()
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=1, retries=5)
    consumer = PeerConsumer(bootstrap, topic)
    consumer.start()
    try:
        if not consumer.assigned.wait(60):
            raise RuntimeError(f"peer consumer got no partitions of {topic} within 60 s")

        def send(prefix: str, count: int) -> tuple[float, float]:
            first_send = time.time()
            if concurrency is None:
                for i in range(count):
                    producer.send(topic, value=peer_value(f"{prefix}{i:06d}", size))
                producer.flush()
            else:
                run_threads(
                    count,
                    concurrency,
                    lambda i: producer.send(topic, value=peer_value(f"{prefix}{i:06d}", size)).get(10),
                )
            return first_send, time.time()

        send("w-", WARMUP_EVENTS)
        if len(consumer.wait_for("w-", WARMUP_EVENTS, delivery_timeout(WARMUP_EVENTS))) < WARMUP_EVENTS:
            raise RuntimeError(f"warm-up: the peer consumer did not receive {WARMUP_EVENTS} records")
        first_send, last_ack = send("m-", events)
        latencies = consumer.wait_for("m-", events, delivery_timeout(events))
        last_receipt = max((consumer.received_at[k] for k in latencies), default=first_send)
    finally:
        consumer.stopping.set()
        consumer.join(10)
        producer.close(5)
    how = "one thread, no wait per send" if concurrency is None else f"{concurrency} threads, send().get()"
    return {
        "path": f"kafka-python producer ({how}, linger_ms=1, acks=all) → group consumer in a thread",
        "topic": topic,
        "consumer": "kafka-python defaults (fetch_max_wait_ms=500; the dispatcher uses 20), no commits",
        "expected": events,
        "delivered": len(latencies),
        "produce_rate_eps": rate(events, last_ack - first_send),
        "end_to_end_throughput_eps": rate(len(latencies), last_receipt - first_send),
        "latency_ms": latency_summary(latencies),
    }


# --- report -----------------------------------------------------------------------------------
def machine_facts(storage: str) -> dict[str, Any]:
    from localdev.components import tansu_binary

    try:
        tansu = subprocess.run(
            [str(tansu_binary()), "--version"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError, ImportError) as exc:
        tansu = f"unknown ({exc})"
    return {
        "nproc": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "kafka_python": kafka.__version__,
        "tansu": tansu,
        "kafka_storage": storage,
    }


def print_table(results: dict[str, dict[str, Any]]) -> None:
    header = f"{'':<22}{'send ev/s':>10}{'e2e ev/s':>10}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'max ms':>9}"
    print("\n" + header + f"{'delivered':>14}")
    for name, block in results.items():
        send_rate = block.get("ingress_accept_rate_eps", block.get("produce_rate_eps"))
        lat = block["latency_ms"]
        cells = "".join(f"{'-' if lat[q] is None else lat[q]:>9}" for q in ("p50", "p90", "p99", "max"))
        delivered = f"{block['delivered']}/{block['expected']}"
        print(f"{name:<22}{send_rate:>10}{block['end_to_end_throughput_eps']:>10}{cells}{delivered:>14}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=2000, help="measured events per run (default 2000)")
    parser.add_argument("--concurrency", type=int, default=8, help="client threads (default 8)")
    parser.add_argument("--storage", choices=["memory", "s3"], default="memory", help="Tansu storage engine")
    parser.add_argument(
        "--port-base",
        type=int,
        default=DEFAULT_PORT_BASE,
        help=f"port base of the bench stack ({DEFAULT_PORT_BASE})",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON results (default {DEFAULT_OUT})")
    args = parser.parse_args(argv)

    started = datetime.now(UTC).isoformat(timespec="seconds")
    size = reference_record_bytes()
    with bench_stack(args.storage, args.port_base) as config:
        bootstrap, partitions = config.kafka_bootstrap, config.broker_partitions
        results = {"faaspipe": bench_faaspipe(config, args.events, args.concurrency)}
        results["kafka pipelined"] = bench_kafka(bootstrap, args.events, partitions, size, None)
        results[f"kafka send().get() x{args.concurrency}"] = bench_kafka(
            bootstrap, args.events, partitions, size, args.concurrency
        )
    report = {
        "benchmark": "broker_throughput",
        "started_at": started,
        "machine": machine_facts(args.storage),
        "parameters": {
            "events": args.events,
            "warmup_events": WARMUP_EVENTS,
            "concurrency": args.concurrency,
            "partitions": partitions,
            "record_bytes": size,
            "event_type": PING,
        },
        "results": results,
    }
    print_table(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nresults written to {args.out}")
    lost = {
        name: b["expected"] - b["delivered"] for name, b in results.items() if b["delivered"] < b["expected"]
    }
    if lost:
        print(f"EVENTS LOST (not delivered within the timeout): {lost}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
