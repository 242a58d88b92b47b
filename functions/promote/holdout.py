"""Champion and challenger scored on the same recent holdout.

A challenger from a retrain's window (``split: time`` in its meta.json) has a holdout made of the
newest production rows (``functions/tune/window.py``). The champion's own holdout metric came from
other, older data, so comparing the two numbers says little about which model is better *now*.
Here both boosters score the challenger's holdout rows; the ROC-AUC gate compares those two
numbers. Challengers with a stratified holdout (a first study, a fallback) keep the comparison
of the registry's holdout metrics (``same_holdout`` false in the audit record).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from functions.promote import gates as artefact_gates
from shared import layout, modelling
from shared.contracts import Contract

log = logging.getLogger("faaspipe.promote")


@dataclass(frozen=True)
class HoldoutScores:
    holdout_key: str
    rows: int
    positives: int
    challenger_roc_auc: float
    champion_version: str
    champion_roc_auc: float

    def to_doc(self) -> dict[str, Any]:
        return {
            "same_holdout": True,
            "holdout": f"s3://{layout.MODELS}/{self.holdout_key}",
            "rows": self.rows,
            "positives": self.positives,
            "challenger_roc_auc": round(self.challenger_roc_auc, 6),
            "champion_version": self.champion_version,
            "champion_roc_auc": round(self.champion_roc_auc, 6),
        }


def recent_holdout(meta: dict[str, Any] | None) -> str | None:
    """The challenger's time-based holdout (models bucket key), if it has one."""
    if not meta or meta.get("split") != "time" or not meta.get("holdout_key"):
        return None
    return str(meta["holdout_key"])


def score_both(
    contract: Contract, holdout_key: str, challenger: Any, model_name: str, champion_version: str
) -> HoldoutScores | None:
    """Both models' ROC-AUC on the holdout rows; None when the champion's model cannot be read
    or the holdout is unusable (the caller falls back to the registry's metrics)."""
    data = modelling.get_bytes_or_none(layout.MODELS, holdout_key)
    champion_json = modelling.get_bytes_or_none(
        layout.MODELS, layout.serving_model(model_name, champion_version, "model.json")
    )
    if data is None or champion_json is None or challenger is None:
        log.warning(
            "%s: no same-holdout comparison (holdout %s, champion v%s model.json %s)",
            model_name,
            "found" if data is not None else "missing",
            champion_version,
            "found" if champion_json is not None else "missing",
        )
        return None
    frame = modelling.parquet_from_bytes(data)
    x, y = modelling.encode_frame(contract, frame), modelling.labels(contract, frame)
    if len(set(y.tolist())) < 2:
        return None
    champion = artefact_gates.load_booster(champion_json)
    if champion.num_features() != x.shape[1]:
        log.warning(
            "%s: champion v%s takes other features; no same-holdout comparison", model_name, champion_version
        )
        return None
    from sklearn.metrics import roc_auc_score

    return HoldoutScores(
        holdout_key=holdout_key,
        rows=len(frame),
        positives=int(y.sum()),
        challenger_roc_auc=float(roc_auc_score(y, modelling.predict(challenger, x))),
        champion_version=champion_version,
        champion_roc_auc=float(roc_auc_score(y, modelling.predict(champion, x))),
    )
