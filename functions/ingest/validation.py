"""Contract validation of one raw file (pure: bytes in, typed table and violations out).

Two levels, as the contract defines them:

- **file level** (the whole file is rejected): unreadable file, unsupported format, missing,
  extra or duplicated columns, values that do not parse as the column's type, duplicate
  entity keys, no rows;
- **row level** (the rows are rejected): nulls in non-nullable columns, values out of
  ``[min, max]``, not in ``values``, not matching ``pattern``. When more than the contract's
  ``max_rejected_fraction`` of the rows break row rules, the whole file is rejected too.

Rows are numbered from 1 = the first data row (in a CSV, line = row + 1 for the header).
Every violation lists all its rows; reports cap the list (``ROWS_LISTED``) and give the count.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from shared.contracts import Column, Contract

__all__ = [
    "EVENT_TIMESTAMP",
    "ROWS_LISTED",
    "Validation",
    "Violation",
    "detect_format",
    "offline_frame",
    "read_table",
    "validate",
    "validate_bytes",
]

EVENT_TIMESTAMP = "event_timestamp"
ROWS_LISTED = 100
Level = Literal["file", "row"]
# File-level rules, most severe first (the order reasons are reported in).
FILE_RULES = (
    "unreadable",
    "format",
    "empty",
    "missing_column",
    "extra_column",
    "duplicate_column",
    "type",
    "duplicate_key",
    "max_rejected_fraction",
)
_CONTENT_TYPES = {
    "text/csv": "csv",
    "application/csv": "csv",
    "text/plain": "csv",
    "application/vnd.apache.parquet": "parquet",
    "application/x-parquet": "parquet",
    "application/parquet": "parquet",
}
_EXTENSIONS = {"csv": "csv", "parquet": "parquet", "pq": "parquet"}
_TIME_UNITS = {"seconds": "s", "minutes": "min", "hours": "h", "days": "D"}


class UnreadableFile(ValueError):
    """The bytes are not a table in the detected format."""


@dataclass(frozen=True)
class Violation:
    """One broken rule, with every row (1-based) it applies to (none for whole-file rules)."""

    rule: str
    column: str | None
    message: str
    level: Level = "file"
    rows: tuple[int, ...] = ()

    @property
    def count(self) -> int:
        return len(self.rows) if self.rows else 1

    def to_report(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "level": self.level,
            "column": self.column,
            "count": self.count,
            "rows": list(self.rows[:ROWS_LISTED]),
            "rows_truncated": len(self.rows) > ROWS_LISTED,
            "message": self.message,
        }

    def to_reason(self) -> dict[str, Any]:
        """The ``RejectReason`` of ``dataset.rejected`` events."""
        return {"rule": self.rule, "column": self.column, "count": self.count, "message": self.message}


@dataclass
class Validation:
    """The outcome: typed canonical table (when parseable), violations, rows rejected."""

    contract: Contract
    rows_in: int
    violations: list[Violation] = field(default_factory=list)
    table: pd.DataFrame | None = None  # canonical columns, typed, every input row
    source: pd.DataFrame | None = None  # the table as read (file columns), every input row
    rejected: frozenset[int] = frozenset()  # 0-based positions of rows breaking row or type rules

    @property
    def file_rejected(self) -> bool:
        return any(v.level == "file" for v in self.violations)

    @property
    def rows_rejected(self) -> int:
        return len(self.rejected)

    @property
    def rows_written(self) -> int:
        return 0 if self.file_rejected else self.rows_in - self.rows_rejected

    def valid_table(self) -> pd.DataFrame:
        if self.table is None or self.file_rejected:
            raise ValueError("a rejected file has no valid rows")
        keep = [i for i in range(self.rows_in) if i not in self.rejected]
        return self.table.iloc[keep].reset_index(drop=True)

    def rejected_source_rows(self) -> pd.DataFrame:
        """The rejected rows as they were in the file (file columns), in file order."""
        if self.source is None:
            raise ValueError("the file could not be read")
        return self.source.iloc[sorted(self.rejected)].reset_index(drop=True)

    def ordered_violations(self) -> list[Violation]:
        """File-level rules first (by severity), then row rules by count, largest first."""

        def key(v: Violation) -> tuple[int, int, str]:
            if v.level == "file":
                rank = FILE_RULES.index(v.rule) if v.rule in FILE_RULES else len(FILE_RULES)
                return (0, rank, v.column or "")
            return (1, -v.count, f"{v.rule}:{v.column}")

        return sorted(self.violations, key=key)


def detect_format(key: str, content_type: str | None, head: bytes) -> str | None:
    """``csv`` or ``parquet`` from the key's extension, else the content type, else the bytes."""
    name = key.rsplit("/", 1)[-1]
    if "." in name:
        fmt = _EXTENSIONS.get(name.rsplit(".", 1)[1].lower())
        if fmt:
            return fmt
    if content_type:
        fmt = _CONTENT_TYPES.get(content_type.split(";")[0].strip().lower())
        if fmt:
            return fmt
    return "parquet" if head[:4] == b"PAR1" else None


