"""Unit tests of ``shared/pruning.py``: Optuna's own pruner tests, ported to the pure functions.

Sources (optuna/optuna on GitHub):
- tests/pruners_tests/test_median.py (``MedianPruner`` = ``PercentilePruner(50)``)
- tests/pruners_tests/test_successive_halving.py (``SuccessiveHalvingPruner``)

Each Optuna test builds a study, reports values on trials and calls ``prune``; here a study is
the list of the other trials' records (state, values, rungs) and a trial is its values and rungs.
Optuna's study default direction is minimize, kept where the original test relies on it. Not
ported: the ``min_resource="auto"`` tests (our rule always gets the first checkpoint as its
minimum resource, a documented difference) and the string-argument validation.
"""

from __future__ import annotations

import pytest

from shared.pruning import (
    HalvingRule,
    MedianRule,
    TrialRecord,
    halving_should_prune,
    median_should_prune,
    should_prune,
)

NAN = float("nan")


def done(number: int, values: dict[int, float]) -> TrialRecord:
    return TrialRecord(number=number, state="complete", values=values)


# --------------------------------------------------------------------------- median (test_median.py)


@pytest.mark.parametrize(
    ("case", "rule", "direction", "completed", "values", "expected"),
    [
        # test_median_pruner_with_one_trial
        ("one trial", MedianRule(0, 0), "minimize", [], {1: 1.0}, False),
        # test_median_pruner_intermediate_values: no intermediate values yet, then one
        ("no values", MedianRule(0, 0), "minimize", [{1: 1.0}], {}, False),
        ("worse (minimize)", MedianRule(0, 0), "minimize", [{1: 1.0}], {1: 2.0}, True),
        ("worse (maximize)", MedianRule(0, 0), "maximize", [{1: 1.0}], {1: 0.5}, True),
        # test_median_pruner_intermediate_values_nan
        ("nan, no previous trials", MedianRule(0, 0), "minimize", [], {1: NAN}, False),
        ("best value nan", MedianRule(0, 0), "minimize", [{1: NAN}], {1: NAN}, True),
        ("median nan", MedianRule(0, 0), "minimize", [{1: NAN}, {1: NAN}], {1: 1.0}, False),
        # test_median_pruner_n_startup_trials
        ("during startup", MedianRule(2, 0), "minimize", [{1: 1.0}], {1: 2.0}, False),
        ("after startup", MedianRule(2, 0), "minimize", [{1: 1.0}, {1: 2.0}], {1: 3.0}, True),
        # test_median_pruner_n_warmup_steps
        ("during warm-up", MedianRule(0, 1), "minimize", [{0: 1.0, 1: 1.0}], {0: 2.0}, False),
        ("after warm-up", MedianRule(0, 1), "minimize", [{0: 1.0, 1: 1.0}], {0: 2.0, 1: 2.0}, True),
        # test_median_pruner_n_min_trials
        (
            "before n_min_trials",
            MedianRule(2, 0, 1, n_min_trials=2),
            "minimize",
            [{1: 4.0, 2: 2.0}, {1: 3.0}],
            {1: 4.0, 2: 3.0},
            False,
        ),
        (
            "after n_min_trials",
            MedianRule(2, 0, 1, n_min_trials=2),
            "minimize",
            [{1: 4.0, 2: 2.0}, {1: 3.0}, {1: 4.0, 2: 3.0}],
            {1: 4.0, 2: 3.0},
            True,
        ),
    ],
)
def test_median_rule(
    case: str,
    rule: MedianRule,
    direction: str,
    completed: list[dict[int, float]],
    values: dict[int, float],
    expected: bool,
) -> None:
    others = [done(i, v) for i, v in enumerate(completed)]
    assert median_should_prune(values, others, rule, direction) is expected, case  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("n_warmup_steps", "interval_steps", "report_steps", "expected_prune_steps"),
    [  # test_median_pruner_interval_steps, same table
        (0, 1, 1, [0, 1, 2, 3, 4, 5]),
        (1, 1, 1, [1, 2, 3, 4, 5]),
        (1, 2, 1, [1, 3, 5]),
        (0, 3, 10, list(range(29))),
        (2, 3, 10, list(range(10, 29))),
        (0, 10, 3, [0, 1, 2, 12, 13, 14, 21, 22, 23]),
        (2, 10, 3, [3, 4, 5, 12, 13, 14, 24, 25, 26]),
    ],
)
def test_median_rule_interval_steps(
    n_warmup_steps: int, interval_steps: int, report_steps: int, expected_prune_steps: list[int]
) -> None:
    rule = MedianRule(0, n_warmup_steps, interval_steps)
    last_step = max(expected_prune_steps) + 1
    first = done(0, dict.fromkeys(range(last_step), 0.0))
    values: dict[int, float] = {}
    pruned = []
    for i in range(last_step):
        if i % report_steps == 0:
            values[i] = 2.0
        if median_should_prune(values, [first], rule, "minimize"):
            pruned.append(i)
    assert pruned == expected_prune_steps


