"""monitor: drift windows, alibi-detect checks and performance drift — units and the real stack.

Integration: predictions go through ``POST /predict`` of the served fixture champion, are
logged to Kafka by predict and delivered to monitor, which answers ``drift.detected``.
"""

from __future__ import annotations

import io
import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import urllib3

from functions.monitor.performance import PerformanceConfig, evaluate, f1, parse_labels_csv, roc_auc
from functions.monitor.store import LabelledRow, MonitorStore, StoredPrediction
from functions.monitor.windows import ClosedWindow, WindowConfig, Windows
from shared import layout
from shared.contracts import get_contract
from tests.conftest import REPO, Stack, wait_until
from tests.fixtures_model import MODEL_NAME, ai4i_rows, promote, publish_models, serving_stack, wait_served
from tests.functions.serve_recorder.client import recorded
from tests.services import POSTGRES_HOST, POSTGRES_PORT, fresh_database, postgres_user

CONTRACT = get_contract("ai4i")
DRIFT = "dev.faaspipe.drift.detected.v1"
HTTP = urllib3.PoolManager(maxsize=4, retries=False, timeout=urllib3.Timeout(connect=2, read=60))
WINDOW = 500  # FAASPIPE_DRIFT_WINDOW_SIZE in functions/monitor/function.yaml


# --------------------------------------------------------------------------- units (no stack)


def _prediction(i: int, version: str = "1") -> StoredPrediction:
    return StoredPrediction(
        f"e{i}", f"r{i}", None, "m", version, 0.5, 1, "2026-01-01T00:00:00+00:00", {"torque_nm": float(i)}
    )


def _windows(tmp_path: Path, config: WindowConfig, now: list[float]) -> Windows:
    return Windows(config, MonitorStore(tmp_path / "m.db"), clock=lambda: now[0])


def _add(windows: Windows, i: int, now: list[float], version: str = "1") -> ClosedWindow | None:
    assert windows.store.add_prediction(_prediction(i, version), stored_at=now[0])
    return windows.after_insert(("m", version))


def test_window_closes_when_full_and_starts_afresh(tmp_path: Path) -> None:
    now = [0.0]
    windows = _windows(tmp_path, WindowConfig(size=3, seconds=300, min_size=2), now)
    assert _add(windows, 1, now) is None
    assert _add(windows, 9, now, version="2") is None  # versions have windows of their own
    assert _add(windows, 2, now) is None
    closed = _add(windows, 3, now)
    assert (
        closed is not None
        and closed.reason == "full"
        and [o.event_id for o in closed.observations] == ["e1", "e2", "e3"]
        and closed.observations[0].inputs == {"torque_nm": 1.0}
    )
    assert windows.fill() == {("m", "2"): 1}


def test_window_closes_on_time_only_with_enough_rows(tmp_path: Path) -> None:
    now = [0.0]
    windows = _windows(tmp_path, WindowConfig(size=100, seconds=60, min_size=2), now)
    _add(windows, 1, now)
    now[0] = 61.0
    assert windows.due() == []  # one row is too few, however old
    closed = _add(windows, 2, now)
    assert closed is not None and closed.reason == "time" and closed.size == 2
    _add(windows, 3, now)
    _add(windows, 4, now)
    now[0] = 200.0
    (due,) = windows.due()
    assert due.size == 2
    _add(windows, 5, now)
    now[0] = 200.0 + 60 * 12
    (expired,) = windows.due()  # never reached min_size: dropped, not checked
    assert expired.reason == "expired" and expired.size == 1 and windows.fill() == {}


