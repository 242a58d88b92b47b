"""The promotion decision with compare-and-set on the ``champion`` alias (pure: no MLflow import).

MLflow has no atomic compare-and-set on aliases, so the decision is optimistic:

1. read the champion version, evaluate the gates against it;
2. ``prepare`` (write the pending audit record), then read the champion again;
3. changed meanwhile → another decision was made: evaluate again against the new champion
   (bounded number of rounds); unchanged → set the alias (if the gates passed).

This never overwrites a decision that was visible before step 3's read; what remains is the
milliseconds between that read and the write. Within the platform, every replica's decisions
about one model are serialised by a fenced lease (``handler.decision_lease``; the lease is
renewed with a conditional write right before ``set_champion``), so only an outside writer (a
person in the MLflow UI) could land in that gap, and the read after the write reports it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

log = logging.getLogger("faaspipe.promote")

Gate = dict[str, Any]  # {name, passed, value, threshold, detail}: events.Gate
MAX_ROUNDS = 5


class Registry(Protocol):
    def champion(self, model_name: str) -> str | None: ...

    def set_champion(self, model_name: str, version: str) -> None: ...


class ChampionKeptChanging(RuntimeError):
    """The champion changed in every round: give up for now (the event is retried later)."""


@dataclass
class Decision:
    outcome: Literal["promoted", "rejected", "canary"]  # canary: a rollout started (shared/rollout.py)
    gates: list[Gate]
    champion_before: str | None
    champion_after: str | None
    rounds: list[dict[str, Any]] = field(default_factory=list)
    rollout: dict[str, Any] | None = None  # the rollout this decision started or ended
    comparison: dict[str, Any] | None = None  # how the ROC-AUC gate compared (functions/promote/holdout.py)

    @property
    def reasons(self) -> list[str]:
        return [f"{g['name']}: {g['detail']}" for g in self.gates if not g["passed"]]


def gate(
    name: str, passed: bool, value: float | str | None, threshold: float | str | None, detail: str
) -> Gate:
    return {"name": name, "passed": bool(passed), "value": value, "threshold": threshold, "detail": detail}


def roc_auc_gate(
    challenger: float | None,
    champion_version: str | None,
    champion: float | None,
    *,
    tolerance: float,
    floor: float,
) -> Gate:
    """Challenger ROC-AUC ≥ champion's − tolerance; without a (scored) champion, ≥ the floor."""
    if challenger is None:
        return gate("roc_auc", False, None, floor, "the challenger has no holdout ROC-AUC")
    if champion_version is None or champion is None:
        why = (
            "no champion yet" if champion_version is None else f"champion v{champion_version} has no ROC-AUC"
        )
        passed = challenger >= floor
        return gate(
            "roc_auc",
            passed,
            round(challenger, 6),
            floor,
            f"{why}: challenger {challenger:.5f} {'≥' if passed else '<'} floor {floor:.3f}",
        )
    bar = champion - tolerance
    passed = challenger >= bar
    return gate(
        "roc_auc",
        passed,
        round(challenger, 6),
        round(bar, 6),
        f"challenger {challenger:.5f} {'≥' if passed else '<'} champion v{champion_version} "
        f"{champion:.5f} − tolerance {tolerance:g}",
    )


def decide(
    registry: Registry,
    model_name: str,
    version: str,
    evaluate: Callable[[str | None], list[Gate]],
    *,
    prepare: Callable[[str | None, list[Gate]], None] | None = None,
    max_rounds: int = MAX_ROUNDS,
) -> Decision:
    """Evaluate ``version`` against the current champion and move the alias with compare-and-set."""
    rounds: list[dict[str, Any]] = []
    for number in range(1, max_rounds + 1):
        champion = registry.champion(model_name)
        if champion == version:
            gates = evaluate(None)
            rounds.append({"round": number, "champion": champion, "outcome": "already champion"})
            outcome = "promoted" if all(g["passed"] for g in gates) else "rejected"
            return Decision(outcome, gates, champion, champion, rounds)
        gates = evaluate(champion)
        passed = all(g["passed"] for g in gates)
        if prepare is not None:
            prepare(champion, gates)
        current = registry.champion(model_name)
        if current != champion:
            log.info(
                "%s v%s: champion moved from %s to %s while deciding; evaluating again",
                model_name,
                version,
                champion,
                current,
            )
            rounds.append(
                {"round": number, "champion": champion, "reread": current, "outcome": "champion changed"}
            )
            continue
        if not passed:
            rounds.append({"round": number, "champion": champion, "outcome": "rejected"})
            return Decision("rejected", gates, champion, champion, rounds)
        registry.set_champion(model_name, version)
        after = registry.champion(model_name)
        rounds.append({"round": number, "champion": champion, "outcome": "promoted", "after": after})
        if after != version:
            log.warning("%s: alias moved to %s right after promoting v%s", model_name, after, version)
        return Decision("promoted", gates, champion, after, rounds)
    raise ChampionKeptChanging(
        f"{model_name} v{version}: the champion changed in each of {max_rounds} rounds: {rounds}"
    )
