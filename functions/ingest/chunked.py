"""Streamed contract validation: a file on disk in, offline Parquet and rejected rows on disk out.

The same rules as ``validation.validate`` (it reuses its column mapping, parsing and row rules),
applied to chunks of ``chunk_rows`` rows read with Arrow's streaming CSV reader or Parquet's
batch iterator, so the memory used grows with the chunk, not with the file:

- valid rows are written as they are validated, one Parquet row group per chunk, to
  ``offline_path`` (canonical columns, derived features, ``event_timestamp``; a schema fixed
  by the contract, so every chunk and every version has the same one);
- rows breaking row rules are appended to ``rejected_path`` in the file's format;
- violations are merged across chunks: counts are exact, each keeps the first
  ``ROWS_LISTED`` rows (file numbering) and the message of the first chunk where it occurs,
  with the total count; duplicate entity keys are found over the whole file at the end.

A CSV the streaming reader cannot parse (ragged rows, bad quoting) is validated by
``validation.validate_bytes`` in memory instead, so such files keep their exact old outcome.
"""

from __future__ import annotations

import csv
import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from functions.ingest import validation as v
from shared.contracts import Column, Contract

__all__ = ["ChunkedValidation", "chunk_rows", "ChunkedViolation", "offline_schema", "validate_file"]

# pandas.read_csv's default NA strings: the in-memory reader's notion of an empty cell.
NA_VALUES = (
    "",
    "#N/A",
    "#N/A N/A",
    "#NA",
    "-1.#IND",
    "-1.#QNAN",
    "-NaN",
    "-nan",
    "1.#IND",
    "1.#QNAN",
    "<NA>",
    "N/A",
    "NA",
    "NULL",
    "NaN",
    "None",
    "n/a",
    "nan",
    "null",
)
# What one row in a chunk costs while it is validated (strings, typed columns, the offline
# frame), and what a job costs whatever its chunk (reader and writer buffers, the entity keys
# of the whole file at 16 bytes a row): measured on AI4I rows, see ``chunk_rows``.
INGEST_ROW_BYTES = 4096
INGEST_FIXED_BYTES = 48 * 1024 * 1024
_NA_ARRAY = pa.array(NA_VALUES, pa.string())
_ARROW_TYPES = {"int": pa.int64(), "float": pa.float64(), "string": pa.string(), "category": pa.string()}


@dataclass(frozen=True)
class ChunkedViolation(v.Violation):
    """A violation merged over chunks: ``rows`` holds the first ``ROWS_LISTED``, ``total`` all."""

    total: int = 0

    @property
    def count(self) -> int:
        return self.total or super().count

    def to_report(self) -> dict[str, Any]:
        return {**super().to_report(), "rows_truncated": self.total > v.ROWS_LISTED}


@dataclass
class _Merged:
    level: v.Level
    message: str
    total: int = 0
    rows: list[int] = field(default_factory=list)


@dataclass
class ChunkedValidation:
    """What ``validation.Validation`` tells the handler, for a file validated in chunks."""

    contract: Contract
    rows_in: int = 0
    violations: list[v.Violation] = field(default_factory=list)
    rows_rejected: int = 0
    rows_valid_written: int = 0  # rows in ``offline_path`` (all valid rows when accepted)
    event_time_min: pd.Timestamp | None = None
    event_time_max: pd.Timestamp | None = None
    chunks: int = 0

    @property
    def file_rejected(self) -> bool:
        return any(x.level == "file" for x in self.violations)

    @property
    def rows_written(self) -> int:
        return 0 if self.file_rejected else self.rows_in - self.rows_rejected

    ordered_violations = v.Validation.ordered_violations


