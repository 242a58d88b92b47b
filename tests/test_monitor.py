"""monitor: drift windows, alibi-detect checks and performance drift — units and the real stack.

Integration: predictions go through ``POST /predict`` of the served fixture champion, are
logged to Kafka by predict and delivered to monitor, which answers ``drift.detected``.
"""

from __future__ import annotations

import io
import json
import subprocess
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import urllib3

from functions.monitor.performance import PerformanceConfig, evaluate, f1, parse_labels_csv, roc_auc
from functions.monitor.store import LabelledRow, MonitorStore, StoredPrediction
from functions.monitor.windows import Observation, WindowConfig, Windows
from shared import layout
from shared.contracts import get_contract
from tests.conftest import REPO, Stack, wait_until
from tests.fixtures_model import MODEL_NAME, ai4i_rows, promote, publish_models, serving_stack, wait_served
from tests.functions.serve_recorder.client import metric, recorded

CONTRACT = get_contract("ai4i")
DRIFT = "dev.faaspipe.drift.detected.v1"
HTTP = urllib3.PoolManager(maxsize=4, retries=False, timeout=urllib3.Timeout(connect=2, read=60))
WINDOW = 500  # FAASPIPE_DRIFT_WINDOW_SIZE in functions/monitor/function.yaml


# --------------------------------------------------------------------------- units (no stack)


def _obs(i: int) -> Observation:
    return Observation(f"e{i}", datetime(2026, 1, 1, tzinfo=UTC), {"torque_nm": float(i)})


def test_window_closes_when_full_and_starts_afresh() -> None:
    windows = Windows(WindowConfig(size=3, seconds=300, min_size=2), clock=lambda: 0.0)
    key = ("m", "1")
    assert windows.add(key, _obs(1)) is None
    assert windows.add(("m", "2"), _obs(9)) is None  # versions have windows of their own
    assert windows.add(key, _obs(2)) is None
    closed = windows.add(key, _obs(3))
    assert (
        closed is not None
        and closed.reason == "full"
        and [o.event_id for o in closed.observations] == ["e1", "e2", "e3"]
    )
    assert windows.fill() == {("m", "2"): 1}


def test_window_closes_on_time_only_with_enough_rows() -> None:
    now = [0.0]
    windows = Windows(WindowConfig(size=100, seconds=60, min_size=2), clock=lambda: now[0])
    key = ("m", "1")
    windows.add(key, _obs(1))
    now[0] = 61.0
    assert windows.due() == []  # one row is too few, however old
    closed = windows.add(key, _obs(2))
    assert closed is not None and closed.reason == "time" and closed.size == 2
    windows.add(key, _obs(3))
    windows.add(key, _obs(4))
    now[0] = 200.0
    (due,) = windows.due()
    assert due.size == 2
    windows.add(key, _obs(5))
    now[0] = 200.0 + 60 * 12
    (expired,) = windows.due()  # never reached min_size: dropped, not checked
    assert expired.reason == "expired" and expired.size == 1 and windows.fill() == {}


def test_store_dedupes_joins_labels_and_rebuilds(tmp_path: Path) -> None:
    store = MonitorStore(tmp_path / "m.db")

    def prediction(
        event_id: str, request_id: str, entity: str | None, probability: float, at: str
    ) -> StoredPrediction:
        return StoredPrediction(
            event_id, request_id, entity, "m", "1", probability, int(probability >= 0.5), at, {"x": 1}
        )

    assert store.add_prediction(prediction("e1", "r1", "7", 0.9, "2026-01-01T00:00:00+00:00"))
    assert not store.add_prediction(
        prediction("e1", "r1", "7", 0.9, "2026-01-01T00:00:00+00:00")
    )  # redelivery
    assert store.add_prediction(prediction("e2", "r2", "7", 0.2, "2026-01-01T00:01:00+00:00"))
    assert store.add_prediction(prediction("e3", "r3", None, 0.4, "2026-01-01T00:02:00+00:00"))
    store.mark_closed(["e1"])
    assert [p.event_id for p in store.open_predictions()] == ["e2", "e3"]
    touched = store.join_labels(
        [("request_id", "r1", 1), ("udi", "7", 0), ("request_id", "nope", 1)], "labels/a.csv"
    )
    assert touched == {("m", "1")}
    # udi 7 joins on its latest prediction (e2); a second delivery of the same file changes nothing
    store.join_labels([("request_id", "r1", 1), ("udi", "7", 0)], "labels/a.csv")
    rows = store.labelled_window("m", "1", 10)
    assert sorted((r.probability, r.truth) for r in rows) == [(0.2, 0), (0.9, 1)]