def test_two_replicas_share_windows_and_each_window_is_claimed_once(store_location: Path | str) -> None:
    """Two monitor replicas on one store (issue 10: no singleton): the predictions delivered to
    either fill one window per model version, and racing claims give each row to one window."""
    import threading

    config = WindowConfig(size=10, seconds=300, min_size=5)
    replicas = [Windows(config, MonitorStore(store_location)) for _ in range(2)]
    closed: list[ClosedWindow] = []
    lock = threading.Lock()

    def deliver(replica: Windows, ids: range) -> None:
        for i in ids:
            assert replica.store.add_prediction(_prediction(i))
            window = replica.after_insert(("m", "1"))
            if window is not None:
                with lock:
                    closed.append(window)

    threads = [threading.Thread(target=deliver, args=(r, range(k, 200, 2))) for k, r in enumerate(replicas)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    claimed = [o.event_id for w in closed for o in w.observations]
    assert len(claimed) == len(set(claimed)) == 200 and all(w.size == 10 for w in closed)
    assert {r.store.open_counts().get(("m", "1"), (0, 0))[0] for r in replicas} == {0}
    for r in replicas:
        r.store.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_location(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path | str]:
    """Where a MonitorStore lives: localdev's SQLite file, or the cluster's PostgreSQL."""
    if request.param == "sqlite":
        yield tmp_path / "m.db"
        return
    user, problem = postgres_user()
    if user is None:
        pytest.skip(f"the monitor store on PostgreSQL: {problem}")
    with fresh_database(user) as name:
        yield f"postgresql://{user}@{POSTGRES_HOST}:{POSTGRES_PORT}/{name}"


def test_store_dedupes_joins_labels_and_rebuilds(store_location: Path | str) -> None:
    store = MonitorStore(store_location)

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
    claimed = store.claim_window(("m", "1"), WindowConfig(size=1, seconds=300, min_size=1), 0.0)
    assert claimed is not None and [o.event_id for o in claimed.observations] == ["e1"]
    assert [p.event_id for p in store.open_predictions()] == ["e2", "e3"]
    touched = store.join_labels(
        [("request_id", "r1", 1), ("udi", "7", 0), ("request_id", "nope", 1)], "labels/a.csv"
    )
    assert touched == {("m", "1")}
    # udi 7 joins on its latest prediction (e2); a second delivery of the same file changes nothing
    store.join_labels([("request_id", "r1", 1), ("udi", "7", 0)], "labels/a.csv")
    rows = store.labelled_window("m", "1", 10)
    assert sorted((r.probability, r.truth) for r in rows) == [(0.2, 0), (0.9, 1)]
    # a second replica (or a restarted pod) on the same store sees the same rows
    other = MonitorStore(store_location)
    assert [p.event_id for p in other.open_predictions()] == ["e2", "e3"]
    assert not other.add_prediction(prediction("e2", "r2", "7", 0.2, "2026-01-01T00:01:00+00:00"))
    assert other.record_rollout_decision("ro1", "promote", "t") and not store.record_rollout_decision(
        "ro1", "rollback", "t"
    )
    assert store.rollout_decision("ro1") == ("promote", "t")
    other.close()
    store.close()


def test_pending_labels_expire_after_their_retention(store_location: Path | str) -> None:
    store = MonitorStore(store_location, pending_label_days=1.0)
    assert store.join_label_event([("never", 1)], "event:/t#old", now=1_000.0) == (set(), ["never"])
    assert store.join_label_event([("recent", 0)], "event:/t#new", now=1_000.0 + 86_000.0)[1] == ["recent"]
    assert store.pending_labels() == {"never": 1, "recent": 0}
    # a day and a bit after the first: it goes, the younger one stays
    store.join_label_event([], "event:/t#later", now=1_000.0 + 86_500.0)
    assert store.pending_labels() == {"recent": 0}
    store.close()


def test_label_events_join_by_request_id_and_keep_unknown_ids_for_a_late_join(
    store_location: Path | str,
) -> None:
    store = MonitorStore(store_location)
    at = "2026-01-01T00:00:00+00:00"
    assert store.add_prediction(StoredPrediction("e1", "r1", None, "m", "1", 0.9, 1, at, {"x": 1}))
    touched, pending = store.join_label_event([("r1", 1), ("late", 0)], "event:/t#1")
    assert (touched, pending) == ({("m", "1")}, ["late"])
    assert store.pending_labels() == {"late": 0}
    assert [r.truth for r in store.labelled_rows("event:/t#1")] == [1]
    # the same event again (a redelivery past the runtime's dedupe): the same rows, no double count
    assert store.join_label_event([("r1", 1), ("late", 0)], "event:/t#1") == ({("m", "1")}, ["late"])
    assert len(store.labelled_window("m", "1", 10)) == 1
    # the prediction arrives; the next label event (another replica, same store) takes the pending
    # label exactly once, into its own rows
    assert store.add_prediction(StoredPrediction("e2", "late", None, "m", "1", 0.2, 0, at, {"x": 2}))
    other = MonitorStore(store_location)
    assert other.join_label_event([("r1", 0)], "event:/t#2") == ({("m", "1")}, [])
    assert store.join_label_event([("r9", 1)], "event:/t#3") == (set(), ["r9"])
    assert other.pending_labels() == {"r9": 1}
    rows = other.labelled_rows("event:/t#2")
    assert sorted((r.inputs["x"], r.truth) for r in rows) == [(1, 0), (2, 0)]
    assert store.labelled_rows("event:/t#3") == []
    other.close()
    store.close()


def test_a_label_outside_the_contract_domain_rejects_the_whole_event(tmp_path: Path) -> None:
    from events import LabelRecorded
    from functions.monitor.handler import Monitor
    from shared.errors import EventRejected

    monitor = Monitor.__new__(Monitor)  # only the contract and the store: no S3 is reached
    monitor.contract = CONTRACT
    monitor.store = MonitorStore(tmp_path / "m.db")
    assert monitor.label_domain() == (0, 1)
    event = LabelRecorded(
        labels=[{"request_id": "r1", "truth": 1}, {"request_id": "r2", "truth": 7}]
    ).to_event(source="/tests", id="bad-1")
    with pytest.raises(EventRejected, match=r"label domain \[0, 1\].*'r2', 7.*nothing applied"):
        monitor.on_label_event(event)
    assert monitor.store.pending_labels() == {} and monitor.store.labelled_rows("event:/tests#bad-1") == []
    monitor.store.close()


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


def _stream(
    stack: Stack, rows: list[dict[str, Any]], version: str, request_prefix: str, batch: int = 50
) -> None:
    for start in range(0, len(rows), batch):
        answer = _predict(stack, rows[start : start + batch], f"{request_prefix}{start}")
        assert answer["model_version"] == version


def _stored(stack: Stack, request_prefix: str, closed: bool | None = None) -> int:
    """Predictions the monitor stored whose request id starts with ``request_prefix`` (in a
    closed window only, or open only). Read from its store, which every monitor replica
    shares: a replica's own metrics would count only what was delivered to it."""
    from shared.sqldb import connect

    db = connect(stack.env.get("FAASPIPE_DATABASE_URL") or stack.state_dir / "monitor" / "monitor.db")
    try:
        where = "" if closed is None else f" AND in_closed_window = {int(closed)}"
        rows, _ = db.execute(
            f"SELECT COUNT(*) FROM monitor_predictions WHERE request_id LIKE ?{where}",  # noqa: S608
            (request_prefix + "%",),
        )
        return int(rows[0][0])
    finally:
        db.close()


@pytest.mark.integration
def test_feature_drift_detected_on_a_drifted_stream_only(serving: Stack, monitored: str) -> None:
    version = monitored
    subject = f"{MODEL_NAME}/{version}"
    tag = uuid.uuid4().hex[:8]
    _stream(serving, _sample(7, WINDOW), version, request_prefix=f"calm-{tag}-")
    wait_until(
        lambda: _stored(serving, f"calm-{tag}-", closed=True) > 0,
        120,
        interval=0.5,
        what="the monitor to close the undrifted window",
    )
    assert recorded(serving, DRIFT, subject=subject) == [], "an undrifted window must not raise drift"

    _stream(serving, _drifted(_sample(8, WINDOW), 9), version, request_prefix=f"drifted-{tag}-")
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
    for b, request_id in enumerate(request_ids):
        _predict(serving, rows[b * 50 : (b + 1) * 50], request_id)
    wait_until(
        lambda: _stored(serving, f"perf-{tag}-") == 200,
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


def _production_file(stack: Stack, event_source: str, event_id: str) -> str | None:
    """The production file a label event's rows were written to (its key names the event)."""
    from functions.monitor.handler import NAMESPACE

    digest = uuid.uuid5(NAMESPACE, f"labels/{event_source}/{event_id}").hex[:12]
    prefix = f"{layout.production_prefix(CONTRACT.landing_prefix)}events-{digest}-"
    keys = [str(o.object_name) for o in stack.s3().list_objects(layout.LANDING, prefix=prefix)]
    return keys[0] if keys else None


def _csv_rows(stack: Stack, key: str) -> list[dict[str, str]]:
    import csv

    return list(csv.DictReader(io.StringIO(_raw(stack, key).decode())))


@pytest.mark.integration
def test_labels_posted_as_events_become_production_data(serving: Stack, monitored: str) -> None:
    """label.recorded events join the prediction log by request id into a production file that
    ingest validates; a label before its prediction waits and joins with a later event; a truth
    outside the contract's domain is dead-lettered with the reason."""
    from events import LabelRecorded
    from functions.monitor import production

    rows = _sample(21, 4)
    tag = uuid.uuid4().hex[:8]
    _predict(serving, rows[:3], f"lab-{tag}-a")
    wait_until(lambda: _stored(serving, f"lab-{tag}-a") == 3, 60, interval=0.5, what="3 stored predictions")
    source = "/tests/test_monitor"
    truth = {f"lab-{tag}-a-{i}": int(r["machine_failure"]) for i, r in enumerate(rows[:3])}
    first = LabelRecorded(
        labels=[{"request_id": k, "truth": v} for k, v in truth.items()]
        + [{"request_id": f"lab-{tag}-b", "truth": 1}]  # its prediction is not logged yet
    ).to_event(source=source, id=f"lab-{tag}-1")
    assert serving.post_event(first).status == 202
    key = wait_until(lambda: _production_file(serving, source, first.get_id()), 60, what="production file 1")
    written = _csv_rows(serving, key)
    assert sorted(r["Machine failure"] for r in written) == sorted(str(v) for v in truth.values())
    assert sorted(float(r["Torque [Nm]"]) for r in written) == sorted(float(r["torque_nm"]) for r in rows[:3])
    # validated by ingest like any file: a production dataset version named after its bytes
    file = production.ProductionFile(CONTRACT.name, key, production.dataset_version(_raw(serving, key)), 3)
    assert wait_until(lambda: production.ingest_outcome(serving.s3(), file), 120, what="ingest") == "ingested"

    _predict(serving, rows[3:], f"lab-{tag}-b")  # one instance: logged under the request id itself
    wait_until(lambda: _stored(serving, f"lab-{tag}-b") == 1, 60, interval=0.5, what="the late prediction")
    second = LabelRecorded(labels=[{"request_id": f"lab-{tag}-a-0", "truth": 1}]).to_event(
        source=source, id=f"lab-{tag}-2"
    )
    assert serving.post_event(second).status == 202
    key2 = wait_until(
        lambda: _production_file(serving, source, second.get_id()), 60, what="production file 2"
    )
    late = _csv_rows(serving, key2)
    assert sorted(r["Machine failure"] for r in late) == ["1", "1"]  # a-0 relabelled, b joined late
    assert sorted(float(r["Torque [Nm]"]) for r in late) == sorted(
        float(rows[i]["torque_nm"]) for i in (0, 3)
    )

    bad = LabelRecorded(labels=[{"request_id": f"lab-{tag}-a-1", "truth": 7}]).to_event(
        source=source, id=f"lab-{tag}-bad"
    )
    assert serving.post_event(bad).status == 202

    def dead_letter() -> dict[str, Any] | None:
        out = serving.cli("dlq", "list", "--json")
        assert out.returncode == 0, out.stderr
        return next((d for d in json.loads(out.stdout) if d["id"] == bad.get_id()), None)

    letter = wait_until(dead_letter, 60, interval=1, what="the rejected label event's dead letter")
    assert letter["trigger"] == "monitor-label-events" and letter["code"] == "422"
    assert "label domain [0, 1]" in letter["error"]
    assert _production_file(serving, source, bad.get_id()) is None


def _raw(stack: Stack, key: str) -> bytes:
    resp = stack.s3().get_object(layout.LANDING, key)
    try:
        return resp.read()
    finally:
        resp.close()
        resp.release_conn()