def test_median_rule_ignores_running_and_pruned_trials() -> None:
    """Only completed trials set the median (Optuna: ``states=(TrialState.COMPLETE,)``)."""
    others = [
        TrialRecord(0, "running", {1: 0.99}),
        TrialRecord(1, "pruned", {1: 0.99}),
        TrialRecord(2, "failed", {1: 0.99}),
    ]
    assert not median_should_prune({1: 0.5}, others, MedianRule(0, 0), "maximize")
    assert median_should_prune({1: 0.5}, [*others, done(3, {1: 0.9})], MedianRule(0, 0), "maximize")


# --------------------------------------------------------------------------- halving (test_successive_halving.py)


def rung_keys(rungs: dict[int, float]) -> set[int]:
    return set(rungs)


@pytest.mark.parametrize(("direction", "intermediate_value"), [("minimize", 2.0), ("maximize", 0.5)])
def test_halving_intermediate_values(direction: str, intermediate_value: float) -> None:
    rule = HalvingRule(min_resource=1, reduction_factor=2, min_early_stopping_rate=0)
    # a pruner is not activated at a first trial
    pruned, rungs = halving_should_prune({1: 1.0}, {}, [], rule, direction)  # type: ignore[arg-type]
    assert not pruned
    first = TrialRecord(0, "running", {1: 1.0}, rungs)
    # not activated if a trial has no intermediate values
    assert not halving_should_prune({}, {}, [first], rule, direction)[0]  # type: ignore[arg-type]
    # activated once it has one
    assert halving_should_prune({1: intermediate_value}, {}, [first], rule, direction)[0]  # type: ignore[arg-type]


def test_halving_rung_check() -> None:
    rule = HalvingRule(min_resource=1, reduction_factor=2, min_early_stopping_rate=0)
    study: list[TrialRecord] = []

    def report(value: float) -> dict[int, float]:
        _, rungs = halving_should_prune({7: value}, {}, study, rule, "minimize")
        study.append(TrialRecord(len(study), "running", {7: value}, rungs))
        return rungs

    for i in range(7):
        report(0.1 * (i + 1))
    assert rung_keys(report(0.75)) == {0}  # the 7th value from the bottom
    assert rung_keys(report(0.25)) == {0, 1}  # the third value from the bottom
    assert rung_keys(report(0.05)) == {0, 1, 2}  # the lowest value


def test_halving_first_trial_is_not_pruned() -> None:
    rule = HalvingRule(min_resource=1, reduction_factor=2, min_early_stopping_rate=0)
    values: dict[int, float] = {}
    rungs: dict[int, float] = {}
    for i in range(10):
        values[i] = 1.0
        pruned, rungs = halving_should_prune(values, rungs, [], rule, "minimize")
        assert not pruned
    assert rung_keys(rungs) == {0, 1, 2, 3}


def test_halving_with_nan() -> None:
    rule = HalvingRule(min_resource=2, reduction_factor=2, min_early_stopping_rate=0)
    assert not halving_should_prune({1: NAN}, {}, [], rule)[0]  # not a rung completion point
    assert halving_should_prune({1: NAN, 2: NAN}, {}, [], rule)[0]  # a completion point, NaN


@pytest.mark.parametrize(
    ("rule", "steps_and_rungs"),
    [
        # test_successive_halving_pruner_min_resource_parameter
        (HalvingRule(1, 2, 0), [(1, {0})]),
        (HalvingRule(2, 2, 0), [(1, set()), (2, {0})]),
        # test_successive_halving_pruner_reduction_factor_parameter
        (HalvingRule(1, 2, 0), [(1, {0})]),
        (HalvingRule(1, 3, 0), [(1, {0}), (2, {0}), (3, {0, 1})]),
        # test_successive_halving_pruner_min_early_stopping_rate_parameter
        (HalvingRule(1, 2, 0), [(1, {0})]),
        (HalvingRule(1, 2, 1), [(1, set()), (2, {0})]),
    ],
)
def test_halving_rung_completion_points(
    rule: HalvingRule, steps_and_rungs: list[tuple[int, set[int]]]
) -> None:
    values: dict[int, float] = {}
    rungs: dict[int, float] = {}
    for step, expected in steps_and_rungs:
        values[step] = 1.0
        pruned, rungs = halving_should_prune(values, rungs, [], rule, "minimize")
        assert not pruned
        assert rung_keys(rungs) == expected, step


