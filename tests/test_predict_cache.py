"""predict's response cache: versioned keys, hits skip scoring, a failing cache costs only speed.

The in-process LRU, and Redis (the real server at 127.0.0.1:6379, a database of its own)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from functions.predict import cache
from functions.predict.cache import CachedScorer, row_key
from functions.predict.cache.base import ResponseCache
from functions.predict.cache.memory import MemoryCache
from functions.predict.cache.redis_cache import RedisCache
from localdev import preflight
from tests import services

ROW = {"type": "M", "air_temperature_k": 298.1, "torque_nm": 42.8}


class Model:
    """Scores rows by a per-version rule, counting the rows it was asked for."""

    def __init__(self, version: str) -> None:
        self.version, self.scored = version, 0

    def compute(self, rows: list[dict[str, Any]]) -> Any:
        def run(indexes: list[int]) -> list[tuple[float, int]]:
            self.scored += len(indexes)
            bump = 0.5 if self.version == "2" else 0.0
            return [(min(1.0, rows[i]["torque_nm"] / 100 + bump), int(self.version == "2")) for i in indexes]

        return run


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest) -> Iterator[ResponseCache]:
    if request.param == "memory":
        yield MemoryCache(100)
        return
    problem = services.redis_problem()
    if problem:
        pytest.skip(f"Redis not reachable: {problem}")
    with services.claimed_redis_db() as db:
        url = f"redis://{services.REDIS_HOST}:{services.REDIS_PORT}/{db}"
        assert getattr(cache.from_settings({"FAASPIPE_PREDICT_CACHE": url}), "kind", None) == "redis"
        yield RedisCache(url, ttl_s=60, prefix=f"faaspipe:test-cache-{uuid.uuid4().hex[:8]}:")


def test_a_repeated_row_is_a_hit_and_is_not_scored_again(backend: ResponseCache) -> None:
    scorer, model = CachedScorer(backend), Model("1")
    rows = [ROW, {**ROW, "torque_nm": 60.0}]
    first = scorer.score("m", "1", rows, model.compute(rows))
    assert model.scored == 2
    again = scorer.score(
        "m",
        "1",
        [rows[1], rows[0], {**ROW, "torque_nm": 10.0}],
        model.compute([rows[1], rows[0], {**ROW, "torque_nm": 10.0}]),
    )
    assert model.scored == 3, "only the new row is scored"
    assert again[:2] == [first[1], first[0]]


def test_a_new_version_never_gets_the_old_versions_answer(backend: ResponseCache) -> None:
    scorer, old, new = CachedScorer(backend), Model("1"), Model("2")
    before = scorer.score("m", "1", [ROW], old.compute([ROW]))
    after = scorer.score("m", "2", [ROW], new.compute([ROW]))
    assert new.scored == 1 and after != before
    assert scorer.score("m", "2", [ROW], new.compute([ROW])) == after and new.scored == 1


def test_keys_are_canonical_and_name_the_model_version() -> None:
    reordered = dict(reversed(list(ROW.items())))
    assert row_key("m", "1", ROW) == row_key("m", "1", reordered)
    assert row_key("m", "1", ROW) != row_key("m", "2", ROW) != row_key("n", "2", ROW)
    assert row_key("m", "1", ROW).startswith("m/1/")


def test_forget_model_drops_only_that_models_entries() -> None:
    memory = MemoryCache(100)
    scorer = CachedScorer(memory)
    scorer.score("a", "1", [ROW], Model("1").compute([ROW]))
    scorer.score("b", "1", [ROW], Model("1").compute([ROW]))
    scorer.forget_model("a")
    assert memory.get_many([row_key("a", "1", ROW), row_key("b", "1", ROW)])[0] is None
    assert memory.get_many([row_key("b", "1", ROW)])[0] is not None


def test_the_lru_keeps_at_most_its_size() -> None:
    memory = MemoryCache(2)
    memory.put_many({"a": b"1", "b": b"2"})
    memory.get_many(["a"])
    memory.put_many({"c": b"3"})
    assert memory.get_many(["a", "b", "c"]) == [b"1", None, b"3"] and len(memory) == 2


def test_a_failing_cache_still_answers() -> None:
    """Redis down: every row is scored, the answer is right, nothing raises."""
    down = cache.from_settings({"FAASPIPE_PREDICT_CACHE": "redis://127.0.0.1:1/0"})
    model = Model("1")
    scored = CachedScorer(down).score("m", "1", [ROW], model.compute([ROW]))
    assert scored == [(0.428, 0)] and model.scored == 1


def test_off_means_no_cache_and_a_bad_choice_is_refused() -> None:
    assert cache.from_settings({"FAASPIPE_PREDICT_CACHE": "off"}) is None
    assert isinstance(cache.from_settings({}), MemoryCache)
    with pytest.raises(ValueError, match="FAASPIPE_PREDICT_CACHE"):
        cache.from_settings({"FAASPIPE_PREDICT_CACHE": "memcached://h:1"})


def test_a_broken_extra_contract_is_refused_at_up_naming_the_file(tmp_path: Path) -> None:
    (tmp_path / "broken.yaml").write_text("name: broken\n")
    problems = preflight.check({"FAASPIPE_CONTRACT_DIRS": str(tmp_path)})
    assert [p.setting for p in problems] == ["FAASPIPE_CONTRACT_DIRS"]
    assert "broken.yaml" in str(problems[0])
