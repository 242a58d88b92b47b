"""ML chain benchmark: file drop → champion serving; single-row latency and cold start of the
predict function side by side with ``mlflow models serve`` on the same model version
(the autoscaler's reaction to lag is ``bench/autoscale.py``).

    python -m bench.ml_serving [--requests N] [--port-base P] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import urllib3

from bench.broker_throughput import bench_stack, latency_summary, machine_facts
from localdev import pipeline
from localdev.components import VENVS_DIR
from localdev.config import StackConfig
from localdev.processes import free_port
from localdev.topology import REPO_ROOT, load_function

HTTP = urllib3.PoolManager(maxsize=16, retries=False, timeout=urllib3.Timeout(connect=5, read=180))
ROW = {
    "type": "L",
    "air_temperature_k": 298.9,
    "process_temperature_k": 309.1,
    "rotational_speed_rpm": 1410.0,
    "torque_nm": 65.7,
    "tool_wear_min": 191.0,
}


def dataset_rows(count: int, seed: int = 7) -> list[dict[str, Any]]:
    """``count`` random rows of the file the chain trained on, as raw model inputs.

    A realistic request stream: one row repeated would be a drifted stream, and the monitor
    would rightly answer it with a retrain in the middle of the measurement.
    """
    import csv
    import random

    from shared.contracts import get_contract

    contract = get_contract("ai4i")
    rename = {c.source: c.name for c in contract.columns}
    path, _ = pipeline.dataset_file()
    with path.open(newline="") as handle:
        rows = [{rename[k]: v for k, v in raw.items() if k in rename} for raw in csv.DictReader(handle)]
    picked = random.Random(seed).sample(rows, min(count, len(rows)))
    return [
        {n: r[n] if n in contract.categoricals else float(r[n]) for n in contract.raw_inputs} for r in picked
    ]


def time_requests(
    method: str, url: str, bodies: list[bytes], headers: dict[str, str], n: int
) -> dict[str, Any]:
    """``n`` sequential requests, cycling through ``bodies``; latency of each 200."""
    latencies: dict[int, float] = {}
    failures = 0
    for i in range(n):
        started = time.perf_counter()
        resp = HTTP.request(method, url, body=bodies[i % len(bodies)], headers=headers)
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


def predict_scale_to_zero_and_cold_start(config: StackConfig, last_request: float) -> dict[str, Any]:
    """Wait until the autoscaler removes predict's last replica (timed from ``last_request``, to
    set against its stableWindow and cooldownPeriod), then time one request to its first
    response: a replica starts, loads the champion, and the activator forwards the request."""

    def fn_status() -> dict[str, Any]:
        return status(config)["functions"]["predict"]

    trace: list[str] = []  # the autoscaler's reasons while predict idles, when their wording changes
    shapes: list[str] = []

    def at_zero() -> bool:
        current = fn_status()
        line = f"{current['scaling'].get('decision')} | error: {current['scaling'].get('poll_error')}"
        shape = re.sub(r"[0-9.]+", "#", line)
        if not shapes or shapes[-1] != shape:
            shapes.append(shape)
            trace.append(f"+{time.monotonic() - last_request:.1f}s {line}")
        return not current["replicas"]

    wait(at_zero, 300)
    zero_at = time.monotonic()
    time.sleep(1)
    body = json.dumps({"instances": [ROW]}).encode()
    started = time.monotonic()
    resp = HTTP.request(
        "POST",
        config.function_url("predict") + "predict",
        body=body,
        headers={"Content-Type": "application/json"},
    )
    cold_start = time.monotonic() - started
    if resp.status != 200:
        raise RuntimeError(f"cold request failed: {resp.status} {resp.data[:300]!r}")
    scaling = fn_status()["scaling"]
    policy = load_function(REPO_ROOT / "functions" / "predict" / "function.yaml").scaling
    return {
        "configured": {
            "min_replicas": policy.min_replicas,
            "stable_window_s": policy.stable_window_s,
            "cooldown_period_s": policy.cooldown_period_s,
        },
        "scale_to_zero_after_last_request_s": round(zero_at - last_request, 2),
        "autoscaler_trace": trace,
        "cold_start_request_to_response_s": round(cold_start, 2),
        "gateway_held_request_s": scaling["last_cold_start_s"],
        "last_scale_event": scaling["last_scale_event"],
        # a different version means the monitor saw drift and a retrain was promoted while
        # predict idled: its model.promoted delivery is a request and restarts the window
        "version_served_after_idle": json.loads(resp.data).get("model_version"),
    }


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


def mlflow_inputs(config: StackConfig, model: str, version: str, rows: list[dict[str, Any]]) -> list[bytes]:
    """Each row encoded as the registered model's signature expects (one request body each)."""
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
    return [
        json.dumps(
            {
                "dataframe_split": {
                    "columns": meta["features"],
                    "data": [contract.encode(contract.derive(dict(row)))],
                }
            }
        ).encode()
        for row in rows
    ]


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
        rows = dataset_rows(args.requests)
        json_bodies = [json.dumps({"instances": [row]}).encode() for row in rows]
        v2_bodies = [
            json.dumps(
                {
                    "inputs": [
                        {"name": k, "shape": [1], "datatype": "BYTES" if k == "type" else "FP32", "data": [v]}
                        for k, v in row.items()
                    ]
                }
            ).encode()
            for row in rows
        ]
        headers = {"Content-Type": "application/json"}
        time_requests("POST", url + "predict", json_bodies, headers, 50)  # warm-up
        results["faaspipe_predict_json"] = time_requests(
            "POST", url + "predict", json_bodies, headers, args.requests
        )
        results["faaspipe_predict_v2"] = time_requests(
            "POST", f"{url}v2/models/{model}/infer", v2_bodies, headers, args.requests
        )
        predict_last_request = time.monotonic()
        peer = MlflowServe(config, model, version)
        try:
            results["mlflow_serve_startup_s"] = round(peer.wait_ready(), 2)
            bodies = mlflow_inputs(config, model, version, rows)
            invocations = f"http://127.0.0.1:{peer.port}/invocations"
            time_requests("POST", invocations, bodies, headers, 50)
            results["mlflow_serve_invocations"] = time_requests(
                "POST", invocations, bodies, headers, args.requests
            )
        finally:
            peer.stop()
        results["faaspipe_predict_from_zero"] = predict_scale_to_zero_and_cold_start(
            config, predict_last_request
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(json.dumps({k: v for k, v in results.items() if k != "machine"}, indent=2))
    print(f"results written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