@pytest.mark.parametrize(
    "kwargs",
    [
        {"min_resource": 0},
        {"reduction_factor": 1},
        {"min_early_stopping_rate": -1},
        {"bootstrap_count": -1},
    ],
)
def test_halving_invalid_parameters(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        HalvingRule(**kwargs)


def test_halving_bootstrap_count() -> None:
    rule = HalvingRule(min_resource=1, reduction_factor=2, bootstrap_count=1)
    pruned, rungs1 = halving_should_prune({1: 1.0}, {}, [], rule, "minimize")
    assert pruned  # alone at rung 0: fewer than bootstrap_count + 1 competitors
    trial1 = TrialRecord(0, "pruned", {1: 1.0}, rungs1)
    assert not halving_should_prune({1: 1.0}, {}, [trial1], rule, "minimize")[0]


@pytest.mark.parametrize(
    "kwargs",
    [{"percentile": -1.0}, {"n_startup_trials": -1}, {"n_warmup_steps": -1}, {"interval_steps": 0}],
)
def test_median_invalid_parameters(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        MedianRule(**kwargs)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- the study's entry point


def test_should_prune_dispatches_on_the_study_pruner() -> None:
    best = [done(i, {20: 0.99, 40: 0.995}) for i in range(5)]
    assert should_prune("none", {20: 0.5}, {}, best, report_every=20) == (False, {})
    assert should_prune("median", {20: 0.5}, {}, best, report_every=20)[0]
    assert not should_prune("median", {20: 0.5}, {}, best[:4], report_every=20)[0]  # 5 startup trials
    leaders = [TrialRecord(i, "complete", {20: 0.99}, {0: 0.99}) for i in range(4)]
    pruned, rungs = should_prune("successive_halving", {20: 0.5}, {}, leaders, report_every=20)
    assert pruned and rungs == {0: 0.5}
    pruned, rungs = should_prune("successive_halving", {20: 0.999}, {}, leaders, report_every=20)
    assert not pruned and rungs == {0: 0.999}  # the next rung ends at 80 rounds
    with pytest.raises(ValueError):
        should_prune("hyperband", {20: 0.5}, {}, [], report_every=20)


# --------------------------------------------------------------------------- the trial's reporter


def test_reporter_records_decides_and_keeps_its_decision_over_a_redelivery() -> None:
    from functions.trial.progress import MemoryProgressStore, Reporter

    store = MemoryProgressStore()
    for n in range(4):  # four trials completed rung 0 (20 rounds) well
        leader = Reporter(store, "s", n, pruner="successive_halving", report_every=20)
        assert not leader(20, 0.99)
        leader.finish("complete")
    seen: list[tuple[int, float, bool]] = []
    trial = Reporter(
        store, "s", 4, pruner="successive_halving", report_every=20, on_report=lambda *a: seen.append(a)
    )
    assert trial(20, 0.5)
    assert seen == [(20, 0.5, True)]
    doc = store.get("s", 4)
    assert doc is not None and (doc.state, doc.pruned_step, doc.rungs) == ("pruned", 20, {0: 0.5})
    # killed before replying, redelivered: the same decision, even if the others changed since
    again = Reporter(store, "s", 4, pruner="successive_halving", report_every=20)
    assert again(20, 0.5)
    # a winner keeps its rung: a redelivered winner does not compete at rung 0 again
    winner = Reporter(store, "s", 5, pruner="successive_halving", report_every=20)
    assert not winner(20, 0.995)
    assert store.get("s", 5).rungs == {0: 0.995}  # type: ignore[union-attr]
    for n in range(6, 12):
        Reporter(store, "s", n, pruner="successive_halving", report_every=20)(20, 0.999)
    resumed = Reporter(store, "s", 5, pruner="successive_halving", report_every=20)
    assert not resumed(20, 0.995)


def test_reporter_without_pruning_shares_nothing() -> None:
    """Pruner ``none``: the scores stay in the trial (for its MLflow run); no record is read or
    written and no progress is reported (so no ``tuning.trial.progress``)."""
    from functions.trial.progress import MemoryProgressStore, Reporter

    class Untouchable(MemoryProgressStore):
        def get(self, study_id: str, number: int):  # type: ignore[no-untyped-def]
            raise AssertionError("read a record with pruning off")

        def put(self, study_id: str, doc) -> None:  # type: ignore[no-untyped-def]
            raise AssertionError("wrote a record with pruning off")

        def all(self, study_id: str) -> list:  # type: ignore[type-arg]
            raise AssertionError("read the records with pruning off")

    seen: list[tuple[int, float, bool]] = []
    plain = Reporter(
        Untouchable(), "s", 12, pruner="none", report_every=20, on_report=lambda *a: seen.append(a)
    )
    assert not plain(20, 0.1)
    assert not plain(40, 0.2)
    plain.finish("complete")
    assert seen == []
    assert plain.doc.values == {20: 0.1, 40: 0.2} and plain.doc.state == "complete"


def test_reporter_turns_store_errors_into_a_retry() -> None:
    from functions.trial.progress import MemoryProgressStore, ProgressUnavailable, Reporter

    class Down(MemoryProgressStore):
        def all(self, study_id: str) -> list:  # type: ignore[type-arg]
            raise ConnectionError("object store down")

    reporter = Reporter(Down(), "s", 0, pruner="median", report_every=20)
    with pytest.raises(ProgressUnavailable):
        reporter(20, 0.9)
