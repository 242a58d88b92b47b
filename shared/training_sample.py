"""The rows of a dataset version a training set is built from: all of them, or a declared sample.

A version with more rows than its contract's ``training.max_rows`` (``shared.contracts.training``)
is sampled *before* the point-in-time join, streaming over the offline Parquet's row groups and
reading only the entity key, the event time and the label (the stratify column, when it is
another one), never the features:

1. count the rows of each class (the stratify column alone);
2. give each class its share of ``max_rows`` (largest remainders), at least ``min_per_class``
   (all its rows when it has fewer), the excess taken from the biggest classes;
3. keep, per class, the rows with the smallest keys, a key being a 64-bit hash of
   (seed, dataset version, row position): the sample depends on nothing else (not on the row
   groups, the machine or the order of work), and two versions are sampled independently;
4. read the chosen rows' entity key, event time and label: the entity frame Feast joins.

Memory holds one row group's narrow columns plus the chosen rows' positions and keys. A version
under the cap is read whole (its three columns), as before. :class:`Sample` is the lineage: the
rule, rows in and out per class, and the SHA-256 of the chosen row positions (0-based positions
in the version's Parquet, ascending, as little-endian int64), so a model names exactly the rows
it was trained on. numpy and pyarrow are imported lazily (train environment).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared.contracts import Contract
from shared.contracts.training import SampleRule

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

__all__ = [
    "EVENT_TIMESTAMP",
    "Sample",
    "entity_frame",
    "lineage_tags",
    "offline_file",
    "plan",
    "positions_digest",
    "quotas",
    "read_rows",
    "row_keys",
    "write_entity_rows",
]

EVENT_TIMESTAMP = "event_timestamp"
NULL_CLASS = "<null>"
_GOLDEN = 0x9E3779B97F4A7C15
_MIX1 = 0xBF58476D1CE4E5B9
_MIX2 = 0x94D049BB133111EB


@dataclass(frozen=True)
class Sample:
    """Which rows of a version a training set uses, and the record of how they were chosen."""

    rule: SampleRule
    dataset_version: str
    rows_in: int
    classes: dict[str, tuple[int, int]]  # class (as text) -> (rows in the version, rows chosen)
    positions: Any  # sorted int64 numpy array of chosen row positions; None: every row
    positions_sha256: str

    @property
    def sampled(self) -> bool:
        return self.positions is not None

    @property
    def rows_out(self) -> int:
        return self.rows_in if self.positions is None else len(self.positions)

    def lineage(self) -> dict[str, Any]:
        """What is recorded with the study and the model (JSON)."""
        return {
            "dataset_version": self.dataset_version,
            "rule": self.rule.to_doc(),
            "sampled": self.sampled,
            "rows_in": self.rows_in,
            "rows_out": self.rows_out,
            "classes": {c: {"rows_in": n, "rows_out": k} for c, (n, k) in sorted(self.classes.items())},
            "positions_sha256": self.positions_sha256,
        }


TAG_SAMPLE = "faaspipe.training_sample"
TAG_SAMPLE_DIGEST = "faaspipe.training_sample_sha256"


def lineage_tags(lineage: Mapping[str, Any] | None) -> dict[str, str]:
    """MLflow tags of a sample's lineage: the whole record (compact JSON) and the positions' digest
    on its own (searchable); none for a study from before sampling (no lineage)."""
    if not lineage:
        return {}
    return {
        TAG_SAMPLE: json.dumps(lineage, sort_keys=True, separators=(",", ":")),
        TAG_SAMPLE_DIGEST: str(lineage["positions_sha256"]),
    }


# --------------------------------------------------------------------------- pure parts


def quotas(counts: Mapping[str, int], rule: SampleRule) -> dict[str, int]:
    """Rows to keep per class: every row when the total fits ``max_rows``; else each class's
    share of it (largest remainders, ties by class), raised to ``min_per_class`` (or all the
    class has), the excess taken from the classes with the most rows above their minimum."""
    total = sum(counts.values())
    if total <= rule.max_rows:
        return dict(counts)
    order = sorted(counts)
    exact = {c: rule.max_rows * counts[c] / total for c in order}
    out = {c: int(exact[c]) for c in order}
    spare = rule.max_rows - sum(out.values())
    for c in sorted(order, key=lambda c: (-(exact[c] - out[c]), c))[:spare]:
        out[c] += 1
    floors = {c: min(rule.min_per_class, counts[c]) for c in order}
    out = {c: max(out[c], floors[c]) for c in order}
    excess = sum(out.values()) - rule.max_rows
    for c in sorted(order, key=lambda c: (-(out[c] - floors[c]), c)):
        if excess <= 0:
            break
        cut = min(excess, out[c] - floors[c])
        out[c] -= cut
        excess -= cut
    return out


def row_keys(positions: np.ndarray, seed: int, version: str) -> np.ndarray:
    """A uint64 key per row position: SplitMix64 of an odd multiple of (position + 1) plus a salt
    from (seed, version). A bijection of the position, so keys never tie."""
    import numpy as np

    salt = int.from_bytes(hashlib.sha256(f"{seed}:{version}".encode()).digest()[:8], "little")
    z = (positions.astype(np.uint64) + np.uint64(1)) * np.uint64(_GOLDEN) + np.uint64(salt)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(_MIX1)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(_MIX2)
    return z ^ (z >> np.uint64(31))


def positions_digest(chunks: Iterator[np.ndarray] | Sequence[np.ndarray]) -> str:
    """SHA-256 of ascending row positions, as little-endian int64 (fed chunk by chunk)."""
    import numpy as np

    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(np.ascontiguousarray(chunk, dtype="<i8").tobytes())
    return digest.hexdigest()


def _all_positions(rows: int, step: int = 1 << 20) -> Iterator[np.ndarray]:
    import numpy as np

    for start in range(0, rows, step):
        yield np.arange(start, min(rows, start + step), dtype=np.int64)


# --------------------------------------------------------------------------- the Parquet


def _classes(table: pa.Table, column: str) -> np.ndarray:
    """The class of each row: an integer column's values as they are (``str`` of one is its
    class's name), any other column's as text, nulls as ``<null>``."""
    import pyarrow as pa
    import pyarrow.compute as pc

    values = table.column(column)
    if pa.types.is_integer(values.type) and values.null_count == 0:
        return values.to_numpy()
    if not pa.types.is_string(values.type):
        values = pc.cast(values, pa.string())
    return pc.fill_null(values, NULL_CLASS).to_numpy(zero_copy_only=False)


def plan(parquet: pq.ParquetFile, rule: SampleRule, version: str) -> Sample:
    """The rows of ``parquet`` to train on under ``rule`` (reads the stratify column only, and
    twice when the version is over the cap)."""
    import numpy as np

    groups = parquet.metadata.num_row_groups
    counts: dict[str, int] = {}
    for g in range(groups):
        found, n = np.unique(
            _classes(parquet.read_row_group(g, columns=[rule.stratify]), rule.stratify), return_counts=True
        )
        for c, k in zip(found.tolist(), n.tolist(), strict=True):
            counts[str(c)] = counts.get(str(c), 0) + int(k)
    rows = sum(counts.values())
    wanted = quotas(counts, rule)
    if rows <= rule.max_rows:
        classes = {c: (n, n) for c, n in counts.items()}
        return Sample(rule, version, rows, classes, None, positions_digest(_all_positions(rows)))
    partial = {c for c in counts if wanted[c] < counts[c]}
    kept: dict[str, tuple[np.ndarray, np.ndarray]] = {
        c: (np.empty(0, np.uint64), np.empty(0, np.int64)) for c in partial
    }
    whole: list[np.ndarray] = []
    offset = 0
    for g in range(groups):
        classes = _classes(parquet.read_row_group(g, columns=[rule.stratify]), rule.stratify)
        positions = np.arange(offset, offset + len(classes), dtype=np.int64)
        offset += len(classes)
        keys = row_keys(positions, rule.seed, version)
        for value in np.unique(classes).tolist():
            mask, c = classes == value, str(value)
            if c not in partial:
                whole.append(positions[mask])
                continue
            old_keys, old_positions = kept[c]
            all_keys = np.concatenate([old_keys, keys[mask]])
            all_positions = np.concatenate([old_positions, positions[mask]])
            if len(all_keys) > wanted[c]:
                best = (
                    np.argpartition(all_keys, wanted[c] - 1)[: wanted[c]]
                    if wanted[c]
                    else np.empty(0, np.int64)
                )
                all_keys, all_positions = all_keys[best], all_positions[best]
            kept[c] = (all_keys, all_positions)
    chosen = np.sort(np.concatenate([*whole, *(p for _, p in kept.values()), np.empty(0, np.int64)]))
    classes_out = {c: (counts[c], wanted[c]) for c in counts}
    return Sample(rule, version, rows, classes_out, chosen, positions_digest([chosen]))


def read_rows(parquet: pq.ParquetFile, sample: Sample, columns: Sequence[str]) -> pa.Table:
    """The sample's rows of ``parquet`` (only ``columns``), in file order, one row group at a time."""
    import numpy as np
    import pyarrow as pa

    parts: list[pa.Table] = []
    offset = 0
    for g in range(parquet.metadata.num_row_groups):
        n = parquet.metadata.row_group(g).num_rows
        group = parquet.read_row_group(g, columns=list(columns))
        if sample.positions is None:
            parts.append(group)
        else:
            lo, hi = np.searchsorted(sample.positions, [offset, offset + n])
            if hi > lo:
                parts.append(group.take(pa.array(sample.positions[lo:hi] - offset)))
        offset += n
    if not parts:
        return parquet.schema_arrow.empty_table().select(list(columns))
    return pa.concat_tables(parts)


