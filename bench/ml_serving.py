"""ML chain benchmark: file drop → champion serving; single-row latency and cold start of the
predict function side by side with ``mlflow models serve`` on the same model version; the
autoscaler's reaction time to lag.

    python -m bench.ml_serving [--requests N] [--port-base P] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import urllib3

from bench.broker_throughput import bench_stack, latency_summary, machine_facts
from events import new_event
from localdev import pipeline
from localdev.components import VENVS_DIR
from localdev.config import StackConfig
from localdev.processes import free_port
from localdev.topology import REPO_ROOT
from shared.cloudevents_io import to_http

HTTP = urllib3.PoolManager(maxsize=16, retries=False, timeout=urllib3.Timeout(connect=5, read=180))
ROW = {
    "type": "L",
    "air_temperature_k": 298.9,
    "process_temperature_k": 309.1,
    "rotational_speed_rpm": 1410.0,
    "torque_nm": 65.7,
    "tool_wear_min": 191.0,
}


def time_requests(method: str, url: str, body: bytes, headers: dict[str, str], n: int) -> dict[str, Any]:
    latencies: dict[int, float] = {}
    failures = 0
    for i in range(n):
        started = time.perf_counter()
        resp = HTTP.request(method, url, body=body, headers=headers)
        if resp.status != 200:
            failures += 1
            continue
        latencies[i] = time.perf_counter() - started
    return {
        "requests": n,
        "failures": failures,
        **{f"{k}_ms": v for k, v in latency_summary(latencies).items()},
    }


def status(config: StackConfig) -> dict[str, Any]:
    return json.loads(HTTP.request("GET", config.url("supervisor") + "/status").data)


def wait(probe, timeout_s: float) -> float:  # type: ignore[no-untyped-def]
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if probe():
            return time.monotonic() - started
        time.sleep(0.05)
    raise TimeoutError(f"not reached in {timeout_s}s")


def predict_cold_start(config: StackConfig, model: str) -> float:
    """Scale predict to zero, then time one request to its first response (model loaded)."""
    HTTP.request("POST", f"{config.url('supervisor')}/scale/predict/0")
    wait(lambda: not status(config)["functions"]["predict"]["replicas"], 120)
    time.sleep(1)
    body = json.dumps({"instances": [ROW]}).encode()
    started = time.monotonic()
    resp = HTTP.request(
        "POST",
        config.function_url("predict") + "predict",
        body=body,
        headers={"Content-Type": "application/json"},
    )
    assert resp.status == 200, resp.data
    return time.monotonic() - started


class MlflowServe:
    """``mlflow models serve`` of the same registered version (the peer)."""

    def __init__(self, config: StackConfig, model: str, version: str) -> None:
        self.port = free_port()
        train_bin = VENVS_DIR / "train" / "bin"  # mlflow execs uvicorn from PATH
        env = {
            **os.environ,
            **config.function_env(),
            "OMP_NUM_THREADS": "1",
            "PATH": f"{train_bin}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        argv = [
            str(VENVS_DIR / "train" / "bin" / "mlflow"),
            "models",
            "serve",
            "-m",
            f"models:/{model}/{version}",
            "--env-manager",
            "local",
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "--workers",
            "1",
        ]
        self.log = open(config.logs_dir / "mlflow-models-serve.log", "wb")  # noqa: SIM115
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            argv, stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT, start_new_session=True
        )

    def wait_ready(self) -> float:
        def ping() -> bool:
            try:
                return HTTP.request("GET", f"http://127.0.0.1:{self.port}/ping", timeout=2).status == 200
            except urllib3.exceptions.HTTPError:
                return False

        wait(ping, 300)
        return time.monotonic() - self.started

    def stop(self) -> None:
        os.killpg(self.proc.pid, 15)
        self.proc.wait(30)
        self.log.close()


def mlflow_input(config: StackConfig, model: str, version: str) -> bytes:
    """The encoded feature row the registered model's signature expects."""
    from minio import Minio

    from shared import layout
    from shared.contracts import get_contract

    s3 = Minio(
        f"127.0.0.1:{config.ports['s3']}",
        access_key=config.access_key,
        secret_key=config.secret_key,
        secure=False,
    )
    meta = json.loads(s3.get_object("models", layout.serving_model(model, version, "meta.json")).read())
    contract = get_contract("ai4i")
    vector = contract.encode(contract.derive(dict(ROW)))
    return json.dumps({"dataframe_split": {"columns": meta["features"], "data": [vector]}}).encode()


