"""The contract's ``training:`` rule and the sample of a version's rows it draws (units, no stack).

``shared/contracts/training.py`` (the rule, refused at load when wrong) and
``shared/training_sample.py`` (streamed over a Parquet's row groups, stratified, deterministic,
with its lineage); the retrain window samples the reference only (``functions/tune/window.py``).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from shared import training_sample
from shared.contracts import CONTRACTS_DIR, ContractError, get_contract, load_contract
from shared.contracts.training import DEFAULT_MAX_ROWS, SampleRule

CONTRACT = get_contract("ai4i")
LABEL = CONTRACT.label
NARROW = {CONTRACT.entity_key, training_sample.EVENT_TIMESTAMP, LABEL}


def _rule(max_rows: int, min_per_class: int = 0, seed: int = 42) -> SampleRule:
    return SampleRule(max_rows=max_rows, stratify=LABEL, min_per_class=min_per_class, seed=seed)


def _write(path: Path, rows: int, *, every: int = 29, row_group: int = 1000) -> pq.ParquetFile:
    """An offline-like Parquet: udi, event_timestamp, the label (1 on every ``every``-th row), features."""
    udi = np.arange(1, rows + 1, dtype=np.int64)
    frame = pd.DataFrame(
        {
            "udi": udi,
            "event_timestamp": pd.Timestamp("2020-01-01", tz="UTC") + pd.to_timedelta(udi, unit="min"),
            "type": np.where(udi % 3 == 0, "L", "M"),
            "torque_nm": (udi % 70).astype("float64"),
            "tool_wear_min": (udi % 200).astype("float64"),
            LABEL: (udi % every == 0).astype("int64"),
        }
    )
    frame.to_parquet(path, index=False, row_group_size=row_group)
    return pq.ParquetFile(path)


class Recording:
    """A ``ParquetFile`` that records the columns every read asks for."""

    def __init__(self, parquet: pq.ParquetFile) -> None:
        self._parquet = parquet
        self.columns: set[str] = set()
        self.whole_reads = 0

    def read_row_group(self, i: int, columns: list[str] | None = None, **kwargs: Any) -> pa.Table:
        if columns is None:
            self.whole_reads += 1
        self.columns |= set(columns or self._parquet.schema_arrow.names)
        return self._parquet.read_row_group(i, columns=columns, **kwargs)

    def read(self, *args: Any, **kwargs: Any) -> pa.Table:  # never used by the sampler
        self.whole_reads += 1
        return self._parquet.read(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._parquet, name)


# --------------------------------------------------------------------------- the rule


def _contract_with(tmp_path: Path, training: Any) -> Path:
    doc = yaml.safe_load((CONTRACTS_DIR / "ai4i.yaml").read_text())
    if training is ...:
        doc.pop("training", None)
    else:
        doc["training"] = training
    path = tmp_path / "contract.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_the_ai4i_contract_declares_its_rule_and_10000_rows_are_never_sampled() -> None:
    rule = CONTRACT.sample_rule
    assert rule == SampleRule(max_rows=500_000, stratify="machine_failure", min_per_class=1000, seed=42)
    assert training_sample.quotas({"0": 9661, "1": 339}, rule) == {"0": 9661, "1": 339}


def test_without_a_training_section_the_defaults_apply(tmp_path: Path) -> None:
    contract = load_contract(_contract_with(tmp_path, ...))
    assert contract.sample_rule.max_rows == DEFAULT_MAX_ROWS
    assert contract.sample_rule.stratify == contract.label


@pytest.mark.parametrize(
    ("training", "needle"),
    [
        ({"max_rows": 0}, "training.max_rows must be an integer >= 1, got 0"),
        ({"max_rows": -5}, "training.max_rows must be an integer >= 1, got -5"),
        ({"max_rows": "many"}, "training.max_rows must be an integer >= 1"),
        ({"max_rows": True}, "training.max_rows must be an integer >= 1"),
        ({"max_rows": 1000, "stratify": "nope"}, "training.stratify: 'nope' is not a discrete"),
        ({"max_rows": 1000, "stratify": "torque_nm"}, "training.stratify: 'torque_nm' is not a discrete"),
        ({"max_rows": 1000, "min_per_class": -1}, "training.min_per_class must be an integer >= 0"),
        ({"max_rows": 1000, "min_per_class": 600}, "training.min_per_class: 600 rows for each of the 2"),
        ({"max_rows": 1000, "seed": "x"}, "training.seed must be an integer >= 0"),
        ({"max_rows": 1000, "cap": 3}, "training has unknown field(s) ['cap']"),
        ([1000], "training must be a mapping"),
    ],
)
def test_a_bad_rule_is_refused_at_load_naming_the_field(tmp_path: Path, training: Any, needle: str) -> None:
    with pytest.raises(ContractError) as refused:
        load_contract(_contract_with(tmp_path, training))
    assert needle in str(refused.value)


def test_another_discrete_column_may_stratify(tmp_path: Path) -> None:
    contract = load_contract(_contract_with(tmp_path, {"max_rows": 100, "stratify": "type"}))
    assert contract.sample_rule.stratify == "type" and contract.sample_rule.min_per_class == 33


# --------------------------------------------------------------------------- quotas


def test_quotas_keep_each_class_share_and_sum_to_the_cap() -> None:
    out = training_sample.quotas({"0": 9_660_000, "1": 340_000}, _rule(500_000))
    assert out == {"0": 483_000, "1": 17_000}
    out = training_sample.quotas({"a": 1, "b": 1, "c": 1}, _rule(2))
    assert sum(out.values()) == 2 and out == {"a": 1, "b": 1, "c": 0}


def test_quotas_raise_a_rare_class_to_its_minimum_taken_from_the_big_one() -> None:
    out = training_sample.quotas({"0": 99_500, "1": 500}, _rule(10_000, min_per_class=200))
    assert out == {"0": 9_800, "1": 200}
    out = training_sample.quotas({"0": 99_970, "1": 30}, _rule(10_000, min_per_class=200))
    assert out == {"0": 9_970, "1": 30}  # a class with fewer rows than the minimum keeps them all


# --------------------------------------------------------------------------- the sample


def test_under_the_cap_every_row_is_used(tmp_path: Path) -> None:
    parquet = _write(tmp_path / "v.parquet", 5000)
    frame, sample = training_sample.entity_frame(CONTRACT, parquet, "v1")
    assert not sample.sampled and sample.rows_in == sample.rows_out == len(frame) == 5000
    assert frame["udi"].tolist() == list(range(1, 5001))
    assert sample.classes == {"0": (5000 - 172, 5000 - 172), "1": (172, 172)}
    assert sample.positions_sha256 == training_sample.positions_digest([np.arange(5000)])


def test_over_the_cap_classes_keep_their_shares(tmp_path: Path) -> None:
    parquet = _write(tmp_path / "v.parquet", 20_000, every=25)  # 800 positives: 4 %
    sample = training_sample.plan(parquet, _rule(2000), "v1")
    assert sample.sampled and sample.rows_in == 20_000 and sample.rows_out == 2000
    assert sample.classes == {"0": (19_200, 1920), "1": (800, 80)}
    labels = pq.read_table(tmp_path / "v.parquet", columns=[LABEL]).column(LABEL).to_numpy()
    chosen = labels[sample.positions]
    assert int(chosen.sum()) == 80 and len(np.unique(sample.positions)) == 2000
    # spread over the whole file, not the first rows: every quarter holds about a quarter
    quarters = np.bincount(sample.positions // 5000, minlength=4)
    assert all(400 <= q <= 600 for q in quarters), quarters


def test_a_rare_class_keeps_its_minimum(tmp_path: Path) -> None:
    parquet = _write(tmp_path / "v.parquet", 20_000, every=200)  # 100 positives: 0.5 %
    sample = training_sample.plan(parquet, _rule(2000, min_per_class=60), "v1")
    assert sample.classes == {"0": (19_900, 1940), "1": (100, 60)}
    sample = training_sample.plan(parquet, _rule(2000, min_per_class=500), "v1")
    assert sample.classes == {"0": (19_900, 1900), "1": (100, 100)}


def test_the_sample_is_deterministic_and_independent_of_row_groups(tmp_path: Path) -> None:
    small = _write(tmp_path / "small.parquet", 20_000, row_group=700)
    large = _write(tmp_path / "large.parquet", 20_000, row_group=20_000)
    first = training_sample.plan(small, _rule(3000, min_per_class=100), "v1")
    again = training_sample.plan(small, _rule(3000, min_per_class=100), "v1")
    other_groups = training_sample.plan(large, _rule(3000, min_per_class=100), "v1")
    assert np.array_equal(first.positions, again.positions)
    assert first.positions_sha256 == again.positions_sha256 == other_groups.positions_sha256
    other_seed = training_sample.plan(small, _rule(3000, min_per_class=100, seed=7), "v1")
    other_version = training_sample.plan(small, _rule(3000, min_per_class=100), "v2")
    assert len({first.positions_sha256, other_seed.positions_sha256, other_version.positions_sha256}) == 3
    assert other_seed.classes == first.classes == other_version.classes


def test_the_lineage_digest_is_stable(tmp_path: Path) -> None:
    """Pinned: a change of the keys or of the digest would silently re-sample every version
    and make recorded lineages unverifiable."""
    parquet = _write(tmp_path / "v.parquet", 10_000, every=29)
    sample = training_sample.plan(parquet, _rule(1000, min_per_class=50), "0a1b2c3d")
    assert sample.positions[:5].tolist() == [10, 16, 25, 27, 37]
    assert sample.positions_sha256 == "5326e661841a2938c23a55a649d0b9226205615ed4fd0aa3c51b082cb7bb37df"
    lineage = sample.lineage()
    assert lineage == {
        "dataset_version": "0a1b2c3d",
        "rule": {"max_rows": 1000, "stratify": LABEL, "min_per_class": 50, "seed": 42},
        "sampled": True,
        "rows_in": 10_000,
        "rows_out": 1000,
        "classes": {"0": {"rows_in": 9656, "rows_out": 950}, "1": {"rows_in": 344, "rows_out": 50}},
        "positions_sha256": sample.positions_sha256,
    }
    json.dumps(lineage)  # recorded as JSON (state, tags, meta.json, events)


@pytest.mark.parametrize("max_rows", [2000, 500_000])
def test_the_sampler_reads_only_the_key_the_event_time_and_the_label(tmp_path: Path, max_rows: int) -> None:
    contract = dataclasses.replace(CONTRACT, training=_rule(max_rows, min_per_class=100))
    recording = Recording(_write(tmp_path / "v.parquet", 20_000, every=25))
    frame, sample = training_sample.entity_frame(contract, recording, "v1")  # type: ignore[arg-type]
    assert recording.columns == NARROW and recording.whole_reads == 0  # never the features
    assert set(frame.columns) == NARROW and len(frame) == sample.rows_out == min(max_rows, 20_000)


def test_the_entity_frame_holds_the_chosen_rows_in_file_order(tmp_path: Path) -> None:
    recording = Recording(_write(tmp_path / "v.parquet", 20_000, every=25, row_group=999))
    sample = training_sample.plan(recording, _rule(1500, min_per_class=100), "v1")  # type: ignore[arg-type]
    table = training_sample.read_rows(recording, sample, sorted(NARROW))  # type: ignore[arg-type]
    assert recording.columns == {LABEL} | NARROW and recording.whole_reads == 0
    frame = table.to_pandas()
    assert frame["udi"].tolist() == (sample.positions + 1).tolist()
    assert int(frame[LABEL].sum()) == sample.classes["1"][1] == 100  # 60 by share, raised to 100


def test_lineage_tags_name_the_sample() -> None:
    assert training_sample.lineage_tags(None) == {}
    lineage = {"positions_sha256": "ab" * 32, "rows_in": 3, "rows_out": 3}
    tags = training_sample.lineage_tags(lineage)
    assert tags[training_sample.TAG_SAMPLE_DIGEST] == "ab" * 32
    assert json.loads(tags[training_sample.TAG_SAMPLE]) == lineage


# --------------------------------------------------------------------------- the retrain window


def test_a_retrain_window_samples_the_reference_and_keeps_the_newest_holdout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Only the reference (training data) is sampled: the time holdout stays the newest production
    rows, and the study records the reference's sample."""
    from functions.tune import window
    from shared import modelling

    def frame(udis: range, version: str | None = None) -> pd.DataFrame:
        out = pd.DataFrame(
            {
                "udi": list(udis),
                "event_timestamp": [
                    pd.Timestamp("2020-01-01", tz="UTC") + pd.Timedelta(minutes=u) for u in udis
                ],
                LABEL: [int(u % 4 == 0) for u in udis],
                **{f: 1.0 for f in CONTRACT.model_features if f != "type"},
                "type": "L",
            }
        )
        if version is not None:
            out[window.VERSION_COLUMN] = version
        return out

    lineage = {"dataset_version": "ref", "sampled": True, "rows_in": 10_000, "rows_out": 400}
    asked: list[str] = []

    def load_training_set(contract: Any, version: str) -> tuple[pd.DataFrame, dict[str, Any]]:
        asked.append(version)
        return frame(range(1, 401)), lineage  # the reference's sample

    monkeypatch.setattr(modelling, "load_training_set", load_training_set)
    monkeypatch.setattr(window, "production_versions", lambda c: [{"version": "p1", "event_time_max": "x"}])
    monkeypatch.setattr(window, "production_frame", lambda c, v: frame(range(20_001, 20_401), "p1"))
    config = window.WindowConfig(production_rows=20_000, min_production_rows=100, holdout_fraction=0.25)
    data = window.retrain_window(CONTRACT, "ref", config, fallback_fraction=0.25, seed=42)
    assert asked == ["ref"] and data.sample == lineage and data.split == "time"
    assert data.holdout["udi"].tolist() == list(range(20_301, 20_401))  # the newest 100, whole
    assert len(data.train) == 400 + 300 and data.train["udi"].max() == 20_300
    assert data.dataset_versions == ["ref", "p1"]


