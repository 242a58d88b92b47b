"""Materialise: ``dataset.ingested`` → Feast online store → ``features.materialised``.

For the dataset version of the event:

1. ``feast_repo.apply``: the shared registry's FileSource is pointed at the version; a no-op
   when the definitions are unchanged (redeliveries, restarts, the same file sent again);
2. ``online_writer.materialise`` (the newest row per entity, in bounded batches) over the version's event-time range ``[event_time_min,
   event_time_max]`` (an explicit range, not Feast's ``materialize_incremental``: a corrected
   file re-sends old event times, which "since the last run" would skip);
3. ``layout.dataset_latest(dataset)`` in the features bucket := the reply's data (JSON);
4. reply ``dev.faaspipe.features.materialised.v1`` (id derived from the input event).

A version of origin ``production`` (labelled production rows the monitor wrote) is training
data for retrains, not features to serve: it is not materialised (no reply).

Everything is idempotent: applying and materialising the same version again writes the same
values; the reply id and ``latest.json`` content depend on the event only.
"""

from __future__ import annotations

import io
import json
import logging
import time
import uuid
from datetime import datetime

from minio.error import S3Error

from events import DatasetIngested, FeaturesMaterialised, rfc3339
from functions.materialise import online_writer
from shared import feast_repo, layout, memory, settings
from shared.cloudevents_io import CloudEvent
from shared.contracts import ContractError, all_contracts, get_contract
from shared.errors import EventRejected

log = logging.getLogger("faaspipe.materialise")

SOURCE = "/faaspipe/functions/materialise"
_REPLY_NAMESPACE = uuid.UUID("0d7d7f57-3f0b-4c51-8d7e-2a0f6f3e9b21")


def init() -> None:
    """Import Feast and open the shared store of every contract before reporting ready."""
    logging.getLogger("feast").setLevel(logging.WARNING)
    for contract in all_contracts().values():
        feast_repo.feature_store(contract)


def reply_id(event: CloudEvent) -> str:
    return str(uuid.uuid5(_REPLY_NAMESPACE, f"{event.get_source()}\n{event.get_id()}"))


def _parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def handle(event: CloudEvent) -> CloudEvent | None:
    ingested = DatasetIngested.from_event(event)
    if ingested.origin == "production":
        log.info(
            "%s@%s: production rows (training data), not materialised", ingested.dataset, ingested.version
        )
        return None
    try:
        contract = get_contract(ingested.dataset)
    except ContractError as exc:
        raise EventRejected(str(exc)) from exc
    if ingested.contract != contract.ref:
        raise EventRejected(
            f"{ingested.dataset}@{ingested.version} was validated with {ingested.contract},"
            f" the current contract is {contract.ref}: ingest it again"
        )
    offline_key = layout.offline_data(contract.name, ingested.version)
    try:
        settings.s3_client().stat_object(layout.FEATURES, offline_key)
    except S3Error as exc:
        if exc.code in ("NoSuchKey", "NoSuchObject", "NotFound"):
            raise EventRejected(f"s3://{layout.FEATURES}/{offline_key} does not exist") from exc
        raise
    start, end = _parse_time(ingested.event_time_min), _parse_time(ingested.event_time_max)
    started = time.perf_counter()
    applied = feast_repo.apply(contract, ingested.version)
    applied_s = time.perf_counter() - started
    try:
        rows = online_writer.materialise(contract, ingested.version, start, end)
    finally:
        memory.release()  # back to the resting size after a big version
    log.info(
        "%s@%s: %d rows materialised into %s (%s, apply %s in %.1fs, total %.1fs)",
        contract.name,
        ingested.version,
        rows,
        feast_repo.online_store_kind(),
        contract.feature_view,
        "done" if applied else "skipped",
        applied_s,
        time.perf_counter() - started,
    )
    materialised = FeaturesMaterialised(
        feature_view=contract.feature_view,
        dataset=contract.name,
        version=ingested.version,
        start=rfc3339(start),
        end=rfc3339(end),
        rows=rows,
        online_store=feast_repo.online_store_kind(),
    )
    latest = json.dumps(materialised.to_data(), indent=2).encode()
    settings.s3_client().put_object(
        layout.FEATURES,
        layout.dataset_latest(contract.name),
        io.BytesIO(latest),
        len(latest),
        content_type="application/json",
    )
    return materialised.to_event(
        source=SOURCE,
        subject=f"{contract.name}/{ingested.version}",
        id=reply_id(event),
        extensions={"partitionkey": contract.name},
    )
