"""The ``training:`` section of a data contract: how big a training set may get, and how it is sampled.

A dataset version with more rows than ``max_rows`` is not joined whole: its rows are sampled
first (``shared.training_sample``), stratified by a column so each class keeps its share, with
at least ``min_per_class`` rows of each class (all of them when a class has fewer), the rows
picked by a hash of (``seed``, dataset version, row position)::

    training:
      max_rows: 500000          # a version with more rows is sampled down to this many
      stratify: machine_failure # the column whose classes keep their shares (default: the label)
      min_per_class: 1000       # a rare class keeps at least this many rows (or all it has);
                                # default 1000, or max_rows / the declared classes when smaller
      seed: 42                  # with the version, fixes the sample

Without the section these defaults apply: a version of up to 500,000 rows (AI4I has 10,000)
trains on every row, exactly as without sampling. Stdlib only (the serving image imports it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["DEFAULT_MAX_ROWS", "SampleRule", "parse_training"]

DEFAULT_MAX_ROWS = 500_000
DEFAULT_MIN_PER_CLASS = 1_000
DEFAULT_SEED = 42
_FIELDS = ("max_rows", "stratify", "min_per_class", "seed")


@dataclass(frozen=True)
class SampleRule:
    """The declared rule a training set is sampled by (``stratify`` resolved to a column name)."""

    max_rows: int
    stratify: str
    min_per_class: int = DEFAULT_MIN_PER_CLASS
    seed: int = DEFAULT_SEED

    def to_doc(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        """``max_rows=…,stratify=…,min_per_class=…,seed=…`` (a tag value)."""
        return ",".join(f"{k}={v}" for k, v in self.to_doc().items())


def _integer(doc: Mapping[str, Any], name: str, default: int, where: str, minimum: int) -> int:
    value = doc.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{where}: training.{name} must be an integer >= {minimum}, got {value!r}")
    return value


def parse_training(
    doc: Any,
    where: str,
    *,
    label: str,
    columns: Sequence[str],
    classes: Mapping[str, Sequence[Any] | None],
) -> SampleRule:
    """The ``training:`` section (the defaults when absent).

    ``columns``: the contract's discrete columns (int, string, category: what ``stratify`` may
    name); ``classes``: each column's declared ``values`` (None when not declared). Raises ``ValueError`` naming the field.
    """
    if doc is None:
        doc = {}
    if not isinstance(doc, Mapping):
        raise ValueError(f"{where}: training must be a mapping with fields {list(_FIELDS)}")
    unknown = sorted(set(doc) - set(_FIELDS))
    if unknown:
        raise ValueError(f"{where}: training has unknown field(s) {unknown}; known: {list(_FIELDS)}")
    max_rows = _integer(doc, "max_rows", DEFAULT_MAX_ROWS, where, 1)
    stratify = doc.get("stratify", label)
    if not isinstance(stratify, str) or stratify not in columns:
        raise ValueError(
            f"{where}: training.stratify: {stratify!r} is not a discrete (int, string or category) "
            f"column of the contract {sorted(columns)}"
        )
    declared = classes.get(stratify)
    default_min = min(DEFAULT_MIN_PER_CLASS, max_rows // max(1, len(declared or ())))
    min_per_class = _integer(doc, "min_per_class", default_min, where, 0)
    seed = _integer(doc, "seed", DEFAULT_SEED, where, 0)
    if declared is not None and min_per_class * len(declared) > max_rows:
        raise ValueError(
            f"{where}: training.min_per_class: {min_per_class} rows for each of the {len(declared)} "
            f"classes of {stratify} exceed training.max_rows {max_rows}"
        )
    return SampleRule(max_rows=max_rows, stratify=stratify, min_per_class=min_per_class, seed=seed)
