"""Performance drift: ROC-AUC / F1 on labelled recent predictions vs the model's holdout metrics."""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass

from functions.monitor.store import LabelledRow

LABEL_COLUMN = "machine_failure"
KEY_COLUMNS = ("request_id", "udi")


class LabelsFileError(ValueError):
    """A labels file that can never be used (wrong columns): reject it."""


@dataclass(frozen=True)
class PerformanceConfig:
    window: int = 500
    min_labelled: int = 100
    tolerance: float = 0.05  # allowed ROC-AUC drop
    f1_tolerance: float = 0.15  # allowed F1 drop (F1 on few positives is noisy)

    @classmethod
    def from_env(cls) -> PerformanceConfig:
        return cls(
            window=int(os.environ.get("FAASPIPE_PERF_WINDOW_SIZE", "500")),
            min_labelled=int(os.environ.get("FAASPIPE_PERF_MIN_LABELLED", "100")),
            tolerance=float(os.environ.get("FAASPIPE_PERF_TOLERANCE", "0.05")),
            f1_tolerance=float(os.environ.get("FAASPIPE_PERF_F1_TOLERANCE", "0.15")),
        )


@dataclass(frozen=True)
class PerformanceResult:
    size: int
    roc_auc: float
    f1: float
    reference_roc_auc: float
    reference_f1: float
    degraded_metric: str | None  # "roc_auc" | "f1" | None


def parse_labels_csv(data: bytes) -> tuple[list[tuple[str, str, int]], int]:
    """Labels CSV → ``[(key kind, key, truth)]`` and the number of unusable rows skipped.

    Needs ``machine_failure`` and ``request_id`` and/or ``udi``; a row with a request id is
    joined on it, otherwise on its ``udi``.
    """
    reader = csv.DictReader(io.StringIO(data.decode("utf-8-sig")))
    fields = set(reader.fieldnames or [])
    if LABEL_COLUMN not in fields or not fields & set(KEY_COLUMNS):
        raise LabelsFileError(
            f"labels file needs a '{LABEL_COLUMN}' column and a 'request_id' or 'udi' column; has {sorted(fields)}"
        )
    labels: list[tuple[str, str, int]] = []
    skipped = 0
    for row in reader:
        truth = (row.get(LABEL_COLUMN) or "").strip()
        request_id = (row.get("request_id") or "").strip()
        udi = (row.get("udi") or "").strip()
        if truth not in ("0", "1") or not (request_id or udi.isdigit()):
            skipped += 1
            continue
        labels.append(
            ("request_id", request_id, int(truth)) if request_id else ("udi", str(int(udi)), int(truth))
        )
    return labels, skipped


def roc_auc(truth: list[int], scores: list[float]) -> float:
    """Mann-Whitney ROC-AUC (ties count half); needs both classes."""
    pairs = sorted(zip(scores, truth, strict=True))
    positives = sum(truth)
    negatives = len(truth) - positives
    rank_sum, i = 0.0, 0
    while i < len(pairs):
        j = i
        while j < len(pairs) and pairs[j][0] == pairs[i][0]:
            j += 1
        average_rank = (i + j + 1) / 2  # 1-based ranks i+1..j
        rank_sum += average_rank * sum(t for _, t in pairs[i:j])
        i = j
    return (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)


def f1(truth: list[int], predicted: list[int]) -> float:
    tp = sum(1 for t, p in zip(truth, predicted, strict=True) if t == 1 and p == 1)
    fp = sum(1 for t, p in zip(truth, predicted, strict=True) if t == 0 and p == 1)
    fn = sum(1 for t, p in zip(truth, predicted, strict=True) if t == 1 and p == 0)
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


def evaluate(
    rows: list[LabelledRow], reference: dict[str, float], config: PerformanceConfig
) -> PerformanceResult | None:
    """Compare the window with the holdout metrics; None if there is too little to judge."""
    truth = [r.truth for r in rows]
    if len(rows) < config.min_labelled or len(set(truth)) < 2:
        return None
    auc = roc_auc(truth, [r.probability for r in rows])
    score = f1(truth, [r.label for r in rows])
    ref_auc, ref_f1 = float(reference["roc_auc"]), float(reference["f1"])
    degraded = None
    if ref_auc - auc > config.tolerance:
        degraded = "roc_auc"
    elif ref_f1 - score > config.f1_tolerance:
        degraded = "f1"
    return PerformanceResult(len(rows), auc, score, ref_auc, ref_f1, degraded)