# --------------------------------------------------------------------------- through Feast (train env)

TRAIN_PYTHON = Path(__file__).resolve().parent.parent / ".venvs" / "train" / "bin" / "python"

FEAST_JOIN = r"""
import dataclasses, json, os, sys, warnings
from pathlib import Path
warnings.filterwarnings("ignore")
work = Path(sys.argv[1])
os.environ["FAASPIPE_STATE_DIR"] = str(work / "state")
import pandas as pd, pyarrow.parquet as pq
from functions.ingest.chunked import validate_file
from shared import feast_repo, modelling
from shared.contracts import get_contract

contract = dataclasses.replace(get_contract("ai4i"), streaming=None)  # no stream parts to look for
offline = work / "offline.parquet"
validate_file(contract, Path(sys.argv[2]), "csv", chunk_rows=1000, offline_path=offline,
              rejected_path=work / "rejected.csv")
feast_repo.offline_uri = lambda contract, version: str(offline)  # a local FileSource
capped = dataclasses.replace(
    contract, training=dataclasses.replace(contract.sample_rule, max_rows=1000, min_per_class=60)
)
frame, lineage = modelling.load_training_set(capped, "v1", pq.ParquetFile(offline))
whole, whole_lineage = modelling.load_training_set(contract, "v1", pq.ParquetFile(offline))
again, _ = modelling.load_training_set(capped, "v1", pq.ParquetFile(offline))
key = contract.entity_key
subset = whole.set_index(key).loc[frame[key]].reset_index()[frame.columns]
print(json.dumps({
    "rows": len(frame), "whole_rows": len(whole), "lineage": lineage, "whole_lineage": whole_lineage,
    "columns": list(frame.columns) == list(whole.columns),
    "same_as_whole": bool(frame.reset_index(drop=True).equals(subset)),
    "repeatable": bool(frame.equals(again)),
    "positives": int(frame[contract.label].sum()),
}))
"""