def lag_reaction(config: StackConfig, events: int = 2000) -> dict[str, Any]:
    """Post a burst of pings; time until the sample function's second replica is ready."""

    def ready_replicas() -> int:
        fn = status(config)["functions"]["sample"]
        return sum(1 for r in fn["replicas"] if r["state"] == "ready")

    before = ready_replicas()
    pings = [
        new_event(
            "dev.faaspipe.sample.ping.v1", {"message": "burst"}, source="/bench", subject=uuid.uuid4().hex
        )
        for _ in range(events)
    ]

    def send(chunk: list) -> None:  # type: ignore[type-arg]
        for event in chunk:
            headers, body = to_http(event)
            HTTP.request("POST", config.ingress_url, body=body, headers=headers)

    threads = [threading.Thread(target=send, args=(pings[i::8],)) for i in range(8)]
    for t in threads:
        t.start()
    try:
        seconds: float | None = round(wait(lambda: ready_replicas() > before, 60), 2)
    except TimeoutError:
        seconds = None  # the backlog never exceeded lagThreshold: no second replica was needed
    finally:
        for t in threads:
            t.join()
    return {"burst_events": events, "replicas_before": before, "second_replica_ready_s": seconds}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--port-base", type=int, default=24000)
    parser.add_argument("--storage", choices=["s3", "memory"], default="s3")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results" / "ml_serving.json")
    args = parser.parse_args(argv)
    results: dict[str, Any] = {"machine": machine_facts(args.storage), "at": datetime.now(UTC).isoformat()}
    with bench_stack(args.storage, args.port_base, str(REPO_ROOT / "functions")) as config:
        chain = pipeline.run_chain(config)
        if chain is None:
            print("the chain did not produce a champion", file=sys.stderr)
            return 1
        model, version = str(chain["model_name"]), str(chain["version"])
        results["chain"] = chain
        url = config.function_url("predict")
        json_body = json.dumps({"instances": [ROW]}).encode()
        v2_body = json.dumps(
            {
                "inputs": [
                    {"name": k, "shape": [1], "datatype": "BYTES" if k == "type" else "FP32", "data": [v]}
                    for k, v in ROW.items()
                ]
            }
        ).encode()
        headers = {"Content-Type": "application/json"}
        time_requests("POST", url + "predict", json_body, headers, 50)  # warm-up
        results["faaspipe_predict_json"] = time_requests(
            "POST", url + "predict", json_body, headers, args.requests
        )
        results["faaspipe_predict_v2"] = time_requests(
            "POST", f"{url}v2/models/{model}/infer", v2_body, headers, args.requests
        )
        peer = MlflowServe(config, model, version)
        try:
            results["mlflow_serve_startup_s"] = round(peer.wait_ready(), 2)
            body = mlflow_input(config, model, version)
            invocations = f"http://127.0.0.1:{peer.port}/invocations"
            time_requests("POST", invocations, body, headers, 50)
            results["mlflow_serve_invocations"] = time_requests(
                "POST", invocations, body, headers, args.requests
            )
        finally:
            peer.stop()
        results["faaspipe_predict_cold_start_s"] = round(predict_cold_start(config, model), 2)
        results["lag_autoscale"] = lag_reaction(config)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(json.dumps({k: v for k, v in results.items() if k != "machine"}, indent=2))
    print(f"results written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