def test_labels_csv_and_metrics() -> None:
    labels, skipped = parse_labels_csv(b"request_id,udi,machine_failure\nr1,,1\n,42,0\nr3,,maybe\n,,1\n")
    assert labels == [("request_id", "r1", 1), ("udi", "42", 0)] and skipped == 2
    with pytest.raises(ValueError, match="machine_failure"):
        parse_labels_csv(b"request_id,label\nr1,1\n")
    assert roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert roc_auc([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]) == pytest.approx(0.5)
    assert f1([1, 1, 0, 0], [1, 0, 1, 0]) == pytest.approx(0.5)
    config = PerformanceConfig(window=10, min_labelled=4, tolerance=0.05)
    good = [LabelledRow(p, int(p >= 0.5), t, "t") for p, t in [(0.9, 1), (0.8, 1), (0.2, 0), (0.1, 0)]]
    bad = [LabelledRow(r.probability, r.label, 1 - r.truth, r.predicted_at) for r in good]
    reference = {"roc_auc": 0.98, "f1": 0.8}
    assert evaluate(good, reference, config).degraded_metric is None  # type: ignore[union-attr]
    result = evaluate(bad, reference, config)
    assert result is not None and result.degraded_metric == "roc_auc" and result.roc_auc == 0.0
    assert evaluate(good[:3], reference, config) is None  # too few labelled


