"""The monitor's rollout judge (``functions/monitor/rollout.py``) and its store tables: units, no stack."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from events import PredictionLogged, RolloutDecided
from functions.monitor.rollout import Sample, Verdict, evaluate, psi, psi_noise, split_samples
from functions.monitor.store import MonitorStore, RolloutObservation, StoredPrediction
from shared.cloudevents_io import CloudEvent
from shared.contracts import get_contract
from shared.registry_alias import RegistryError
from shared.rollout import Rollout, RolloutPolicy

START = datetime(2026, 1, 1, tzinfo=UTC)
POLICY = RolloutPolicy(mode="canary", share=0.1, window_s=60, min_requests=100, min_labelled=50)
ROLLOUT = Rollout("r-1", "m", "2", "1", "2026-01-01T00:00:00Z", "promote@test", POLICY)
DUE = START + timedelta(seconds=61)
RNG = np.random.default_rng(7)


def _sample(
    n: int,
    *,
    latency: float = 10.0,
    errors: int = 0,
    loc: float = 0.3,
    labelled: int = 0,
    separation: float = 0.4,
    seed: int = 0,
) -> Sample:
    rng = np.random.default_rng(seed)
    probs = np.clip(rng.normal(loc, 0.1, n), 0, 1).tolist()
    truth = [i % 2 for i in range(labelled)]
    scores = [float(np.clip(t * separation + rng.uniform(0, 0.6), 0, 1)) for t in truth]
    return Sample(
        latencies_ms=rng.normal(latency, latency / 10, n).tolist(),
        probabilities=probs,
        errors=errors,
        requests=n + errors,
        labelled=list(zip(truth, scores, strict=True)),
    )


def _by_name(verdict: Verdict) -> dict[str, dict[str, Any]]:
    return {c["name"]: dict(c) for c in verdict.checks}


# --------------------------------------------------------------------------- PSI


@pytest.mark.parametrize(
    ("shift", "low", "high"),
    [
        (0.0, 0.0, 0.02),  # same distribution: ~0 (< 0.1, "stable")
        (0.05, 0.1, 0.6),  # half a standard deviation
        (0.3, 2.0, 100.0),  # far apart: well past 0.25, "significant shift"
    ],
)
def test_psi_grows_with_the_shift(shift: float, low: float, high: float) -> None:
    base = RNG.normal(0.3, 0.1, 5000).tolist()
    other = (RNG.normal(0.3, 0.1, 5000) + shift).tolist()
    assert low <= psi(base, other) <= high


def test_psi_identical_and_tied_values() -> None:
    same = [0.01] * 500 + [0.5] * 20
    assert psi(same, same) == pytest.approx(0.0, abs=1e-12)
    assert psi(same, [0.9] * 100) > 0.25  # all mass where the champion has none: finite and large
    assert np.isfinite(psi(same, [0.9] * 100))


def test_psi_is_calm_for_two_samples_of_rare_failure_scores_and_loud_for_a_broken_model() -> None:
    """Small samples (the canary's first minutes) of a model whose probabilities crowd near 0:
    quantile bins called these a significant shift; equal-width smoothed bins, against the
    threshold plus the sampling noise, do not."""
    rng = np.random.default_rng(7)
    values = [psi(rng.beta(0.3, 8, 110).tolist(), rng.beta(0.3, 8, 50).tolist()) for _ in range(200)]
    assert max(values) < 0.25 + psi_noise(110, 50)
    assert np.mean(values) < psi_noise(110, 50)  # the noise estimate is on the safe side
    champion = rng.beta(0.3, 8, 110).tolist()
    assert psi(champion, rng.uniform(0, 1, 50).tolist()) > 1.0
    assert psi(champion, (1 - rng.beta(0.3, 8, 50)).tolist()) > 1.0


# --------------------------------------------------------------------------- evaluate

CASES: list[tuple[str, dict[str, Any], dict[str, Any], datetime, str | None, set[str]]] = [
    # id, champion kwargs, candidate kwargs, now, decision, failed checks
    ("window not over", {"n": 500}, {"n": 200}, START + timedelta(seconds=30), None, set()),
    ("too few requests", {"n": 500}, {"n": 99}, DUE, None, set()),
    ("errors count as requests", {"n": 500}, {"n": 99, "errors": 1}, DUE, "promote", set()),
    ("healthy candidate", {"n": 500}, {"n": 200, "seed": 1}, DUE, "promote", set()),
    ("failing candidate", {"n": 500}, {"n": 190, "errors": 10}, DUE, "rollback", {"error_rate"}),
    ("slow candidate", {"n": 500}, {"n": 200, "latency": 40.0}, DUE, "rollback", {"latency_p95_ratio"}),
    ("shifted predictions", {"n": 500}, {"n": 200, "loc": 0.6}, DUE, "rollback", {"prediction_psi"}),
    (
        "worse on labels",
        {"n": 500, "labelled": 100, "separation": 0.5},
        {"n": 200, "labelled": 100, "separation": 0.0, "seed": 1},
        DUE,
        "rollback",
        {"labelled_roc_auc"},
    ),
    (
        "as good on labels",
        {"n": 500, "labelled": 100},
        {"n": 200, "labelled": 100, "seed": 1},
        DUE,
        "promote",
        set(),
    ),
    ("no champion rows", {"n": 0}, {"n": 200}, DUE, "promote", set()),
]


@pytest.mark.parametrize(
    ("champion", "candidate", "now", "decision", "failed"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_evaluate(
    champion: dict[str, Any],
    candidate: dict[str, Any],
    now: datetime,
    decision: str | None,
    failed: set[str],
) -> None:
    verdict = evaluate(ROLLOUT, _sample(**champion), _sample(**candidate), now)
    if decision is None:
        assert verdict is None
        return
    assert verdict is not None and verdict.decision == decision
    checks = _by_name(verdict)
    assert list(checks) == ["error_rate", "latency_p95_ratio", "prediction_psi", "labelled_roc_auc"]
    assert {n for n, c in checks.items() if not c["passed"]} == failed
    json.dumps({"checks": verdict.checks, "evidence": verdict.evidence})  # serialisable
    assert verdict.evidence["candidate"]["requests"] == candidate["n"] + candidate.get("errors", 0)


def test_evaluate_details() -> None:
    verdict = evaluate(ROLLOUT, _sample(500, labelled=10), _sample(200, labelled=100, seed=1), DUE)
    assert verdict is not None
    checks = _by_name(verdict)
    auc = checks["labelled_roc_auc"]
    assert auc["passed"] and auc["value"] is None and auc["detail"].startswith("not enough labels:")
    assert checks["error_rate"] == {
        "name": "error_rate",
        "passed": True,
        "value": 0.0,
        "threshold": POLICY.max_error_rate,
        "detail": "0 of 200 candidate requests failed",
    }
    assert 0.8 < checks["latency_p95_ratio"]["value"] < 1.25
    assert verdict.evidence["champion"]["labelled"] == 10 and verdict.evidence["elapsed_s"] == 61.0
    no_champion = evaluate(ROLLOUT, Sample(), _sample(200), DUE)
    assert no_champion is not None
    latency = _by_name(no_champion)["latency_p95_ratio"]
    assert latency["passed"] and latency["value"] is None and "no champion" in latency["detail"]
    # one class only on a side: not judged either
    one_class = Sample(labelled=[(0, 0.1)] * 100, probabilities=[0.1] * 100, latencies_ms=[1.0] * 100)
    verdict = evaluate(ROLLOUT, one_class, _sample(200, labelled=100), DUE)
    assert verdict is not None and _by_name(verdict)["labelled_roc_auc"]["value"] is None


# --------------------------------------------------------------------------- samples and store


def _obs(
    event_id: str, variant: str, request_id: str, p: float, ms: float, error: bool = False
) -> RolloutObservation:
    return RolloutObservation(
        event_id, "r-1", "m", variant, request_id, p, ms, error, "2026-01-01T00:00:00+00:00"
    )


def test_split_samples_canary_and_shadow() -> None:
    rows = [
        _obs("e1", "champion", "q1", 0.1, 10.0),
        _obs("e2", "candidate", "q2", 0.2, 12.0),
        _obs("e3", "champion", "q3", 0.3, 50.0, error=True),  # candidate failed, champion answered
        _obs("e4", "shadow", "q1", 0.15, 11.0),
    ]
    champion, candidate = split_samples(rows)
    assert (champion.requests, champion.errors, champion.probabilities, champion.latencies_ms) == (
        2,
        0,
        [0.1, 0.3],
        [10.0],
    )
    assert (candidate.requests, candidate.errors, candidate.probabilities, candidate.latencies_ms) == (
        3,
        1,
        [0.2, 0.15],
        [12.0, 11.0],
    )


def test_store_rollout_tables_labels_and_decisions(tmp_path: Path) -> None:
    store = MonitorStore(tmp_path / "m.db")
    served = StoredPrediction("e1", "q1", "7", "m", "1", 0.1, 0, "2026-01-01T00:00:00+00:00", {"x": 1})
    assert store.add_prediction(served)
    assert store.add_rollout_observation(_obs("e1", "champion", "q1", 0.1, 10.0))
    assert store.add_rollout_observation(_obs("e2", "shadow", "q1", 0.2, 11.0))
    assert not store.add_rollout_observation(_obs("e2", "shadow", "q1", 0.2, 11.0))  # redelivery
    assert store.add_rollout_observation(_obs("e3", "shadow", "q9", 0.4, 11.0))
    assert store.undecided_rollouts() == [("r-1", "m")]
    # by udi: the served (champion) row's request labels both its champion and shadow rows
    touched = store.join_labels([("udi", "7", 1), ("request_id", "q9", 0)], "labels/a.csv")
    assert touched == {("m", "1")}
    by_event = {o.event_id: o for o in store.rollout_observations("r-1")}
    assert [by_event[e].truth for e in ("e1", "e2", "e3")] == [1, 1, 0]
    assert by_event["e2"].variant == "shadow" and by_event["e3"].candidate_error is False
    # the labelled table holds only the served row
    assert [(r.probability, r.truth) for r in store.labelled_window("m", "1", 10)] == [(0.1, 1)]
    assert store.rollout_decision("r-1") is None
    assert store.record_rollout_decision("r-1", "promote", "2026-01-01T00:05:00Z")
    assert not store.record_rollout_decision("r-1", "rollback", "2026-01-01T00:06:00Z")
    assert store.rollout_decision("r-1") == ("promote", "2026-01-01T00:05:00Z")
    assert store.undecided_rollouts() == []
    store.close()
    reopened = MonitorStore(tmp_path / "m.db")  # decisions survive a restart
    assert reopened.rollout_decision("r-1") == ("promote", "2026-01-01T00:05:00Z")
    reopened.close()


# --------------------------------------------------------------------------- the handler's judge


class _Registry:
    def __init__(self, tag: str | None) -> None:
        self.tag: str | None = tag
        self.fail = False

    def model_tag(self, model_name: str, key: str) -> str | None:
        if self.fail:
            raise RegistryError("down")
        return self.tag


def _logged(i: int, variant: str, error: bool = False, rollout_id: str = "r-1") -> CloudEvent:
    return PredictionLogged(
        request_id=f"q{i}",
        model_name="m",
        model_version="2" if variant == "shadow" else "1",
        route="json",
        inputs={"torque_nm": 40.0 + i % 7},
        output={"probability": 0.2 + (i % 10) / 100, "label": 0},
        latency_ms=5.0 + i % 3,
        rollout={"id": rollout_id, "variant": variant, "candidate_version": "2", "candidate_error": error},
    ).to_event(source="/test", id=f"{rollout_id}-{variant}-{i}")


def test_monitor_keeps_shadow_rows_apart_and_decides_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from functions.monitor import handler

    sent: list[Any] = []
    monkeypatch.setattr(handler, "emit", sent.append)
    monitor = handler.Monitor(get_contract("ai4i"), tmp_path, 0.05)
    shadow = ROLLOUT.with_policy(mode="shadow")
    registry = _Registry(shadow.to_json())
    monkeypatch.setattr(monitor, "_registry_client", registry)
    for i in range(120):
        monitor.on_prediction(_logged(i, "champion", error=i == 0))
        monitor.on_prediction(_logged(i, "shadow"))
    monitor.on_prediction(_logged(5, "shadow"))  # a redelivery
    assert monitor.windows.fill() == {("m", "1"): 120}  # shadow rows join no window ...
    assert len(monitor.store.open_predictions()) == 120  # ... and are no served prediction
    assert len(monitor.store.rollout_observations("r-1")) == 240
    monitor.check_rollouts(START + timedelta(seconds=30))  # window not over
    registry.fail = True
    monitor.check_rollouts(DUE)  # registry down: next round
    assert sent == [] and monitor.store.undecided_rollouts() == [("r-1", "m")]
    registry.fail = False
    monitor.check_rollouts(DUE)
    monitor.check_rollouts(DUE + timedelta(seconds=5))  # decided: not again
    assert len(sent) == 1
    event = sent[0]
    assert (event.get_id(), event.get_subject(), event.get_source()) == ("r-1.decided", "m/2", handler.SOURCE)
    decided = RolloutDecided.from_event(event)
    assert (
        decided.decision == "promote" and decided.candidate_version == "2" and decided.champion_version == "1"
    )
    assert decided.evidence["candidate"]["requests"] == 121 and decided.evidence["candidate"]["errors"] == 1
    assert decided.decided_by.startswith("monitor@")
    assert monitor.store.rollout_decision("r-1") == ("promote", decided.decided_at)
    # rows of a rollout the tag no longer names (rolled back by hand, or replaced): never judged,
    # and not looked at again
    monitor.on_prediction(_logged(1, "shadow", rollout_id="r-0"))
    monitor.check_rollouts(DUE)
    assert len(sent) == 1 and monitor.store.rollout_decision("r-0")[0] == "ended"
    assert monitor.store.undecided_rollouts() == []
    monitor.store.close()
