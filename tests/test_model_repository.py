"""predict's model repository at unit level: lazy loads, the memory budget's LRU, isolation.

Runs in the serving environment (where xgboost is), with stand-in holders and no registry;
the real ones are exercised on the stack by tests/test_predict.py."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest

from tests.conftest import REPO
from tests.fixtures_model import LITE_MODEL_NAME, MODEL_NAME, TEST_CONTRACTS

SCENARIOS = r"""
import json
from functions.predict.champion import LoadedModel
from functions.predict.inputs import BadInput
from functions.predict.repository import ModelRepository, Unavailable
from shared.contracts import all_contracts

AI4I, LITE = "ai4i-machine-failure", "ai4i-lite-failure"
loads, broken, sizes = [], set(), {}


class Holder:
    def __init__(self, contract, registry, s3, *, model_name, alias):
        self.model_name, self.current, self.unavailable_reason = model_name, None, "not loaded"

    def refresh(self):
        if self.model_name in broken:
            self.unavailable_reason = "its model.json does not parse"
            raise RuntimeError(self.unavailable_reason)
        if self.current is not None:
            return False
        loads.append(self.model_name)
        self.current = LoadedModel(self.model_name, "1", None, 0.5, {}, size_bytes=sizes.get(self.model_name, 10))
        return True

    def stop(self):
        pass


def fresh(budget=1000):
    loads.clear(); broken.clear(); sizes.clear()
    return ModelRepository(all_contracts(), NoRollouts(), None, budget_bytes=budget, holder_factory=Holder)


class NoRollouts:  # the registry as the repository reads it besides the holders: no rollout runs

    def model_tag(self, model_name, key):
        return None


def states(repo):  # the two models these scenarios load (the test contracts hold more)
    return {e.name: e.state for e in repo.index() if e.name in (AI4I, LITE)}


out = {}
repo = fresh()
before = states(repo)
by_dataset = repo.resolve("ai4i-lite")
repo.champion(LITE); repo.champion(LITE)
out["lazy"] = {"before": before, "by_dataset": by_dataset, "loads": list(loads), "after": states(repo)}

try:
    fresh().resolve("nope")
except BadInput as exc:
    out["unknown"] = [exc.status, str(exc)]

repo = fresh(budget=1000)
sizes.update({AI4I: 600, LITE: 600})
repo.champion(AI4I); repo.champion(LITE)
first = repo.loaded_names()
repo.refresh_all()  # the poll must not bring the evicted model back
polled = list(loads)
repo.champion(AI4I)
out["lru"] = {"after_lite": first, "after_poll": polled, "loads": list(loads), "after_ai4i": repo.loaded_names()}

repo = fresh()
broken.add(LITE)
try:
    repo.champion(LITE)
    out["isolation"] = "no error"
except Unavailable as exc:
    out["isolation"] = {"error": str(exc), "other": repo.champion(AI4I).version, "states": states(repo)}

repo = fresh()
repo.load(AI4I); repo.unload(AI4I)
unloaded = states(repo)[AI4I]
repo.load(AI4I)
out["unload"] = {"state": unloaded, "loads": list(loads)}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def outcomes() -> dict[str, Any]:
    result = subprocess.run(
        [str(REPO / ".venvs" / "serving" / "bin" / "python"), "-c", SCENARIOS],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "FAASPIPE_CONTRACT_DIRS": str(TEST_CONTRACTS)},
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_models_load_on_first_use_by_model_or_dataset_name(outcomes: dict[str, Any]) -> None:
    lazy = outcomes["lazy"]
    assert lazy["before"] == {MODEL_NAME: "UNLOADED", LITE_MODEL_NAME: "UNLOADED"}
    assert lazy["by_dataset"] == LITE_MODEL_NAME
    assert lazy["loads"] == [LITE_MODEL_NAME], "loaded once, on first use"
    assert lazy["after"] == {MODEL_NAME: "UNLOADED", LITE_MODEL_NAME: "READY"}


def test_an_unknown_name_is_404_listing_what_is_served(outcomes: dict[str, Any]) -> None:
    status, message = outcomes["unknown"]
    assert status == 404 and MODEL_NAME in message and "ai4i-lite" in message


def test_past_the_budget_the_least_recently_used_model_is_unloaded(outcomes: dict[str, Any]) -> None:
    lru = outcomes["lru"]
    assert lru["after_lite"] == [LITE_MODEL_NAME], "600 + 600 > 1000: the older model went"
    assert lru["after_poll"] == [MODEL_NAME, LITE_MODEL_NAME], "the alias poll does not reload it"
    assert lru["loads"] == [MODEL_NAME, LITE_MODEL_NAME, MODEL_NAME], "and is loaded again when asked"
    assert lru["after_ai4i"] == [MODEL_NAME]


def test_one_models_failure_is_its_own(outcomes: dict[str, Any]) -> None:
    isolation = outcomes["isolation"]
    assert "does not parse" in isolation["error"] and LITE_MODEL_NAME in isolation["error"]
    assert isolation["other"] == "1"
    assert isolation["states"] == {MODEL_NAME: "READY", LITE_MODEL_NAME: "UNAVAILABLE"}


def test_unload_then_load_again(outcomes: dict[str, Any]) -> None:
    assert outcomes["unload"] == {"state": "UNLOADED", "loads": [MODEL_NAME, MODEL_NAME]}