def test_alibi_detectors_in_the_drift_venv() -> None:
    """KSDrift/ChiSquareDrift import and run in .venvs/drift; timings printed; drift found on a shift."""
    script = r"""
import json, time
t0 = time.perf_counter()
import alibi_detect.cd
from functions.monitor.drift import FeatureDriftDetector
from shared.contracts import get_contract
from tests.fixtures_model import ai4i_rows
import_s = time.perf_counter() - t0
contract = get_contract("ai4i")
rows = ai4i_rows()
import random
random.seed(1)  # a calm window still alarms ~10% of the time (p_val 0.05, KS family + chi2)
reference = random.sample(rows, 2000)
same = random.sample(rows, 500)
shifted = [{**r, "torque_nm": r["torque_nm"] + 12, "tool_wear_min": r["tool_wear_min"] + 80} for r in same]
t0 = time.perf_counter(); detector = FeatureDriftDetector(contract, reference); fit_s = time.perf_counter() - t0
t0 = time.perf_counter(); calm = detector.check(same); check_s = time.perf_counter() - t0
drift = detector.check(shifted)
print(json.dumps({"import_s": import_s, "fit_s": fit_s, "check_s": check_s, "calm": calm.drifted,
                  "drift": drift.drifted, "p": drift.p_values, "thresholds": drift.thresholds}))
"""
    result = subprocess.run(
        [str(REPO / ".venvs" / "drift" / "bin" / "python"), "-c", script],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    print(
        f"alibi-detect: import {out['import_s']:.1f}s, fit {out['fit_s'] * 1000:.1f}ms, check {out['check_s'] * 1000:.1f}ms"
    )
    assert out["calm"] == []
    assert {"torque_nm", "tool_wear_min"} <= set(out["drift"]), out
    assert out["thresholds"]["torque_nm"] == pytest.approx(0.05 / 8)  # Bonferroni over 8 numeric features


# --------------------------------------------------------------------------- integration


@pytest.fixture(scope="module")
def serving(request: pytest.FixtureRequest) -> Stack:
    return serving_stack(request)


@pytest.fixture(scope="module")
def monitored(serving: Stack) -> str:
    """A fresh champion version, so its drift windows hold only this module's predictions."""
    (published,) = publish_models(serving.config.function_env(), [201])
    promote(serving, published["version"], None)
    wait_served(serving, published["version"])
    return published["version"]


def _sample(seed: int, n: int) -> list[dict[str, Any]]:
    rows = ai4i_rows()
    picks = np.random.default_rng(seed).choice(len(rows), size=n, replace=False)
    return [rows[i] for i in picks]


def _drifted(rows: list[dict[str, Any]], seed: int) -> list[dict[str, Any]]:
    """Worn tools under more load: torque +~12 Nm, tool wear +~80 min (within the contract)."""
    rng = np.random.default_rng(seed)
    torque = np.clip([r["torque_nm"] + 12 + rng.normal(0, 2) for r in rows], 0, 200)
    wear = np.clip([r["tool_wear_min"] + 80 + rng.normal(0, 10) for r in rows], 0, 1000)
    return [
        {**r, "torque_nm": float(t), "tool_wear_min": float(w)}
        for r, t, w in zip(rows, torque, wear, strict=True)
    ]


def _predict(stack: Stack, rows: list[dict[str, Any]], request_id: str | None = None) -> dict[str, Any]:
    instances = [{k: r[k] for k in CONTRACT.raw_inputs} for r in rows]
    headers = {"Content-Type": "application/json", **({"X-Request-Id": request_id} if request_id else {})}
    resp = HTTP.request(
        "POST",
        stack.config.function_url("predict") + "predict",
        body=json.dumps({"instances": instances}).encode(),
        headers=headers,
    )
    assert resp.status == 200, resp.data
    return json.loads(resp.data)


def _stream(stack: Stack, rows: list[dict[str, Any]], version: str, batch: int = 50) -> None:
    for start in range(0, len(rows), batch):
        assert _predict(stack, rows[start : start + batch])["model_version"] == version


def _checks(stack: Stack, version: str, kind: str, outcome: str) -> float:
    return metric(
        stack,
        "monitor",
        "faaspipe_monitor_drift_checks_total",
        model=MODEL_NAME,
        version=version,
        kind=kind,
        outcome=outcome,
    )


@pytest.mark.integration
def test_feature_drift_detected_on_a_drifted_stream_only(serving: Stack, monitored: str) -> None:
    version = monitored
    subject = f"{MODEL_NAME}/{version}"
    before = _checks(serving, version, "feature", "no_drift")

    _stream(serving, _sample(7, WINDOW), version)
    wait_until(
        lambda: _checks(serving, version, "feature", "no_drift") > before,
        120,
        interval=0.5,
        what="the monitor to check the undrifted window",
    )
    assert recorded(serving, DRIFT, subject=subject) == [], "an undrifted window must not raise drift"

    _stream(serving, _drifted(_sample(8, WINDOW), 9), version)
    (event,) = wait_until(
        lambda: recorded(serving, DRIFT, subject=subject), 120, interval=0.5, what="drift.detected"
    )
    data = event["data"]
    assert data["kind"] == "feature" and data["model_name"] == MODEL_NAME and data["model_version"] == version
    assert data["detector"] == "ks+chisquare" and data["threshold"] == 0.05
    assert {"torque_nm", "tool_wear_min"} <= set(data["drifted_features"]), data
    assert set(data["p_values"]) == set(CONTRACT.model_features)
    assert data["p_values"]["torque_nm"] < 0.05 / 8 and data["p_values"]["tool_wear_min"] < 0.05 / 8
    assert "type" not in data["drifted_features"]
    assert data["window"]["size"] == WINDOW and data["window"]["start"] <= data["window"]["end"]
    assert event["source"] == "/faaspipe/functions/monitor"


@pytest.mark.integration
def test_performance_drift_from_a_labels_file(serving: Stack, monitored: str) -> None:
    """Labels that contradict the predictions (truth flipped) → drift.detected kind performance."""
    version = monitored
    rows = _sample(11, 200)
    tag = uuid.uuid4().hex[:8]
    request_ids = [f"perf-{tag}-{b}" for b in range(4)]
    before = metric(serving, "monitor", "faaspipe_monitor_predictions_total", outcome="new")
    for b, request_id in enumerate(request_ids):
        _predict(serving, rows[b * 50 : (b + 1) * 50], request_id)
    wait_until(
        lambda: (
            metric(serving, "monitor", "faaspipe_monitor_predictions_total", outcome="new") >= before + 200
        ),
        120,
        interval=0.5,
        what="the monitor to store the 200 predictions",
    )
    lines = ["request_id,machine_failure"]
    lines += [f"{request_ids[i // 50]}-{i % 50},{1 - r['machine_failure']}" for i, r in enumerate(rows)]
    body = ("\n".join(lines) + "\n").encode()
    serving.s3().put_object(
        layout.LANDING, f"labels/{tag}.csv", io.BytesIO(body), len(body), content_type="text/csv"
    )

    def performance_drift() -> list[dict[str, Any]]:
        return [
            r
            for r in recorded(serving, DRIFT, subject=f"{MODEL_NAME}/{version}")
            if r["data"]["kind"] == "performance"
        ]

    (event,) = wait_until(performance_drift, 120, interval=0.5, what="drift.detected (performance)")
    data = event["data"]
    assert data["metric"]["name"] == "roc_auc" and data["metric"]["value"] < 0.5 < data["metric"]["reference"]
    assert data["p_values"] == {} and data["drifted_features"] == [] and data["window"]["size"] == 200