def read_table(data: bytes, fmt: str) -> pd.DataFrame:
    """The raw table: CSV cells as stripped strings (empty → null), Parquet as stored."""
    try:
        if fmt == "csv":
            frame = pd.read_csv(io.BytesIO(data), dtype=str, skipinitialspace=True)
            stripped = {name: frame[name].str.strip() for name in frame.columns}
            return pd.DataFrame({name: col.mask(col == "") for name, col in stripped.items()})
        if fmt == "parquet":
            return pd.read_parquet(io.BytesIO(data))
    except (ValueError, OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise UnreadableFile(f"not a readable {fmt} file: {type(exc).__name__}: {exc}") from exc
    raise UnreadableFile(f"unsupported format {fmt!r}")


def validate_bytes(contract: Contract, data: bytes, *, key: str, content_type: str | None) -> Validation:
    """Detect the format, read and validate one object's bytes."""
    fmt = detect_format(key, content_type, data[:4])
    if fmt is None or fmt not in contract.formats:
        found = fmt or f"unknown (extension/content type {content_type!r})"
        message = f"format {found} is not one of the contract's formats {list(contract.formats)}"
        return Validation(contract, 0, [Violation("format", None, message)])
    try:
        raw = read_table(data, fmt)
    except UnreadableFile as exc:
        return Validation(contract, 0, [Violation("unreadable", None, str(exc))])
    return validate(contract, raw)


def _rows(mask: pd.Series | Any) -> tuple[int, ...]:
    return tuple(int(i) + 1 for i in mask.to_numpy().nonzero()[0])


def _map_columns(contract: Contract, raw: pd.DataFrame) -> tuple[dict[str, str], list[Violation]]:
    """File column → canonical name; source names and canonical names are both accepted."""
    by_name = {c.source: c.name for c in contract.columns} | {c.name: c.name for c in contract.columns}
    source_of = {c.name: c.source for c in contract.columns}
    mapping: dict[str, str] = {}
    violations: list[Violation] = []
    for column in map(str, raw.columns):
        canonical = by_name.get(column)
        if canonical is None:
            violations.append(Violation("extra_column", column, f"column {column!r} is not in the contract"))
        elif canonical in mapping.values():
            violations.append(
                Violation("duplicate_column", canonical, f"column {source_of[canonical]!r} appears twice")
            )
        else:
            mapping[column] = canonical
    for c in contract.columns:
        if c.name not in mapping.values():
            violations.append(
                Violation("missing_column", c.name, f"column {c.source!r} ({c.name}, {c.type}) is missing")
            )
    return mapping, violations


def _parse(column: Column, values: pd.Series) -> tuple[pd.Series, Violation | None]:
    """Typed values (nulls kept) and the rows whose non-null value does not parse."""
    present = values.notna()
    if column.type in ("int", "float"):
        numbers = pd.to_numeric(values, errors="coerce").astype("float64")
        finite = pd.Series(np.isfinite(numbers.to_numpy()), index=values.index)
        bad = present & ~finite
        if column.type == "int":
            bad |= present & finite & (numbers.fillna(0) % 1 != 0)
            parsed = numbers.where(~bad).round().astype("Int64")
        else:
            parsed = numbers.where(~bad)
    else:
        parsed = values.map(_as_text, na_action="ignore").astype(object)
        bad = pd.Series(False, index=values.index)
    if not bad.any():
        return parsed, None
    examples = ", ".join(repr(v) for v in values[bad].head(3))
    message = f"{int(bad.sum())} value(s) of {column.source!r} are not {column.type}s (e.g. {examples})"
    return parsed, Violation("type", column.name, message, rows=_rows(bad))


def _as_text(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _row_rules(column: Column, raw: pd.Series, parsed: pd.Series) -> Iterable[Violation]:
    """Row rules on the parsed values (values that did not parse are type violations, not nulls)."""
    missing = raw.isna()
    if not column.nullable and missing.any():
        yield Violation(
            "not_null",
            column.name,
            f"{int(missing.sum())} null value(s) in non-nullable column {column.source!r}",
            "row",
            _rows(missing),
        )
    present = parsed[parsed.notna()]
    if column.min is not None or column.max is not None:
        low = -math.inf if column.min is None else column.min
        high = math.inf if column.max is None else column.max
        out = present.astype("float64").lt(low) | present.astype("float64").gt(high)
        if out.any():
            yield Violation(
                "range",
                column.name,
                f"{int(out.sum())} value(s) of {column.source!r} outside [{column.min}, {column.max}]"
                f" (e.g. {present[out].head(3).tolist()})",
                "row",
                _rows(out.reindex(parsed.index, fill_value=False)),
            )
    if column.values is not None:
        allowed = set(column.values) | {str(v) for v in column.values}
        bad = ~present.map(lambda v: v in allowed).astype(bool)
        if bad.any():
            yield Violation(
                "allowed_values",
                column.name,
                f"{int(bad.sum())} value(s) of {column.source!r} not in {list(column.values)}"
                f" (e.g. {present[bad].head(3).tolist()})",
                "row",
                _rows(bad.reindex(parsed.index, fill_value=False)),
            )
    if column.pattern is not None:
        pattern = re.compile(column.pattern)
        bad = ~present.map(lambda v: bool(pattern.search(str(v)))).astype(bool)
        if bad.any():
            yield Violation(
                "pattern",
                column.name,
                f"{int(bad.sum())} value(s) of {column.source!r} do not match {column.pattern!r}"
                f" (e.g. {present[bad].head(3).tolist()})",
                "row",
                _rows(bad.reindex(parsed.index, fill_value=False)),
            )


def validate(contract: Contract, raw: pd.DataFrame) -> Validation:
    """Check a raw table against the contract; see the module docstring for the rules."""
    raw = raw.reset_index(drop=True)
    result = Validation(contract, rows_in=len(raw), source=raw)
    if len(raw) == 0:
        result.violations.append(Violation("empty", None, "the file has no data rows"))
    mapping, column_violations = _map_columns(contract, raw)
    result.violations.extend(column_violations)
    typed: dict[str, pd.Series] = {}
    bad_rows: set[int] = set()
    for file_column, name in mapping.items():
        column = contract.column(name)
        parsed, type_violation = _parse(column, raw[file_column])
        typed[name] = parsed
        for violation in filter(None, [type_violation, *_row_rules(column, raw[file_column], parsed)]):
            result.violations.append(violation)
            bad_rows.update(r - 1 for r in violation.rows)
    key = typed.get(contract.entity_key)
    if key is not None:
        duplicated = key.notna() & key.duplicated(keep=False)
        if duplicated.any():
            examples = sorted(set(key[duplicated].head(20).tolist()))[:5]
            result.violations.append(
                Violation(
                    "duplicate_key",
                    contract.entity_key,
                    f"{int(duplicated.sum())} rows share {int(key[duplicated].nunique())} entity key value(s)"
                    f" (e.g. {examples})",
                    rows=_rows(duplicated),
                )
            )
            bad_rows.update(int(i) for i in duplicated.to_numpy().nonzero()[0])
    result.rejected = frozenset(bad_rows)
    if len(typed) == len(contract.columns):
        result.table = pd.DataFrame({c.name: typed[c.name] for c in contract.columns})
    if result.rows_in and not result.file_rejected:
        fraction = result.rows_rejected / result.rows_in
        if fraction > contract.max_rejected_fraction or result.rows_rejected == result.rows_in:
            result.violations.append(
                Violation(
                    "max_rejected_fraction",
                    None,
                    f"{result.rows_rejected} of {result.rows_in} rows ({fraction:.2%}) break row rules;"
                    f" the contract allows at most {contract.max_rejected_fraction:.2%}",
                )
            )
    return result


def event_time(contract: Contract, values: pd.Series) -> pd.Series:
    """The contract's event time: origin + value × unit (UTC)."""
    unit = _TIME_UNITS.get(contract.timestamp_unit)
    if unit is None:
        raise ValueError(f"contract {contract.ref}: unsupported timestamp unit {contract.timestamp_unit!r}")
    origin = pd.Timestamp(contract.timestamp_origin)
    origin = origin.tz_localize("UTC") if origin.tzinfo is None else origin.tz_convert("UTC")
    return origin + pd.to_timedelta(values.astype("int64"), unit=unit)


def offline_frame(contract: Contract, table: pd.DataFrame) -> pd.DataFrame:
    """Valid rows for the offline store: canonical columns, derived features, ``event_timestamp``.

    Types are fixed by the contract (int → int64, or nullable Int64 for nullable columns;
    float → float64; string/category → string), so every version has the same schema.
    """
    out: dict[str, pd.Series] = {}
    for column in contract.columns:
        values = table[column.name]
        if column.type == "int":
            out[column.name] = values.astype("Int64" if column.nullable else "int64")
        elif column.type == "float":
            out[column.name] = values.astype("float64")
        else:
            out[column.name] = values.astype(object)
    frame = pd.DataFrame(out)
    derived = contract.derive({name: frame[name] for name in frame.columns})
    for name in contract.derived:
        frame[name] = pd.Series(derived[name], index=frame.index).astype("float64")
    frame[EVENT_TIMESTAMP] = event_time(contract, frame[contract.timestamp_source])
    return frame.reset_index(drop=True)
