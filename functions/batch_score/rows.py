"""One chunk of a file to score → the rows to score (as the model's input matrix) and the rejects.

The rules are predict's (``functions/predict/inputs.py``): every raw input of the data
contract must be present; numeric inputs must be finite numbers inside the contract's
``min``/``max``; categoricals one of the contract's values. Here they run column-wise over a
chunk; a rejected row's reason is the message ``check_row`` gives for it on the JSON route
(``row 17.torque_nm: -1.0 is below the contract minimum 0``), or ``missing value``. Rows that
pass are encoded by predict's own ``encode_rows``, so a row gets the same probability from a
file as from a request.

Columns may be named as in the file the contract describes (``Torque [Nm]``) or canonically
(``torque_nm``); other columns are ignored. Rows are numbered from 1 = the first data row.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

from functions.predict.inputs import BadInput, check_row, encode_rows
from shared.contracts import Contract

__all__ = ["ColumnMap", "FileProblem", "Prepared", "RejectedRow", "map_columns", "prepare"]


class FileProblem(ValueError):
    """The file as a whole cannot be scored (``rule``: missing_column, duplicate_column)."""

    def __init__(
        self, rule: Literal["missing_column", "duplicate_column"], column: str | None, message: str
    ) -> None:
        super().__init__(message)
        self.rule = rule
        self.column = column


@dataclass(frozen=True)
class ColumnMap:
    """Where each raw input (and the entity key, when present) is in the file."""

    inputs: dict[str, str]  # canonical raw input name -> file column
    entity: str | None  # file column of the contract's entity key, if the file has one

    @property
    def used(self) -> list[str]:
        """The file columns scoring reads (the rest of the file is never parsed)."""
        return [*self.inputs.values(), *([self.entity] if self.entity is not None else [])]


@dataclass(frozen=True)
class RejectedRow:
    row: int
    entity_id: str | None
    column: str
    reason: str


@dataclass(frozen=True)
class Prepared:
    """A chunk split: the rows to score (numbers, entity ids, encoded matrix) and the rejects."""

    rows: np.ndarray  # int64, 1-based row numbers of the rows to score
    entity_ids: list[str | None]
    matrix: np.ndarray  # float32 [len(rows), len(contract.encoded_features)]
    rejected: list[RejectedRow]

    @property
    def rows_in(self) -> int:
        return len(self.rows) + len(self.rejected)


def map_columns(contract: Contract, columns: Iterable[str]) -> ColumnMap:
    """Find the raw inputs and the entity key among the file's columns; raise :class:`FileProblem`."""
    by_name = {c.source: c.name for c in contract.columns} | {c.name: c.name for c in contract.columns}
    wanted = {*contract.raw_inputs, contract.entity_key}
    found: dict[str, str] = {}
    for column in columns:
        canonical = by_name.get(column)
        if canonical not in wanted:
            continue
        if canonical in found:
            raise FileProblem(
                "duplicate_column",
                canonical,
                f"columns {found[canonical]!r} and {column!r} are both {canonical}",
            )
        found[canonical] = column
    missing = [name for name in contract.raw_inputs if name not in found]
    if missing:
        sources = [contract.column(name).source for name in missing]
        raise FileProblem(
            "missing_column",
            missing[0],
            f"missing column(s) {sources} (or {missing}); a file to score needs the model's raw inputs "
            f"{list(contract.raw_inputs)}",
        )
    return ColumnMap({name: found[name] for name in contract.raw_inputs}, found.get(contract.entity_key))


def _text(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _as_text(column: pd.Series) -> pd.Series:
    return column.map(_text, na_action="ignore").astype(object)


def _numbers(column: pd.Series) -> np.ndarray:
    if pd.api.types.is_bool_dtype(column.dtype):  # True is not a reading (check_row agrees)
        return np.full(len(column), np.nan)
    return pd.to_numeric(column, errors="coerce").astype("float64").to_numpy()


def prepare(contract: Contract, chunk: pd.DataFrame, columns: ColumnMap, first_row: int) -> Prepared:
    """Split ``chunk`` (whose first row is file row ``first_row``) into rows to score and rejects."""
    size = len(chunk)
    names = contract.raw_inputs  # a computed property: read it once, not per row
    valid = np.ones(size, dtype=bool)
    failed_on = np.empty(size, dtype=object)
    values: dict[str, np.ndarray] = {}
    for name in names:
        column = chunk[columns.inputs[name]]
        if name in contract.categoricals:
            allowed = {_text(v): v for v in contract.categoricals[name]}
            text = _as_text(column)
            ok = text.isin(list(allowed)).to_numpy()
            values[name] = text.map(allowed).to_numpy(dtype=object)
        else:
            numbers = _numbers(column)
            spec = contract.column(name)
            with np.errstate(invalid="ignore"):
                ok = np.isfinite(numbers)
                if spec.min is not None:
                    ok &= numbers >= spec.min
                if spec.max is not None:
                    ok &= numbers <= spec.max
            values[name] = numbers
        failed_on[valid & ~ok] = name
        valid &= ok
    numbers_of_rows = np.arange(first_row, first_row + size, dtype=np.int64)
    entity_ids: list[str | None] = (
        [None if pd.isna(v) else v for v in _as_text(chunk[columns.entity])]
        if columns.entity is not None
        else [None] * size
    )
    keep = np.flatnonzero(valid)
    records = [
        dict(zip(names, row, strict=True)) for row in zip(*(values[n][keep] for n in names), strict=True)
    ]
    width = len(contract.encoded_features)
    matrix = encode_rows(contract, records) if records else np.empty((0, width), dtype=np.float32)
    rejected = [
        RejectedRow(
            int(numbers_of_rows[i]),
            entity_ids[i],
            str(failed_on[i]),
            _reason(contract, chunk, columns, i, int(numbers_of_rows[i]), str(failed_on[i])),
        )
        for i in np.flatnonzero(~valid)
    ]
    return Prepared(numbers_of_rows[keep], [entity_ids[i] for i in keep], matrix, rejected)


def _reason(
    contract: Contract, chunk: pd.DataFrame, columns: ColumnMap, i: int, row: int, failed: str
) -> str:
    """The JSON route's message for row ``i`` of the chunk (its first failing input)."""
    raw: dict[str, Any] = {}
    for name in contract.raw_inputs:
        value = chunk[columns.inputs[name]].iloc[i]
        if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA:
            if name == failed:
                return f"row {row}.{name}: missing value"
            value = None
        elif name not in contract.categoricals:
            number = _numbers(pd.Series([value]))[0]
            value = float(number) if not np.isnan(number) and not isinstance(value, bool) else value
        raw[name] = value
    try:
        check_row(contract, raw, f"row {row}")  # the inputs before ``failed`` passed: it names ``failed``
    except BadInput as exc:
        return str(exc)
    return f"row {row}.{failed}: rejected"  # not reached while these rules are check_row's
