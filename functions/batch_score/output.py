"""The output files of one scored input, written chunk by chunk to local disk.

``predictions.parquet``: one row group per chunk, columns ``row`` (1-based row of the input),
``entity_id`` (the contract's entity key, null when the file has none), ``probability``,
``label``, ``model_name``, ``model_version``, ``request_id``. ``rejected.csv``: ``row``,
``entity_id``, ``column``, ``reason`` for every row not scored. Nothing is kept in memory but
the counts, so the upload (``Minio.fput_object``, multipart from disk) is bounded too.
"""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from functions.batch_score.rows import RejectedRow

__all__ = ["PREDICTIONS_FILE", "PREDICTION_SCHEMA", "REJECTED_FILE", "BatchWriter"]

PREDICTIONS_FILE = "predictions.parquet"
REJECTED_FILE = "rejected.csv"
REJECTED_COLUMNS = ("row", "entity_id", "column", "reason")
PREDICTION_SCHEMA = pa.schema(
    [
        ("row", pa.int64()),
        ("entity_id", pa.string()),
        ("probability", pa.float32()),
        ("label", pa.int8()),
        ("model_name", pa.string()),
        ("model_version", pa.string()),
        ("request_id", pa.string()),
    ]
)


class BatchWriter:
    """Appends scored rows and rejected rows of one input; ``close`` finishes both files."""

    def __init__(self, directory: Path, *, model_name: str, model_version: str, request_id: str) -> None:
        self.predictions_path = Path(directory) / PREDICTIONS_FILE
        self.rejected_path = Path(directory) / REJECTED_FILE
        self.model_name, self.model_version, self.request_id = model_name, model_version, request_id
        self.rows_scored = 0
        self.rows_rejected = 0
        self.rejected_by_column: Counter[str] = Counter()
        self._parquet = pq.ParquetWriter(self.predictions_path, PREDICTION_SCHEMA, compression="zstd")
        self._rejected_file = self.rejected_path.open("w", newline="")
        self._rejected = csv.writer(self._rejected_file)
        self._rejected.writerow(REJECTED_COLUMNS)

    def write_scored(
        self, rows: np.ndarray, entity_ids: list[str | None], probabilities: np.ndarray, labels: np.ndarray
    ) -> None:
        """One row group of predictions (nothing is written for an empty chunk)."""
        count = len(rows)
        if count == 0:
            return
        table = pa.Table.from_arrays(
            [
                pa.array(rows, pa.int64()),
                pa.array(entity_ids, pa.string()),
                pa.array(probabilities, pa.float32()),
                pa.array(labels, pa.int8()),
                pa.array([self.model_name] * count, pa.string()),
                pa.array([self.model_version] * count, pa.string()),
                pa.array([self.request_id] * count, pa.string()),
            ],
            schema=PREDICTION_SCHEMA,
        )
        self._parquet.write_table(table)
        self.rows_scored += count

    def write_rejected(self, rejected: list[RejectedRow]) -> None:
        for r in rejected:
            self._rejected.writerow((r.row, "" if r.entity_id is None else r.entity_id, r.column, r.reason))
            self.rejected_by_column[r.column] += 1
        self.rows_rejected += len(rejected)

    def close(self) -> None:
        """Finish both files (safe to call twice)."""
        if self._parquet is not None:
            self._parquet.close()
            self._parquet = None  # type: ignore[assignment]
        if not self._rejected_file.closed:
            self._rejected_file.close()

    def __enter__(self) -> BatchWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
