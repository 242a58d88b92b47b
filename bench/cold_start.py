"""Predict's return to zero after its last request, then one request from zero to its first
response (a replica starts, loads the champion, the activator forwards the held request)."""

from __future__ import annotations

import json
import re
import time
from typing import Any

import urllib3

from bench.stack import supervisor_status, wait_until
from localdev.config import StackConfig
from shared.topology import REPO_ROOT, load_function

HTTP = urllib3.PoolManager(maxsize=2, retries=False, timeout=urllib3.Timeout(connect=5, read=180))


def predict_scale_to_zero_and_cold_start(
    config: StackConfig, last_request: float, row: dict[str, Any]
) -> dict[str, Any]:
    """Wait until the autoscaler removes predict's last replica (timed from ``last_request``, to
    set against its stableWindow and cooldownPeriod), then time one request to its first
    response: a replica starts, loads the champion, and the activator forwards the request."""

    def fn_status() -> dict[str, Any]:
        return supervisor_status(config)["functions"]["predict"]

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

    wait_until(at_zero, 300)
    zero_at = time.monotonic()
    time.sleep(1)
    body = json.dumps({"instances": [row]}).encode()
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
