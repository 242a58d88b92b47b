"""Streamed features in Feast: a ``PushSource`` and the view ``<feature_view>_stream`` per contract
with a ``streaming:`` section (``shared/contracts/streaming.py``).

The view holds an entity's latest reading (the same raw, derived and identifier features as
the batch view ``contract.feature_view``), the declared rolling aggregates, ``window_readings``
(readings in the window) and ``reading_id`` (the latest reading's ``<source>/<id>``, what a
client matches to see its own reading served). stream-features writes each accepted reading
to the online store (:func:`push`: on SQLite the rows a ``store.push(..., to=PushMode.ONLINE)``
writes, upserted directly; elsewhere that push) and writes the same rows, in
batches, as Parquet parts under ``s3://features/stream/<dataset>/``: the push source's batch
source, which ``get_historical_features`` joins point-in-time for training.

Why not ``PushMode.ONLINE_AND_OFFLINE`` per reading: Feast's file offline store writes a push
by reading the whole Parquet file, appending and writing it back (``DaskOfflineStore.
offline_write_batch``): one S3 round trip of the growing file per reading, and two replicas'
writes lose each other's rows. Parts named by their buffer sequence numbers are append-only
and idempotent.

Online reads (:func:`online_rows`) merge the two views: the stream's values win where it has
the entity, the batch view's fill the rest (an entity never streamed keeps its batch values).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from shared import feast_repo, layout, settings
from shared.contracts import Contract

if TYPE_CHECKING:
    from feast import FeatureView, PushSource

__all__ = [
    "READING_ID",
    "WINDOW_READINGS",
    "apply_stream",
    "push",
    "stream_features",
    "training_frame",
    "write_offline_part",
]

log = logging.getLogger("faaspipe.feast.stream")

WINDOW_READINGS = "window_readings"
READING_ID = "reading_id"


def push_source_name(contract: Contract) -> str:
    return f"{contract.name.replace('-', '_')}_stream_push"


def stream_uri(contract: Contract) -> str:
    return f"s3://{layout.FEATURES}/{layout.stream_prefix(contract.name)}"


def stream_features(contract: Contract) -> tuple[str, ...]:
    """The stream view's features: the batch view's, the aggregates, window size, reading id."""
    if contract.streaming is None:
        raise ValueError(f"contract {contract.ref} declares no streaming: section")
    return (
        *feast_repo.view_features(contract),
        *contract.streaming.feature_names,
        WINDOW_READINGS,
        READING_ID,
    )


def _feature_type(contract: Contract, name: str) -> str:
    if name == WINDOW_READINGS:
        return "Int64"
    if name == READING_ID:
        return "String"
    if contract.streaming is not None and name in contract.streaming.feature_names:
        return "Float64"
    return feast_repo._feature_type(contract, name)


def fingerprint(contract: Contract) -> str:
    doc = {
        "project": feast_repo.PROJECT,
        "entity": contract.entity_key,
        "push": push_source_name(contract),
        "source": stream_uri(contract),
        "s3_endpoint": feast_repo.s3_endpoint(),
        "view": contract.stream_feature_view,
        "fields": [[n, _feature_type(contract, n)] for n in stream_features(contract)],
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def definitions(contract: Contract) -> tuple[PushSource, FeatureView]:
    from feast import FeatureView, Field, FileSource, PushSource
    from feast import types as feast_types
    from feast.data_format import ParquetFormat

    entity, _, _ = feast_repo.definitions(contract, "0")  # the same entity as the batch view
    batch = FileSource(
        name=f"{contract.name}_stream_offline",
        path=stream_uri(contract),
        file_format=ParquetFormat(),
        timestamp_field=feast_repo.EVENT_TIMESTAMP,
        s3_endpoint_override=feast_repo.s3_endpoint(),
        description=f"streamed features of dataset {contract.name} (Parquet parts)",
    )
    source = PushSource(name=push_source_name(contract), batch_source=batch)
    view = FeatureView(
        name=contract.stream_feature_view,
        entities=[entity],
        ttl=timedelta(0),
        schema=[
            Field(name=n, dtype=getattr(feast_types, _feature_type(contract, n)))
            for n in stream_features(contract)
        ],
        source=source,
        online=True,
        description=f"latest streamed reading and rolling aggregates of {contract.name}",
        tags={feast_repo.FINGERPRINT_TAG: fingerprint(contract), "faaspipe.contract": contract.ref},
    )
    return source, view


def applied_fingerprint(contract: Contract) -> str | None:
    from feast.errors import FeatureViewNotFoundException

    try:
        view = feast_repo.feature_store(contract).get_feature_view(
            contract.stream_feature_view, allow_registry_cache=False
        )
    except (FeatureViewNotFoundException, FileNotFoundError):
        return None
    return view.tags.get(feast_repo.FINGERPRINT_TAG)


def apply_stream(contract: Contract) -> bool:
    """Register the push source and the stream view (a no-op when unchanged). True if applied."""
    wanted = fingerprint(contract)
    # opening the shared store takes the registry's advisory lock on PostgreSQL (a second
    # session: not re-entrant), so open it before holding that lock, never inside it
    feast_repo.feature_store(contract)
    with feast_repo._apply_lock():
        if applied_fingerprint(contract) == wanted:
            return False
        entity, _, _ = feast_repo.definitions(contract, "0")
        source, view = definitions(contract)
        feast_repo.feature_store(contract).apply([entity, source, view])
    log.info("applied the stream view %s (%s)", contract.stream_feature_view, wanted)
    return True


def _frame(contract: Contract, rows: Sequence[dict[str, Any]]) -> Any:
    import pandas as pd

    columns = [contract.entity_key, feast_repo.EVENT_TIMESTAMP, *stream_features(contract)]
    frame = pd.DataFrame([{c: row.get(c) for c in columns} for row in rows], columns=columns)
    frame[feast_repo.EVENT_TIMESTAMP] = pd.to_datetime(frame[feast_repo.EVENT_TIMESTAMP], unit="s", utc=True)
    return frame


def push(contract: Contract, rows: Sequence[dict[str, Any]]) -> None:
    """Write rows (entity key, ``event_timestamp`` in epoch seconds, the stream features) online.

    On Feast's SQLite online store the rows are encoded and upserted directly
    (``functions/materialise/sqlite_fast.py``: the same rows ``online_write_batch`` writes,
    without the DataFrame, Arrow and ``ValueProto`` conversions a ``FeatureStore.push`` makes,
    most of a batch's cost); any other store gets the push."""
    store = feast_repo.feature_store(contract)
    view = _online_view(contract)
    if view is not None:
        from functions.materialise import sqlite_fast

        key = contract.entity_key
        columns = {f.name: _typed(str(f.dtype), [row.get(f.name) for row in rows]) for f in view.features}
        times = _event_times([row[feast_repo.EVENT_TIMESTAMP] for row in rows])
        sqlite_fast.write_rows(store, view, key, [int(row[key]) for row in rows], times, columns)
        return
    from feast.data_source import PushMode

    store.push(push_source_name(contract), _frame(contract, rows), to=PushMode.ONLINE)


_ONLINE_VIEWS: dict[str, Any] = {}


def _online_view(contract: Contract) -> FeatureView | None:
    """The stream view when the SQLite fast path can write it (cached per process), else None."""
    from functions.materialise import sqlite_fast

    key = f"{feast_repo.feast_dir()}|{contract.stream_feature_view}|{fingerprint(contract)}"
    if key not in _ONLINE_VIEWS:
        store = feast_repo.feature_store(contract)
        view = store.get_feature_view(contract.stream_feature_view)
        _ONLINE_VIEWS[key] = view if sqlite_fast.supports(store, view) else None
    return _ONLINE_VIEWS[key]


def _typed(kind: str, values: list[Any]) -> list[Any]:
    """Values as a DataFrame column holds them for Feast: floats for Float64 (an int too), ints
    for Int64, None for a missing value (a NaN stays a NaN: the encoder writes a null)."""
    if kind == "Float64":
        return [None if v is None else float(v) for v in values]
    if kind == "Int64":
        return [None if v is None else int(v) for v in values]
    return values


def _event_times(seconds: list[float]) -> list[datetime]:
    """Epoch seconds → the naive UTC datetimes a push writes: pandas' ``to_datetime(unit="s")``
    (as ``_frame``: its float rounding included), truncated to microseconds as Feast does."""
    import pandas as pd

    stamps = pd.to_datetime(pd.Series(seconds, dtype="float64"), unit="s", utc=True)
    return list(stamps.dt.tz_localize(None).to_numpy().astype("datetime64[us]").tolist())


def write_offline_part(contract: Contract, first: int, last: int, rows: Sequence[dict[str, Any]]) -> str:
    """Rows ``first``..``last`` of the offline buffer as one Parquet part; returns its URI."""
    buffer = io.BytesIO()
    _frame(contract, rows).to_parquet(buffer, index=False)
    key = layout.stream_part(contract.name, first, last)
    data = buffer.getvalue()
    settings.s3_client().put_object(
        layout.FEATURES, key, io.BytesIO(data), len(data), content_type="application/vnd.apache.parquet"
    )
    return f"s3://{layout.FEATURES}/{key}"


def training_frame(contract: Contract, entity_df: Any) -> Any:
    """Point-in-time join of the stream view's offline parts onto ``entity_df`` (entity key,
    ``event_timestamp``, anything else kept): each row gets the aggregates, window size and
    reading id of the newest streamed reading at or before its time. Feast's file offline
    store drops the rows with no reading at or before their time (measured, Feast 0.67)."""
    assert contract.streaming is not None
    names = (*contract.streaming.feature_names, WINDOW_READINGS, READING_ID)
    features = [f"{contract.stream_feature_view}:{n}" for n in names]
    return (
        feast_repo.feature_store(contract)
        .get_historical_features(entity_df=entity_df, features=features)
        .to_df()
    )


def online_rows(contract: Contract, entity_ids: Sequence[int]) -> list[dict[str, Any] | None] | None:
    """The stream view's online rows (None per unknown entity), or None if it was never applied."""
    from feast.errors import FeatureViewNotFoundException

    names = stream_features(contract)
    try:
        response = (
            feast_repo.feature_store(contract)
            .get_online_features(
                features=[f"{contract.stream_feature_view}:{n}" for n in names],
                entity_rows=[{contract.entity_key: int(i)} for i in entity_ids],
            )
            .to_dict()
        )
    except FeatureViewNotFoundException:
        return None
    rows: list[dict[str, Any] | None] = []
    for i in range(len(entity_ids)):
        values = {n: response[n][i] for n in names}
        rows.append(values if values.get(READING_ID) is not None else None)
    return rows


def merge(
    base: dict[str, Any] | None, stream: dict[str, Any] | None, key: str, entity: int
) -> dict[str, Any] | None:
    """One entity's online row: the stream's non-null values over the batch view's."""
    if stream is None:
        return base
    merged = dict(base or {key: int(entity)})
    merged.update({k: v for k, v in stream.items() if v is not None})
    return merged


def epoch_seconds(moment: datetime) -> float:
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()