@pytest.mark.skipif(not TRAIN_PYTHON.exists(), reason="needs the train venv (.venvs/train)")
def test_the_sampled_entity_frame_joins_through_feast_to_the_same_rows(tmp_path: Path) -> None:
    """Feast joins the sampled entity frame (local FileSource, no stack): the sample's rows are
    exactly the uncapped frame's rows of those entities, and the lineage counts them."""
    import os
    import subprocess

    repo = Path(__file__).resolve().parent.parent
    csv = tmp_path / "rows.csv"
    subprocess.run(
        [str(TRAIN_PYTHON), "-m", "localdev.datagen", "--rows", "4000", "--seed", "3", str(csv)],
        cwd=repo,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    done = subprocess.run(
        [str(TRAIN_PYTHON), "-c", FEAST_JOIN, str(tmp_path), str(csv)],
        cwd=repo,
        env={**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=600,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    lineage, whole = report["lineage"], report["whole_lineage"]
    assert report["whole_rows"] == whole["rows_in"] == whole["rows_out"] == 4000 and not whole["sampled"]
    assert report["rows"] == lineage["rows_out"] == 1000 and lineage["sampled"]
    assert report["columns"] and report["same_as_whole"] and report["repeatable"]
    assert report["positives"] == lineage["classes"]["1"]["rows_out"] >= 60
    assert lineage["rule"]["max_rows"] == 1000 and lineage["dataset_version"] == "v1"


def test_the_sampled_entities_rows_are_written_for_the_join(tmp_path: Path) -> None:
    parquet = _write(tmp_path / "v.parquet", 5000, row_group=700)
    wanted = np.array([4999, 3, 700, 701, 3, 123456])  # a duplicate, one absent
    written = training_sample.write_entity_rows(parquet, "udi", wanted, tmp_path / "rows.parquet")
    table = pq.read_table(tmp_path / "rows.parquet")
    assert written == 4 and table.column("udi").to_pylist() == [3, 700, 701, 4999]
    assert table.schema == parquet.schema_arrow


def test_a_text_column_may_stratify(tmp_path: Path) -> None:
    parquet = _write(tmp_path / "v.parquet", 9000, row_group=1000)  # type: L on every 3rd row, else M
    rule = SampleRule(max_rows=900, stratify="type", min_per_class=0, seed=1)
    sample = training_sample.plan(parquet, rule, "v1")
    assert sample.classes == {"L": (3000, 300), "M": (6000, 600)}
    types = (
        pq.read_table(tmp_path / "v.parquet", columns=["type"]).column("type").to_numpy(zero_copy_only=False)
    )
    assert (types[sample.positions] == "L").sum() == 300