def chunk_rows(budget_bytes: int) -> int:
    """Rows per chunk for a memory budget (at least 1,000)."""
    return max(1000, (budget_bytes - INGEST_FIXED_BYTES) // INGEST_ROW_BYTES)


def offline_schema(contract: Contract) -> pa.Schema:
    """The offline Parquet's Arrow schema: contract types, derived floats, UTC event time."""
    fields = [pa.field(c.name, _ARROW_TYPES[c.type]) for c in contract.columns]
    fields += [pa.field(name, pa.float64()) for name in contract.derived]
    fields.append(pa.field(v.EVENT_TIMESTAMP, pa.timestamp("ns", tz="UTC")))
    return pa.schema(fields)


class _Fallback(Exception):
    """The streaming reader cannot parse this CSV: validate it in memory."""


def _csv_names(path: Path) -> list[str]:
    with open(path, newline="", encoding="utf-8") as f:
        header = next(csv.reader(f, skipinitialspace=True), None)
    if not header:
        raise v.UnreadableFile("not a readable csv file: EmptyDataError: No columns to parse from file")
    names: list[str] = []
    for i, name in enumerate(header):
        name = name or f"Unnamed: {i}"
        base, k = name, 0
        while name in names:  # pandas mangles duplicate names the same way
            k += 1
            name = f"{base}.{k}"
        names.append(name)
    return names


def _csv_chunks(path: Path, names: list[str], chunk_rows: int) -> Iterator[pa.RecordBatch]:
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    row_bytes = max(16, len(head) // max(1, head.count(b"\n")))
    reader = pacsv.open_csv(
        path,
        read_options=pacsv.ReadOptions(
            column_names=names, skip_rows=1, block_size=max(1 << 14, chunk_rows * row_bytes)
        ),
        convert_options=pacsv.ConvertOptions(
            column_types={n: pa.string() for n in names},
            strings_can_be_null=False,
            quoted_strings_can_be_null=False,
        ),
    )
    for whole in reader:
        for start in range(0, whole.num_rows, chunk_rows):
            yield whole.slice(start, chunk_rows)


def validate_batch(
    validator: _Validator, fmt: str, names: list[str], batch: pa.RecordBatch
) -> tuple[pd.DataFrame | None, np.ndarray, Any]:
    """Validate one chunk: its typed canonical table, its bad positions and its rejected rows in
    the file's format (None when none). A clean CSV chunk is recognised in Arrow
    (``_Validator.clean_chunk``); any other chunk takes the exact pandas path."""
    if fmt == "csv":
        cells = _Cells(names, [_clean(column) for column in batch.columns])
        clean = validator.clean_chunk(cells)
        if clean is not None:
            return clean, np.zeros(len(clean), dtype=bool), None
        raw = cells.frame()
    else:
        raw = batch.to_pandas()
    table, bad = validator.chunk(raw)
    return table, bad, rejected_rows(fmt, raw, batch, bad) if bad.any() else None


def rejected_rows(fmt: str, raw: pd.DataFrame, batch: pa.RecordBatch, bad: np.ndarray) -> Any:
    """A chunk's rejected rows in the file's format: CSV cells as a frame, Parquet as Arrow."""
    positions = np.flatnonzero(bad)
    return raw.iloc[positions] if fmt == "csv" else batch.take(pa.array(positions))


def append_rejected(fmt: str, rows: Any, rejected_path: Path, writer: pq.ParquetWriter | None) -> Any:
    """Append rejected rows to ``rejected_path``; the Parquet writer to close at the end."""
    if fmt == "csv":
        with open(rejected_path, "a", newline="") as out:
            rows.to_csv(out, index=False, header=out.tell() == 0)
        return writer
    writer = writer or pq.ParquetWriter(rejected_path, rows.schema)
    writer.write_batch(rows)
    return writer


def _clean(column: pa.Array) -> pa.Array:
    """CSV cells as the in-memory reader sees them: stripped strings, NA strings and blanks null."""
    na = pc.is_in(pc.utf8_ltrim(column, characters=" "), value_set=_NA_ARRAY)
    stripped = pc.utf8_trim_whitespace(column)
    return pc.if_else(pc.or_(na, pc.equal(stripped, "")), pa.scalar(None, pa.string()), stripped)


@dataclass(frozen=True)
class _Cells:
    """A CSV chunk's cleaned cells, still Arrow strings (a pandas frame only when needed)."""

    names: list[str]
    columns: list[pa.Array]

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            {
                name: pd.Series(column.to_numpy(zero_copy_only=False), dtype=object)
                for name, column in zip(self.names, self.columns, strict=True)
            }
        )


def _clean_column(column: Column, cells: pa.Array) -> pd.Series | None:
    """Typed values of a column every rule of which holds on every row of ``cells``, else None.

    A vectorised Arrow shortcut for the common case (a clean chunk): it answers only "all
    valid" (the same typed values ``validation._parse`` gives) or "don't know"; on "don't
    know" the chunk is validated the exact, slower way, which finds and reports the violations.
    """
    if not column.nullable and cells.null_count:
        return None
    present = cells.drop_null()
    numeric = column.type in ("int", "float")
    if column.pattern is not None:
        if numeric:
            return None
        try:
            if not pc.all(pc.match_substring_regex(present, column.pattern)).as_py() and len(present):
                return None
        except pa.ArrowInvalid:
            return None
    if not numeric:
        if column.min is not None or column.max is not None:
            return None
        if column.values is not None and len(present):
            allowed = pa.array(sorted({x for x in column.values if isinstance(x, str)}), pa.string())
            if not pc.all(pc.is_in(present, value_set=allowed)).as_py():
                return None
        return pd.Series(cells.to_numpy(zero_copy_only=False), dtype=object)
    try:
        if column.type == "int":  # as validation._parse: through float64, then Int64
            numbers = cells.cast(pa.int64()).cast(pa.float64())
            typed = numbers.cast(pa.int64())
        else:
            numbers = typed = cells.cast(pa.float64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    values = numbers.drop_null()
    if len(values):
        if not pc.all(pc.is_finite(values)).as_py():
            return None
        low, high = pc.min_max(values).values()
        if column.min is not None and low.as_py() < column.min:
            return None
        if column.max is not None and high.as_py() > column.max:
            return None
        if column.values is not None:
            allowed_numbers = [
                float(x) for x in column.values if isinstance(x, int | float) and not isinstance(x, bool)
            ]
            if not pc.all(pc.is_in(values, value_set=pa.array(allowed_numbers, pa.float64()))).as_py():
                return None
    if column.type == "int":
        return typed.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get)
    return pd.Series(typed.to_numpy(zero_copy_only=False), dtype="float64")


def _parquet_chunks(path: Path, chunk_rows: int) -> tuple[list[str], Iterator[pa.RecordBatch]]:
    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise v.UnreadableFile(f"not a readable parquet file: {type(exc).__name__}: {exc}") from exc
    metadata = parquet.schema_arrow.pandas_metadata or {}
    index = [c for c in metadata.get("index_columns", []) if isinstance(c, str)]
    names = [n for n in parquet.schema_arrow.names if n not in index]

    def chunks() -> Iterator[pa.RecordBatch]:
        yield from parquet.iter_batches(batch_size=chunk_rows, columns=names)

    return names, chunks()


def _parse(column: Column, values: pd.Series) -> tuple[pd.Series, v.Violation | None]:
    """``validation._parse``, on numbers Arrow parsed when it parses them all (much faster)."""
    if column.type in ("int", "float") and values.dtype == object:
        try:
            numbers = pa.array(values, pa.string()).cast(pa.int64() if column.type == "int" else pa.float64())
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            numbers = None
        if numbers is not None:
            fast = pd.Series(numbers.to_numpy(zero_copy_only=False), index=values.index, dtype="float64")
            parsed, violation = v._parse(column, fast)
            if violation is None:
                return parsed, None
    if column.type not in ("int", "float") and pd.api.types.infer_dtype(values, skipna=True) in (
        "string",
        "empty",
    ):
        return values.astype(object), None  # text already: _as_text would change nothing
    return v._parse(column, values)


def _row_rules(column: Column, raw: pd.Series, parsed: pd.Series) -> list[v.Violation]:
    """``validation._row_rules`` with the per-value checks vectorised (same violations)."""
    slow = v.Column(**{**column.__dict__, "values": None, "pattern": None})
    found = list(v._row_rules(slow, raw, parsed))  # not_null and range are vectorised there
    present = parsed[parsed.notna()]
    if column.values is not None and len(present):
        if present.dtype == object:
            allowed: list[Any] = list(set(column.values) | {str(x) for x in column.values})
        else:
            allowed = [x for x in column.values if isinstance(x, int | float) and not isinstance(x, bool)]
        bad = ~present.isin(allowed)
        if bad.any():
            found.append(
                v.Violation(
                    "allowed_values",
                    column.name,
                    f"{int(bad.sum())} value(s) of {column.source!r} not in {list(column.values)}"
                    f" (e.g. {present[bad].head(3).tolist()})",
                    "row",
                    v._rows(bad.reindex(parsed.index, fill_value=False)),
                )
            )
    if column.pattern is not None and len(present):
        texts = present.astype(str).tolist()
        try:
            matches = pc.match_substring_regex(pa.array(texts, pa.string()), column.pattern)
            bad = pd.Series(~matches.to_numpy(zero_copy_only=False), index=present.index)
        except pa.ArrowInvalid:  # not RE2 syntax: Python's re, value by value
            pattern = re.compile(column.pattern)
            bad = pd.Series([not pattern.search(t) for t in texts], index=present.index)
        if bad.any():
            found.append(
                v.Violation(
                    "pattern",
                    column.name,
                    f"{int(bad.sum())} value(s) of {column.source!r} do not match {column.pattern!r}"
                    f" (e.g. {present[bad].head(3).tolist()})",
                    "row",
                    v._rows(bad.reindex(parsed.index, fill_value=False)),
                )
            )
    return found


def _offset(violation: v.Violation, offset: int) -> v.Violation:
    return v.Violation(
        violation.rule,
        violation.column,
        violation.message,
        violation.level,
        tuple(r + offset for r in violation.rows),
    )


class _Validator:
    def __init__(self, contract: Contract) -> None:
        self.contract = contract
        self.result = ChunkedValidation(contract)
        self.merged: dict[tuple[str, str | None], _Merged] = {}
        self.mapping: dict[str, str] = {}
        self.keys: list[np.ndarray] = []
        self.key_rows: list[np.ndarray] = []
        self.rejected: list[np.ndarray] = []  # per chunk: 0-based file positions of rejected rows

    def add(self, violation: v.Violation) -> None:
        merged = self.merged.setdefault(
            (violation.rule, violation.column), _Merged(violation.level, violation.message)
        )
        merged.total += violation.count if violation.rows else 1
        if len(merged.rows) < v.ROWS_LISTED:
            merged.rows.extend(violation.rows[: v.ROWS_LISTED - len(merged.rows)])

    def map_columns(self, names: list[str]) -> None:
        self.mapping, column_violations = v._map_columns(self.contract, pd.DataFrame(columns=names))
        for violation in column_violations:
            self.add(violation)

    def clean_chunk(self, cells: _Cells) -> pd.DataFrame | None:
        """The typed canonical table of a chunk all of whose rows are valid, else None.

        None says only "not known to be clean": ``chunk`` then validates it the exact way.
        """
        if len(self.mapping) != len(self.contract.columns):
            return None
        by_name = dict(zip(cells.names, cells.columns, strict=True))
        typed: dict[str, pd.Series] = {}
        for file_column, name in self.mapping.items():
            parsed = _clean_column(self.contract.column(name), by_name[file_column])
            if parsed is None:
                return None
            typed[name] = parsed
        n = len(cells.columns[0]) if cells.columns else 0
        self._count(typed, np.zeros(n, dtype=bool))
        return pd.DataFrame({c.name: typed[c.name] for c in self.contract.columns})

    def _count(self, typed: dict[str, pd.Series], bad: np.ndarray) -> None:
        offset = self.result.rows_in
        key = typed.get(self.contract.entity_key)
        if key is not None:
            present = key.notna().to_numpy()
            self.keys.append(key[present].to_numpy(dtype="int64"))
            self.key_rows.append(np.flatnonzero(present) + offset)
        self.rejected.append(np.flatnonzero(bad) + offset)
        self.result.rows_in += len(bad)
        self.result.chunks += 1

    def chunk(self, raw: pd.DataFrame) -> tuple[pd.DataFrame | None, np.ndarray]:
        """Validate one chunk; its typed canonical table (all columns mapped) and bad positions."""
        offset = self.result.rows_in
        n = len(raw)
        raw = raw.reset_index(drop=True)
        typed: dict[str, pd.Series] = {}
        bad = np.zeros(n, dtype=bool)
        for file_column, name in self.mapping.items():
            column = self.contract.column(name)
            parsed, type_violation = _parse(column, raw[file_column])
            typed[name] = parsed
            for violation in filter(None, [type_violation, *_row_rules(column, raw[file_column], parsed)]):
                self.add(_offset(violation, offset))
                bad[[r - 1 for r in violation.rows]] = True
        self._count(typed, bad)
        table = (
            pd.DataFrame({c.name: typed[c.name] for c in self.contract.columns})
            if len(typed) == len(self.contract.columns)
            else None
        )
        return table, bad

    @property
    def file_rejected(self) -> bool:
        return any(m.level == "file" for m in self.merged.values())

    def finish(self) -> ChunkedValidation:
        result = self.result
        rejected = np.concatenate(self.rejected) if self.rejected else np.zeros(0, dtype="int64")
        if result.rows_in == 0:
            self.add(v.Violation("empty", None, "the file has no data rows"))
        if self.keys:
            rejected = np.union1d(rejected, self._duplicate_keys())
        result.rows_rejected = int(len(np.unique(rejected)))
        result.violations = [
            ChunkedViolation(
                rule,
                column,
                re.sub(r"^\d+", str(m.total), m.message) if m.rows else m.message,
                m.level,
                tuple(m.rows),
                total=m.total if m.rows else 0,
            )
            for (rule, column), m in self.merged.items()
        ]
        if result.rows_in and not result.file_rejected:
            fraction = result.rows_rejected / result.rows_in
            c = self.contract
            if fraction > c.max_rejected_fraction or result.rows_rejected == result.rows_in:
                result.violations.append(
                    v.Violation(
                        "max_rejected_fraction",
                        None,
                        f"{result.rows_rejected} of {result.rows_in} rows ({fraction:.2%}) break row rules;"
                        f" the contract allows at most {c.max_rejected_fraction:.2%}",
                    )
                )
        return result

    def _duplicate_keys(self) -> np.ndarray:
        keys, rows = np.concatenate(self.keys), np.concatenate(self.key_rows)
        self.keys, self.key_rows = [], []
        order = np.argsort(keys, kind="stable")
        ordered = keys[order]
        same = ordered[1:] == ordered[:-1]
        dup_sorted = np.zeros(len(keys), dtype=bool)
        dup_sorted[1:] |= same
        dup_sorted[:-1] |= same
        if not dup_sorted.any():
            return np.zeros(0, dtype="int64")
        duplicated = np.zeros(len(keys), dtype=bool)
        duplicated[order[dup_sorted]] = True
        positions, values = rows[duplicated], keys[duplicated]  # file order
        examples = sorted(set(values[:20].tolist()))[:5]
        message = (
            f"{len(positions)} rows share {len(np.unique(values))} entity key value(s) (e.g. {examples})"
        )
        key = self.contract.entity_key
        self.merged[("duplicate_key", key)] = _Merged(
            "file", message, len(positions), [int(p) + 1 for p in positions[: v.ROWS_LISTED]]
        )
        return positions


def validate_file(
    contract: Contract,
    path: Path,
    fmt: str,
    *,
    chunk_rows: int,
    offline_path: Path,
    rejected_path: Path,
    client: Any = None,
) -> ChunkedValidation:
    """Validate ``path`` (format ``fmt``) chunk by chunk; write valid and rejected rows as they go.

    With a Dask ``client``, the chunks are validated on its workers
    (``functions.ingest.distributed``) and merged here in file order: the same outcome, row for
    row and byte for byte. ``offline_path`` is complete only when the result is not ``file_rejected``.
    """
    try:
        return _streamed(contract, path, fmt, chunk_rows, offline_path, rejected_path, client)
    except v.UnreadableFile as exc:
        return ChunkedValidation(contract, 0, [v.Violation("unreadable", None, str(exc))])
    except _Fallback:
        offline_path.unlink(missing_ok=True)
        rejected_path.unlink(missing_ok=True)
        return _in_memory(contract, path, fmt, offline_path, rejected_path)


@dataclass
class ChunkOutcome:
    """What one validated chunk adds to the outputs: offline rows (None: none to write) and
    rejected rows in the file's format (None: none)."""

    frame: pd.DataFrame | None
    rejected: Any


def _local(
    validator: _Validator, fmt: str, names: list[str], batches: Iterator[pa.RecordBatch]
) -> Iterator[ChunkOutcome]:
    for batch in batches:
        table, bad, rejected = validate_batch(validator, fmt, names, batch)
        if validator.file_rejected or table is None:
            yield ChunkOutcome(None, rejected)
        else:
            yield ChunkOutcome(
                v.offline_frame(validator.contract, table[~bad] if bad.any() else table), rejected
            )


def _streamed(
    contract: Contract,
    path: Path,
    fmt: str,
    chunk_rows: int,
    offline_path: Path,
    rejected_path: Path,
    client: Any = None,
) -> ChunkedValidation:
    validator = _Validator(contract)
    schema = offline_schema(contract)
    result = validator.result
    writer: pq.ParquetWriter | None = None
    rejected_writer: pq.ParquetWriter | None = None
    try:
        if fmt == "csv":
            names = _csv_names(path)
            batches = _csv_chunks(path, names, chunk_rows)
        else:
            names, batches = _parquet_chunks(path, chunk_rows)
        validator.map_columns(names)
        if client is None:
            outcomes = _local(validator, fmt, names, batches)
        else:
            from functions.ingest import distributed

            outcomes = distributed.outcomes(client, validator, fmt, names, batches)
        for outcome in outcomes:
            if outcome.rejected is not None:
                rejected_writer = append_rejected(fmt, outcome.rejected, rejected_path, rejected_writer)
            if outcome.frame is None:
                continue
            frame = outcome.frame
            if writer is None:  # the pandas metadata (nullable ints stay Int64 when read back)
                schema = schema.with_metadata(pa.Schema.from_pandas(frame, preserve_index=False).metadata)
                writer = pq.ParquetWriter(offline_path, schema)
            _write_valid(result, writer, schema, frame)
    except pa.ArrowInvalid as exc:
        if fmt == "csv":
            raise _Fallback(str(exc)) from exc
        raise v.UnreadableFile(f"not a readable {fmt} file: {type(exc).__name__}: {exc}") from exc
    except (UnicodeDecodeError, csv.Error, OSError) as exc:
        raise v.UnreadableFile(f"not a readable {fmt} file: {type(exc).__name__}: {exc}") from exc
    finally:
        if writer is not None:
            writer.close()
        if rejected_writer is not None:
            rejected_writer.close()
    if writer is None:  # no valid row: an empty file with the schema
        pq.write_table(schema.empty_table(), offline_path)
    return validator.finish()


def _write_valid(
    result: ChunkedValidation, writer: pq.ParquetWriter, schema: pa.Schema, frame: pd.DataFrame
) -> None:
    if len(frame):
        low, high = frame[v.EVENT_TIMESTAMP].min(), frame[v.EVENT_TIMESTAMP].max()
        result.event_time_min = low if result.event_time_min is None else min(low, result.event_time_min)
        result.event_time_max = high if result.event_time_max is None else max(high, result.event_time_max)
    writer.write_table(pa.Table.from_pandas(frame, schema=schema, preserve_index=False))
    result.rows_valid_written += len(frame)


def _in_memory(
    contract: Contract, path: Path, fmt: str, offline_path: Path, rejected_path: Path
) -> ChunkedValidation:
    """The in-memory validation of a CSV the streaming reader refused, as a ChunkedValidation."""
    old = v.validate_bytes(contract, path.read_bytes(), key=f"file.{fmt}", content_type=None)
    result = ChunkedValidation(contract, old.rows_in, list(old.violations), old.rows_rejected, chunks=1)
    if old.rows_rejected and old.source is not None:
        old.rejected_source_rows().to_csv(rejected_path, index=False)
    if old.file_rejected:
        pq.write_table(offline_schema(contract).empty_table(), offline_path)
        return result
    frame = v.offline_frame(contract, old.valid_table())
    schema = offline_schema(contract)
    schema = schema.with_metadata(pa.Schema.from_pandas(frame, preserve_index=False).metadata)
    with pq.ParquetWriter(offline_path, schema) as writer:
        _write_valid(result, writer, schema, frame)
    return result


def sha256_of(path: Path, block: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            digest.update(chunk)
    return digest.hexdigest()