def write_entity_rows(parquet: pq.ParquetFile, key: str, entities: np.ndarray, path: Path) -> int:
    """Every row of ``parquet`` whose ``key`` is one of ``entities`` (all columns), written to
    ``path`` one row group at a time; the rows written."""
    import pyarrow as pa
    import pyarrow.compute as pc

    wanted = pa.array(entities).unique()
    written = 0
    with _writer(path, parquet.schema_arrow) as writer:
        for g in range(parquet.metadata.num_row_groups):
            group = parquet.read_row_group(g)
            group = group.filter(
                pc.is_in(group.column(key), value_set=wanted.cast(group.schema.field(key).type))
            )
            if group.num_rows:
                writer.write_table(group)
                written += group.num_rows
    return written


@contextlib.contextmanager
def _writer(path: Path, schema: pa.Schema) -> Iterator[Any]:
    """A Parquet writer, closed (footer written) when the block ends."""
    import pyarrow.parquet as pq

    writer = pq.ParquetWriter(path, schema)
    try:
        yield writer
    finally:
        writer.close()


def entity_frame(contract: Contract, parquet: pq.ParquetFile, version: str) -> tuple[pd.DataFrame, Sample]:
    """The entity frame of a version's training set (entity key, event time, label) and its sample."""
    sample = plan(parquet, contract.sample_rule, version)
    columns = [contract.entity_key, EVENT_TIMESTAMP, contract.label]
    return read_rows(parquet, sample, columns).to_pandas(), sample


@contextlib.contextmanager
def offline_file(contract: Contract, version: str) -> Iterator[pq.ParquetFile]:
    """A version's offline Parquet, streamed from the object store to a temporary file (removed after)."""
    import pyarrow.parquet as pq

    from shared import layout, settings

    with tempfile.TemporaryDirectory(prefix="training-set-") as tmp:
        path = Path(tmp) / "offline.parquet"
        settings.s3_client().fget_object(
            layout.FEATURES, layout.offline_data(contract.name, version), str(path)
        )
        yield pq.ParquetFile(path)
