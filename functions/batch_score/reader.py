"""A local CSV or Parquet file read in chunks of at most ``chunk_rows`` rows (bounded memory).

CSV is read with pandas' chunked reader, every cell as a stripped string (empty → null), as
ingest reads it; Parquet by record batches (``pyarrow.parquet.ParquetFile.iter_batches``), as
stored. Only one chunk is in memory at a time. The header (CSV) or schema (Parquet) is read
first, so a file's columns are known before any row is.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

__all__ = ["ChunkedTable", "UnreadableFile", "open_table"]

_CSV_ERRORS = (ValueError, OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError)


class UnreadableFile(ValueError):
    """The file is not a table in the detected format."""


@dataclass(frozen=True)
class ChunkedTable:
    """A table on local disk: its column names, and its rows chunk by chunk."""

    path: Path
    fmt: str  # csv | parquet
    columns: tuple[str, ...]
    chunk_rows: int

    def chunks(self, columns: Collection[str] | None = None) -> Iterator[pd.DataFrame]:
        """DataFrames of at most ``chunk_rows`` rows, in file order (index reset per chunk), with
        only ``columns`` (names from :attr:`columns`) when given: the others are not even parsed.

        Raises :class:`UnreadableFile` when the file turns out to be broken part-way through.
        """
        wanted = None if columns is None else set(columns)
        if self.fmt == "csv":
            yield from self._csv_chunks(wanted)
        else:
            yield from self._parquet_chunks(wanted)

    def _csv_chunks(self, wanted: set[str] | None) -> Iterator[pd.DataFrame]:
        usecols = None if wanted is None else (lambda name: str(name).strip() in wanted)
        try:
            with pd.read_csv(
                self.path, dtype=str, skipinitialspace=True, chunksize=self.chunk_rows, usecols=usecols
            ) as reader:
                for chunk in reader:
                    yield _stripped(chunk).reset_index(drop=True)
        except _CSV_ERRORS as exc:
            raise UnreadableFile(f"not a readable csv file: {type(exc).__name__}: {exc}") from exc

    def _parquet_chunks(self, wanted: set[str] | None) -> Iterator[pd.DataFrame]:
        names = None if wanted is None else [c for c in self.columns if c in wanted]
        try:
            with pq.ParquetFile(self.path) as parquet:
                for batch in parquet.iter_batches(batch_size=self.chunk_rows, columns=names):
                    yield batch.to_pandas()
        except (pa.ArrowException, OSError) as exc:
            raise UnreadableFile(f"not a readable parquet file: {type(exc).__name__}: {exc}") from exc


def _stripped(frame: pd.DataFrame) -> pd.DataFrame:
    stripped = {str(name).strip(): frame[name].str.strip() for name in frame.columns}
    return pd.DataFrame({name: col.mask(col == "") for name, col in stripped.items()})


def open_table(path: Path, fmt: str, chunk_rows: int) -> ChunkedTable:
    """Open ``path`` as ``fmt`` (``csv`` or ``parquet``) and read its columns, not its rows."""
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be at least 1, got {chunk_rows}")
    try:
        if fmt == "csv":
            columns = tuple(str(c).strip() for c in pd.read_csv(path, dtype=str, nrows=0).columns)
        elif fmt == "parquet":
            with pq.ParquetFile(path) as parquet:
                columns = tuple(parquet.schema_arrow.names)
        else:
            raise UnreadableFile(f"unsupported format {fmt!r}")
    except _CSV_ERRORS + (pa.ArrowException,) as exc:
        if isinstance(exc, UnreadableFile):
            raise
        raise UnreadableFile(f"not a readable {fmt} file: {type(exc).__name__}: {exc}") from exc
    return ChunkedTable(Path(path), fmt, columns, chunk_rows)
