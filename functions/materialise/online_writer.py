"""Materialise a dataset version into the online store in bounded batches.

Feast's ``materialize`` reads the whole event-time range into one frame (and converts it
whole), so its memory grows with the version (cf. feast-dev/feast#2594). The online store
keeps one row per entity, the newest, so this writes only those, streaming:

1. the version's offline Parquet is streamed to a local file;
2. first pass over its row groups, entity key and event time only: the newest row of each
   entity with ``start <= event time <= end`` (the last one in file order on a tie);
3. second pass, row group by row group: those rows are converted by Feast
   (``_convert_arrow_to_proto``, the conversion ``materialize`` uses) and written with the
   online store's ``online_write_batch`` in batches of ``batch_rows`` (the same rows encoded
   directly on SQLite, staged per entity and upserted once in the table's key order by
   ``sqlite_fast``, and on Redis by ``redis_fast``: a server-side compare-and-set per chunk of
   entities, the next batch encoded while the server writes the previous one);
4. the materialised interval is recorded in the registry, as ``materialize`` does.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from functions.materialise import redis_fast, sqlite_fast
from shared import feast_repo, layout, settings
from shared.contracts import Contract

__all__ = ["batch_rows", "materialise", "newest_rows", "write_online"]

# What one row of a batch costs while Feast converts and writes it (protos per feature):
# the batch is the memory budget over this.
MATERIALISE_ROW_BYTES = 16_384
# ... and what a job costs whatever its batch (row groups read, the keys and times in range).
MATERIALISE_FIXED_BYTES = 64 * 1024 * 1024


def batch_rows(budget_bytes: int) -> int:
    """Rows per online write for a memory budget (at least 500)."""
    return max(500, (budget_bytes - MATERIALISE_FIXED_BYTES) // MATERIALISE_ROW_BYTES)


def newest_rows(parquet: pq.ParquetFile, key: str, start: datetime, end: datetime) -> list[np.ndarray]:
    """Per row group, the positions of the rows to write: the newest per entity in range."""
    keys, times, groups, positions = [], [], [], []
    low, high = pa.scalar(start, pa.timestamp("ns", tz="UTC")), pa.scalar(end, pa.timestamp("ns", tz="UTC"))
    for g in range(parquet.num_row_groups):
        table = parquet.read_row_group(g, columns=[key, feast_repo.EVENT_TIMESTAMP])
        ts = table.column(feast_repo.EVENT_TIMESTAMP).cast(pa.timestamp("ns", tz="UTC"))
        inside = pc.and_(pc.greater_equal(ts, low), pc.less_equal(ts, high)).to_numpy(zero_copy_only=False)
        where = np.flatnonzero(inside)
        keys.append(table.column(key).to_numpy()[where].astype("int64"))
        times.append(ts.cast(pa.int64()).to_numpy()[where])
        groups.append(np.full(len(where), g, dtype="int32"))
        positions.append(where.astype("int64"))
    if not keys:
        return []
    k, t, grp, pos = (np.concatenate(a) for a in (keys, times, groups, positions))
    del keys, times
    if len(np.unique(k)) != len(k):  # several rows per entity: keep the newest (last on a tie)
        order = np.lexsort((np.arange(len(k)), t, k))
        last = np.ones(len(order), dtype=bool)
        last[:-1] = k[order][1:] != k[order][:-1]
        keep = np.sort(order[last])
        grp, pos = grp[keep], pos[keep]
    return [pos[grp == g] for g in range(parquet.num_row_groups)]


def _batches(
    parquet: pq.ParquetFile, rows: list[np.ndarray], columns: list[str], batch_rows: int
) -> Iterator[pa.RecordBatch]:
    for g, positions in enumerate(rows):
        if len(positions):
            group = parquet.read_row_group(g, columns=columns).take(pa.array(positions))
            yield from group.to_batches(max_chunksize=batch_rows)


def write_online(contract: Contract, parquet: pq.ParquetFile, rows: list[np.ndarray], batch_rows: int) -> int:
    """Write the chosen rows to the online store, ``batch_rows`` at a time; returns rows written."""
    from feast.utils import _convert_arrow_to_proto

    store = feast_repo.feature_store(contract)
    view = store.get_feature_view(contract.feature_view, allow_registry_cache=False)
    provider = store._get_provider()
    join_keys = {entity.name: entity.dtype.to_value_type() for entity in view.entity_columns}
    columns = [contract.entity_key, feast_repo.EVENT_TIMESTAMP, *feast_repo.view_features(contract)]
    if sqlite_fast.supports(store, view):
        with sqlite_fast.Staged(store, view, contract.entity_key, feast_repo.EVENT_TIMESTAMP) as staged:
            for batch in _batches(parquet, rows, columns, batch_rows):
                staged.add(batch)
            return staged.commit()
    if redis_fast.supports(store, view):
        writer = redis_fast.Writer(store, view, contract.entity_key, feast_repo.EVENT_TIMESTAMP)
        written = 0

        def counted() -> Iterator[pa.RecordBatch]:  # rows offered (a skipped older row counts)
            nonlocal written
            for batch in _batches(parquet, rows, columns, batch_rows):
                written += batch.num_rows
                yield batch

        writer.write_all(counted())
        return written
    written = 0
    for batch in _batches(parquet, rows, columns, batch_rows):
        rows_proto = _convert_arrow_to_proto(batch, view, join_keys)
        provider.online_write_batch(store.config, view, rows_proto, None)
        written += batch.num_rows
    return written


def materialise(contract: Contract, version: str, start: datetime, end: datetime) -> int:
    """``feast_repo.materialise`` in bounded memory: rows (entities) written."""
    if feast_repo.applied_fingerprint(contract) != feast_repo.definition_fingerprint(contract, version):
        raise RuntimeError(f"the feature view does not point at {contract.name}@{version}: apply it first")
    with tempfile.TemporaryDirectory(prefix="materialise-") as tmp:
        path = Path(tmp) / "offline.parquet"
        settings.s3_client().fget_object(
            layout.FEATURES, layout.offline_data(contract.name, version), str(path)
        )
        parquet = pq.ParquetFile(path)
        rows = newest_rows(parquet, contract.entity_key, start, end)
        written = write_online(contract, parquet, rows, batch_rows(settings.memory_budget_bytes()))
    store = feast_repo.feature_store(contract)
    view = store.get_feature_view(contract.feature_view, allow_registry_cache=False)
    store.registry.apply_materialization(view, feast_repo.PROJECT, start, end)
    return written
