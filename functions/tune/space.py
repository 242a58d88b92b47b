"""The XGBoost search space and the Bayesian optimiser (scikit-optimize, GP) that walks it.

The optimiser is never kept in memory between events: every suggestion rebuilds it from the
study's stored history (finished points told as ``-score``; trials still running told with a
constant lie, the best score so far), so a restarted process suggests exactly what the dead one
would have. The first ``n_initial_points`` trials are a fixed design stored with the study:
XGBoost's defaults, then a Latin hypercube.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

Value = float | int


@dataclass(frozen=True)
class Dimension:
    name: str
    kind: Literal["real", "integer"]
    low: float
    high: float
    prior: Literal["uniform", "log-uniform"] = "uniform"

    def to_doc(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> Dimension:
        return cls(**doc)

    def clip(self, value: float) -> Value:
        clipped = min(max(float(value), self.low), self.high)
        return int(round(clipped)) if self.kind == "integer" else clipped


# scale_pos_weight is left out on purpose: it barely moves a ranking metric (ROC-AUC) on these
# data and it skews the probabilities, which the Brier score and the F1 threshold rely on.
XGBOOST_SPACE: tuple[Dimension, ...] = (
    Dimension("learning_rate", "real", 0.01, 0.3, "log-uniform"),
    Dimension("max_depth", "integer", 2, 8),
    Dimension("min_child_weight", "real", 1.0, 20.0, "log-uniform"),
    Dimension("subsample", "real", 0.5, 1.0),
    Dimension("colsample_bytree", "real", 0.5, 1.0),
    Dimension("reg_lambda", "real", 1e-3, 10.0, "log-uniform"),
    Dimension("reg_alpha", "real", 1e-3, 10.0, "log-uniform"),
    Dimension("gamma", "real", 0.0, 5.0),
)
# XGBoost's own defaults (reg_alpha and the log-uniform lower bounds clipped into the space).
XGBOOST_DEFAULTS: dict[str, Value] = {
    "learning_rate": 0.3,
    "max_depth": 6,
    "min_child_weight": 1.0,
    "subsample": 1.0,
    "colsample_bytree": 1.0,
    "reg_lambda": 1.0,
    "reg_alpha": 1e-3,
    "gamma": 0.0,
}


def params_of(space: Sequence[Dimension], x: Sequence[Value]) -> dict[str, Value]:
    """A point of the space as named XGBoost parameters."""
    return {d.name: d.clip(v) for d, v in zip(space, x, strict=True)}


def point_of(space: Sequence[Dimension], params: dict[str, Value]) -> list[Value]:
    return [d.clip(params[d.name]) for d in space]


def _skopt_space(space: Sequence[Dimension]) -> list[Any]:
    from skopt.space import Integer, Real

    return [
        Integer(int(d.low), int(d.high), prior=d.prior, name=d.name)
        if d.kind == "integer"
        else Real(d.low, d.high, prior=d.prior, name=d.name)
        for d in space
    ]


def _plain(space: Sequence[Dimension], x: Sequence[Any]) -> list[Value]:
    return [d.clip(v) for d, v in zip(space, x, strict=True)]


def initial_design(space: Sequence[Dimension], n_points: int, seed: int) -> list[list[Value]]:
    """XGBoost's defaults first, then a Latin hypercube (deterministic for a seed)."""
    from skopt.sampler import Lhs

    points = [point_of(space, XGBOOST_DEFAULTS)]
    if n_points > 1:
        lhs = Lhs(lhs_type="classic", criterion="maximin", iterations=200)
        points += [
            _plain(space, x) for x in lhs.generate(_skopt_space(space), n_points - 1, random_state=seed)
        ]
    return points[:n_points]


def suggest(
    space: Sequence[Dimension],
    finished: Sequence[tuple[Sequence[Value], float]],
    pending: Sequence[Sequence[Value]],
    *,
    seed: int,
    acq_func: str = "EI",
) -> list[Value]:
    """The next point to evaluate given finished ``(x, score)`` pairs (higher score is better).

    Deterministic: the same history and seed give the same point. Trials still running are
    told with the best score so far ("constant liar"), so parallel suggestions spread out.
    Without any finished point, a seeded random point.
    """
    from skopt import Optimizer
    from skopt.space import Space

    dimensions = _skopt_space(space)
    if not finished:
        return _plain(space, Space(dimensions).rvs(1, random_state=seed)[0])
    optimizer = Optimizer(
        dimensions,
        base_estimator="GP",
        acq_func=acq_func,
        n_initial_points=0,
        random_state=seed,
    )
    xs = [list(x) for x, _ in finished]
    ys = [-float(score) for _, score in finished]
    lie = min(ys)
    xs += [list(x) for x in pending]
    ys += [lie] * len(pending)
    optimizer.tell(xs, ys)
    return _plain(space, optimizer.ask())
