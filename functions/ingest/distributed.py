"""Ingest validation on a Dask cluster: the chunks of ``chunked`` validated on the workers.

The replica that got the event streams the file once (Arrow's reader: C++, no Python per row)
and sends each chunk, as an Arrow batch with its first row's file position, to a worker; the
worker runs the same ``chunked._Validator`` on it (parsing, row rules, the offline frame: the
Python-heavy part) and sends back what the chunk adds. The replica merges those in file order
exactly as the in-process loop does (violation totals, the first rows listed, first messages,
entity keys for the whole-file duplicate check, rejected positions) and writes the offline
Parquet and the rejected rows itself, so both engines give the same report and the same bytes.

At most ``IN_FLIGHT_PER_THREAD`` chunks per worker thread are in flight: the replica's memory
stays bounded by the chunk size, like the in-process path.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from functions.ingest import validation as v
from functions.ingest.chunked import (
    ChunkOutcome,
    _Merged,
    _Validator,
    validate_batch,
)
from shared.contracts import Contract

__all__ = ["EngineError", "PartOutcome", "outcomes", "validate_part"]

IN_FLIGHT_PER_THREAD = 2


class EngineError(RuntimeError):
    """The Dask cluster failed (not the file): the event is retried, the file is not judged."""


@dataclass
class PartOutcome:
    """What one chunk validated on a worker adds to the file's validation."""

    rows: int
    merged: dict[tuple[str, str | None], _Merged]
    keys: list[np.ndarray]
    key_rows: list[np.ndarray]
    rejected: list[np.ndarray]
    chunks: list[tuple[Any, Any, bool]] = field(default_factory=list)  # frame, rejected, file_rejected


def validate_part(
    contract: Contract,
    mapping: dict[str, str],
    fmt: str,
    names: list[str],
    batch: pa.RecordBatch,
    offset: int,
) -> PartOutcome:
    """Validate one chunk whose first row is the file's row ``offset`` (0-based); on a worker."""
    validator = _Validator(contract)
    validator.mapping = mapping
    validator.result.rows_in = offset
    table, bad, rejected = validate_batch(validator, fmt, names, batch)
    frame = None
    if not validator.file_rejected and table is not None:
        frame = v.offline_frame(contract, table[~bad] if bad.any() else table)
    part = PartOutcome(
        validator.result.rows_in - offset,
        validator.merged,
        validator.keys,
        validator.key_rows,
        validator.rejected,
    )
    part.chunks.append((frame, rejected, validator.file_rejected))
    return part


def _merge(validator: _Validator, part: PartOutcome) -> Iterator[ChunkOutcome]:
    """Add a worker's chunk to the file's validation, as ``_Validator.chunk`` would have."""
    rejected_before = validator.file_rejected
    for key, found in part.merged.items():
        merged = validator.merged.setdefault(key, _Merged(found.level, found.message))
        merged.total += found.total
        if len(merged.rows) < v.ROWS_LISTED:
            merged.rows.extend(found.rows[: v.ROWS_LISTED - len(merged.rows)])
    validator.keys.extend(part.keys)
    validator.key_rows.extend(part.key_rows)
    validator.rejected.extend(part.rejected)
    validator.result.rows_in += part.rows
    validator.result.chunks += len(part.chunks)
    for frame, rejected, file_rejected in part.chunks:
        yield ChunkOutcome(None if rejected_before or file_rejected else frame, rejected)


def _result(future: Any) -> PartOutcome:
    try:
        return future.result()
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        raise  # the file's content: the same handling as in process
    except OSError as exc:  # distributed's CommClosedError is one: the cluster, not the file
        raise EngineError(f"dask cluster failed: {type(exc).__name__}: {exc}") from exc


def outcomes(
    client: Any, validator: _Validator, fmt: str, names: list[str], batches: Iterator[pa.RecordBatch]
) -> Iterator[ChunkOutcome]:
    """Each chunk's outcome, in file order, validated on ``client``'s workers."""
    window = max(2, IN_FLIGHT_PER_THREAD * sum(client.nthreads().values()))
    pending: deque[Any] = deque()
    offset = 0
    try:
        for batch in batches:
            pending.append(
                client.submit(
                    validate_part,
                    validator.contract,
                    validator.mapping,
                    fmt,
                    names,
                    batch,
                    offset,
                    pure=False,
                )
            )
            offset += batch.num_rows
            while len(pending) >= window:
                yield from _merge(validator, _result(pending.popleft()))
        while pending:
            yield from _merge(validator, _result(pending.popleft()))
    finally:
        for future in pending:
            future.cancel()
