"""Promotion gates that look at the artefact itself: input schema and single-row latency."""

from __future__ import annotations

import gc
import io
import time
from typing import Any

from functions.promote.decision import Gate, gate
from shared import feature_set
from shared.contracts import Contract

LATENCY_WARMUP_CALLS = 20


def input_schema_gate(meta: dict[str, Any] | None, contract: Contract, booster_features: int | None) -> Gate:
    """The model's inputs (``meta.json`` features, booster width) = what serving encodes for the
    contract: its encoded features, or those followed by its rolling aggregates (``shared.feature_set``)."""
    features = list((meta or {}).get("features") or [])
    try:
        aggregates = feature_set.model_aggregates(contract, features)
    except ValueError:
        aggregates = ()
    expected = list(feature_set.encoded_features(contract, aggregates))
    threshold = f"{contract.ref}: {len(expected)} encoded features"
    if meta is None:
        return gate(
            "input_schema", False, None, threshold, "the version has no meta.json in the models bucket"
        )
    problems = []
    if meta.get("contract") != contract.ref:
        problems.append(f"meta.json is for contract {meta.get('contract')!r}, serving encodes {contract.ref}")
    if features != expected:
        missing = [f for f in expected if f not in features]
        extra = [f for f in features if f not in expected]
        order = "" if missing or extra else " (same names, different order)"
        problems.append(f"features differ{order}: missing {missing}, unexpected {extra}")
    if booster_features is not None and booster_features != len(expected):
        problems.append(f"the booster takes {booster_features} features, serving sends {len(expected)}")
    value = f"{meta.get('contract')}: {len(features)} features"
    if problems:
        return gate("input_schema", False, value, threshold, "; ".join(problems))
    return gate(
        "input_schema", True, value, threshold, f"features = {contract.ref} encoded features {expected}"
    )


def load_booster(model_json: bytes) -> Any:
    import xgboost as xgb

    booster = xgb.Booster(model_file=bytearray(model_json))
    booster.set_param({"nthread": 1})
    return booster


def example_row(contract: Contract, reference_csv: bytes | None, width: int | None = None) -> Any:
    """One encoded input row of ``width`` columns (default: the contract's encoded features): the
    first row of the drift reference, or zeros; columns past the contract's (a model's rolling
    aggregates, which the reference does not keep) are zeros: a latency probe, not a score."""
    import numpy as np

    width = len(contract.encoded_features) if width is None else width
    row = np.zeros((1, max(width, len(contract.encoded_features))), dtype=np.float32)
    if reference_csv:
        import pandas as pd

        frame = pd.read_csv(io.BytesIO(reference_csv), nrows=1)
        values = {f: frame[f].iloc[0] for f in contract.model_features}
        row[0, : len(contract.encoded_features)] = contract.encode(values)
    return row[:, :width]


def single_row_timings(booster: Any, row: Any, calls: int) -> tuple[Any, Any]:
    """Per-call (wall, CPU) seconds of ``calls`` single-row ``inplace_predict`` calls, as the
    predict function makes them, after a warm-up."""
    import numpy as np

    for _ in range(LATENCY_WARMUP_CALLS):
        booster.inplace_predict(row, validate_features=False)
    wall = np.empty(calls)
    cpu = np.empty(calls)
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for i in range(calls):
            started, started_cpu = time.perf_counter_ns(), time.thread_time_ns()
            booster.inplace_predict(row, validate_features=False)
            cpu[i] = time.thread_time_ns() - started_cpu
            wall[i] = time.perf_counter_ns() - started
    finally:
        if gc_was_enabled:
            gc.enable()
    return wall / 1e9, cpu / 1e9


def latency_gate(booster: Any | None, row: Any, *, budget_ms: float, calls: int) -> Gate:
    """Single-row p99 within ``budget_ms``.

    The gate compares the p99 of the *CPU time* per call (``time.thread_time_ns``; with
    ``nthread=1`` XGBoost predicts in the calling thread): what the model costs, whatever else the
    (shared, 2-core) box is running at that moment. The wall-clock p50/p99 are in the detail.
    """
    import numpy as np

    if booster is None:
        return gate("latency", False, None, budget_ms, "no model.json to load")
    wall, cpu = single_row_timings(booster, row, calls)
    p99_cpu = float(np.percentile(cpu, 99) * 1000.0)
    p50_wall, p99_wall = (float(v) * 1000.0 for v in np.percentile(wall, [50, 99]))
    passed = p99_cpu <= budget_ms
    return gate(
        "latency",
        passed,
        round(p99_cpu, 4),
        budget_ms,
        f"single-row predict over {calls} calls (nthread=1): CPU p99 {p99_cpu:.3f} ms "
        f"{'≤' if passed else '>'} budget {budget_ms:g} ms; wall p50 {p50_wall:.3f} ms, p99 {p99_wall:.3f} ms",
    )
