"""Multi-fidelity tuning: the best score reached and the trial CPU-seconds spent, with and without pruning.

One run, in one process, of the same trials under each pruner (``none``, ``median``,
``successive_halving``): the tuner's own data preparation for AI4I (``../shared/datasets`` when
present, else ``localdev/datagen.py``'s file): its stratified holdout and 5 folds (seed 42), the
same ``--trials`` points (the study's initial design: XGBoost's defaults, then a Latin hypercube,
seed 42), in the same order, each trial ``modelling.cross_validate`` with the study's budgets
(1000 rounds, early stopping 50) and the trial function's checkpoint callback
(``functions.trial.progress.Reporter``, every ``--report-every`` rounds) over an in-memory
progress store. The points are fixed rather than suggested by the GP so that the three runs
differ only by the pruner (a pruned trial would change every later suggestion).

Reported per pruner: the best CV ROC-AUC of the completed trials, the total trial CPU seconds
(``time.process_time`` around each trial: XGBoost runs ``nthread=1``), the trials pruned and the
rounds boosted; and the issue's target — the same best score (within 0.001 ROC-AUC) for at most
50 % of the trial compute — with ``met`` beside it (never a pass/fail exit status).

    .venvs/train/bin/python -m bench.pruning [--trials 16] [--report-every 20] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
PRUNERS = ("none", "median", "successive_halving")
TARGET_SCORE_DELTA = 0.001
TARGET_CPU_FRACTION = 0.5


def prepare(seed: int) -> tuple[Any, Any, list[tuple[Any, Any]], str]:
    from shared import modelling
    from shared.contracts import get_contract
    from tests.fixtures_model import dataset_csv

    contract = get_contract("ai4i")
    path = dataset_csv()
    frame = modelling.frame_from_csv(contract, path)
    train, _ = modelling.split_holdout(contract, frame, fraction=0.25, seed=seed)
    x, y = modelling.encode_frame(contract, train), modelling.labels(contract, train)
    return x, y, modelling.stratified_folds(y, n_folds=5, seed=seed), str(path)


def run_study(
    pruner: str, points: list[dict[str, Any]], data: tuple[Any, Any, list[tuple[Any, Any]]], report_every: int
) -> dict[str, Any]:
    from functions.trial.progress import MemoryProgressStore, Reporter
    from functions.tune.study import StudyConfig
    from shared import modelling

    config = StudyConfig()
    x, y, folds = data
    store = MemoryProgressStore()
    trials = []
    for number, params in enumerate(points):
        reporter = Reporter(store, "bench", number, pruner=pruner, report_every=report_every)
        cpu = time.process_time()
        try:
            result = modelling.cross_validate(
                x,
                y,
                params,
                seed=config.seed,
                folds=folds,
                max_rounds=config.max_rounds,
                early_stopping_rounds=config.early_stopping_rounds,
                report_every=report_every,
                on_checkpoint=reporter,
            )
            reporter.finish("complete")
            entry = {"status": "ok", "score": result.score, "rounds": result.rounds}
        except modelling.TrialPruned as exc:
            entry = {"status": "pruned", "score": exc.score, "rounds": exc.rounds, "pruned_step": exc.step}
        entry.update(number=number, cpu_s=round(time.process_time() - cpu, 4))
        trials.append(entry)
        print(
            f"  {pruner:>18} trial {number:2d}: {entry['status']:6} {entry['score']:.5f} {entry['cpu_s']:.2f}s"
        )
    ok = [t for t in trials if t["status"] == "ok"]
    best = max(ok, key=lambda t: t["score"])
    return {
        "best_roc_auc": round(best["score"], 6),
        "best_trial": best["number"],
        "cpu_s": round(sum(t["cpu_s"] for t in trials), 3),
        "n_pruned": len(trials) - len(ok),
        "rounds": sum(t["rounds"] for t in trials),
        "trials": trials,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--report-every", type=int, default=20)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "pruning.json")
    args = parser.parse_args(argv)

    from functions.tune.space import XGBOOST_SPACE, initial_design, params_of

    x, y, folds, dataset = prepare(args.seed)
    points = [params_of(XGBOOST_SPACE, p) for p in initial_design(XGBOOST_SPACE, args.trials, args.seed)]
    runs = {p: run_study(p, points, (x, y, folds), args.report_every) for p in PRUNERS}
    base = runs["none"]
    targets = {}
    for pruner in PRUNERS[1:]:
        run = runs[pruner]
        delta = base["best_roc_auc"] - run["best_roc_auc"]
        fraction = run["cpu_s"] / base["cpu_s"]
        targets[pruner] = {
            "best_delta": round(delta, 6),
            "cpu_fraction": round(fraction, 4),
            "target": f"best within {TARGET_SCORE_DELTA} ROC-AUC for <= {TARGET_CPU_FRACTION:.0%} of the CPU",
            "met": bool(delta <= TARGET_SCORE_DELTA and fraction <= TARGET_CPU_FRACTION),
        }
    results = {
        "bench": "pruning",
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "nproc": os.cpu_count(),
            "python": sys.version.split()[0],
            "platform": platform.platform(),
        },
        "dataset": dataset,
        "rows_train": int(len(y)),
        "trials": args.trials,
        "report_every": args.report_every,
        "seed": args.seed,
        "order": "sequential, one trial at a time, the same points in the same order for every pruner",
        "runs": runs,
        "targets": targets,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    summary = {p: {k: runs[p][k] for k in ("best_roc_auc", "cpu_s", "n_pruned", "rounds")} for p in PRUNERS}
    print(json.dumps({"runs": summary, "targets": targets}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
