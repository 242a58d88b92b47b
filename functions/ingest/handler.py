"""Ingest: a file landed → validated against its data contract → offline store or quarantine.

On ``dev.faaspipe.object.created.v1`` from ``s3://landing`` (the object key is the subject):

- keys under no contract's ``landing_prefix`` are logged and ignored (no reply, no loop);
- keys under a contract's production prefix (``landing/<dataset>/production/``,
  ``layout.production_prefix``) are labelled production rows the monitor wrote: validated
  like any file, replied with ``origin: production``, and listed under
  ``layout.production_index`` (the training windows of retrains read that list);
- keys under a contract's score prefix (``landing/<dataset>/score/``, ``layout.score_prefix``)
  are files to score, handled by ``functions/batch_score``: logged and ignored here;
- **rejected** files (file-level rule broken, or too many bad rows) are moved to the
  quarantine bucket (``layout.quarantined(key)``: the file and a JSON report listing every
  violation), removed from landing, and answered with ``dev.faaspipe.dataset.rejected.v1``;
- **accepted** files: the valid rows (canonical columns, derived features,
  ``event_timestamp``) go to ``layout.offline_data(dataset, version)`` in the features
  bucket as Parquet, where ``version`` = the first 16 hex digits of the SHA-256 of the
  source bytes; rejected rows (under the threshold) go to quarantine with their report; the
  reply is ``dev.faaspipe.dataset.ingested.v1`` (``rows_in = rows_written + rows_rejected``).

Idempotent: the same bytes give the same version and an existing version is not rewritten;
reply ids derive from the input event's ``source`` + ``id``. If a retry finds the object
already moved to quarantine, the rejection is answered again from the stored report.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from minio import Minio
from minio.error import S3Error

from events import DatasetIngested, DatasetRejected, ObjectCreated, rfc3339
from functions.ingest.chunked import ChunkedValidation, chunk_rows, sha256_of, validate_file
from functions.ingest.validation import ROWS_LISTED, Violation, detect_format
from shared import engine, layout, memory, settings
from shared.cloudevents_io import CloudEvent
from shared.contracts import Contract, contract_for_key

log = logging.getLogger("faaspipe.ingest")

SOURCE = "/faaspipe/functions/ingest"
VERSION_HEX_DIGITS = 16
_REPLY_NAMESPACE = uuid.UUID("5b0c3f7e-8d51-4f0e-9a41-3f6f1d7c2a10")
_s3: Minio | None = None


def init() -> None:
    global _s3
    _s3 = settings.s3_client()
    for bucket in (layout.LANDING, layout.FEATURES, layout.QUARANTINE):
        if not _s3.bucket_exists(bucket):
            raise RuntimeError(f"bucket {bucket!r} does not exist")


def s3() -> Minio:
    global _s3
    if _s3 is None:
        _s3 = settings.s3_client()
    return _s3


@dataclass(frozen=True)
class SourceObject:
    bucket: str
    key: str
    path: Path  # the object's bytes, streamed to a local file
    size: int
    sha256: str
    etag: str
    content_type: str | None

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    @property
    def format(self) -> str | None:
        with open(self.path, "rb") as f:
            return detect_format(self.key, self.content_type, f.read(4))


def dataset_version(data: bytes) -> str:
    """The dataset version of a source file: the first 16 hex digits of its SHA-256."""
    return hashlib.sha256(data).hexdigest()[:VERSION_HEX_DIGITS]


def reply_id(event: CloudEvent, kind: str) -> str:
    """A reply id derived from the input event, so a redelivery replies with the same id."""
    return str(uuid.uuid5(_REPLY_NAMESPACE, f"{event.get_source()}\n{event.get_id()}\n{kind}"))


def handle(event: CloudEvent) -> CloudEvent | None:
    created = ObjectCreated.from_event(event)
    if created.bucket != layout.LANDING:
        log.info("ignoring %s: not in the %s bucket", created.key, layout.LANDING)
        return None
    contract = contract_for_key(created.key)
    if contract is None:
        log.info("ignoring s3://%s/%s: no data contract has this prefix", created.bucket, created.key)
        return None
    if created.key.startswith(layout.score_prefix(contract.landing_prefix)):
        log.info(
            "ignoring s3://%s/%s: a file to score (batch-score), not to ingest", created.bucket, created.key
        )
        return None
    with tempfile.TemporaryDirectory(prefix="ingest-") as tmp:
        try:
            return _ingest(event, created, contract, Path(tmp))
        finally:
            memory.release()  # back to the resting size after a big file


def _ingest(event: CloudEvent, created: ObjectCreated, contract: Contract, tmp: Path) -> CloudEvent | None:
    source = _read(created, tmp / "source")
    if source is None:
        return _answer_again_or_ignore(event, created, contract)
    started = time.perf_counter()
    validation = _validate(contract, source, tmp)
    log.info(
        "%s (%d bytes, contract %s): %d rows, %d rejected, %s (validated in %.2fs)",
        source.uri,
        source.size,
        contract.ref,
        validation.rows_in,
        validation.rows_rejected,
        "file rejected" if validation.file_rejected else "accepted",
        time.perf_counter() - started,
    )
    if validation.file_rejected:
        return _reject(event, created, contract, source, validation)
    return _accept(event, created, contract, source, validation)


def _read(created: ObjectCreated, path: Path) -> SourceObject | None:
    """Stream the object to ``path`` (hashing it on the way); None if it is gone."""
    try:
        response = s3().get_object(created.bucket, created.key)
    except S3Error as exc:
        if exc.code in ("NoSuchKey", "NoSuchObject"):
            return None
        raise
    digest, size = hashlib.sha256(), 0
    try:
        with open(path, "wb") as out:
            for block in response.stream(1 << 20):
                digest.update(block)
                out.write(block)
                size += len(block)
        etag = (response.headers.get("ETag") or "").strip('"')
        content_type = created.content_type or response.headers.get("Content-Type")
    finally:
        response.close()
        response.release_conn()
    return SourceObject(created.bucket, created.key, path, size, digest.hexdigest(), etag, content_type)


def _validate(contract: Contract, source: SourceObject, tmp: Path) -> ChunkedValidation:
    """Validate in chunks sized by the memory budget; valid/rejected rows land in ``tmp``."""
    fmt = source.format
    if fmt is None or fmt not in contract.formats:
        found = fmt or f"unknown (extension/content type {source.content_type!r})"
        message = f"format {found} is not one of the contract's formats {list(contract.formats)}"
        return ChunkedValidation(contract, 0, [Violation("format", None, message)])
    client = None
    if engine.settings().use_dask(source.size):  # FAASPIPE_ENGINE=dask, a file over the threshold
        from shared.engine import cluster

        client = cluster.client()
        log.info("%s: %d bytes, validated on the Dask engine", source.uri, source.size)
    return validate_file(
        contract,
        source.path,
        fmt,
        chunk_rows=chunk_rows(settings.memory_budget_bytes()),
        offline_path=tmp / "offline.parquet",
        rejected_path=tmp / f"rejected.{fmt}",
        client=client,
    )


def _exists(bucket: str, key: str) -> bool:
    try:
        s3().stat_object(bucket, key)
    except S3Error as exc:
        if exc.code in ("NoSuchKey", "NoSuchObject", "NotFound"):
            return False
        raise
    return True


def _get_bytes(bucket: str, key: str) -> bytes:
    return settings.read_object(bucket, key, s3())


def _put(bucket: str, key: str, data: bytes, content_type: str) -> None:
    s3().put_object(bucket, key, io.BytesIO(data), len(data), content_type=content_type)


def _put_file(bucket: str, key: str, path: Path, content_type: str) -> None:
    s3().fput_object(bucket, key, str(path), content_type=content_type)


def _object_sha256(bucket: str, key: str) -> str:
    response = s3().get_object(bucket, key)
    digest = hashlib.sha256()
    try:
        for block in response.stream(1 << 20):
            digest.update(block)
    finally:
        response.close()
        response.release_conn()
    return digest.hexdigest()


def _report(
    event: CloudEvent,
    created: ObjectCreated,
    contract: Contract,
    source: SourceObject,
    validation: ChunkedValidation,
    *,
    decision: str,
    quarantine_uri: str,
    version: str | None,
) -> dict[str, Any]:
    return {
        "decision": decision,
        "dataset": contract.name,
        "contract": contract.ref,
        "source_uri": source.uri,
        "source_sha256": source.sha256,
        "object_version": created.version,
        "dataset_version": version,
        "quarantine_uri": quarantine_uri,
        "event": {"source": event.get_source(), "id": event.get_id(), "type": event.get_type()},
        "rows_in": validation.rows_in,
        "rows_rejected": validation.rows_rejected,
        "rows_written": validation.rows_written,
        "max_rejected_fraction": contract.max_rejected_fraction,
        "row_numbering": "1 = first data row (CSV line = row + 1); lists hold at most "
        f"{ROWS_LISTED} rows, count has them all",
        "violations": [v.to_report() for v in validation.ordered_violations()],
    }


def _put_report(report_key: str, report: dict[str, Any]) -> str:
    _put(layout.QUARANTINE, report_key, json.dumps(report, indent=2).encode(), "application/json")
    return f"s3://{layout.QUARANTINE}/{report_key}"


def _reject(
    event: CloudEvent,
    created: ObjectCreated,
    contract: Contract,
    source: SourceObject,
    validation: ChunkedValidation,
) -> CloudEvent:
    file_key, report_key = layout.quarantined(source.key)
    quarantine_uri = f"s3://{layout.QUARANTINE}/{file_key}"
    _put_file(layout.QUARANTINE, file_key, source.path, source.content_type or "application/octet-stream")
    report = _report(
        event,
        created,
        contract,
        source,
        validation,
        decision="rejected",
        quarantine_uri=quarantine_uri,
        version=None,
    )
    report_uri = _put_report(report_key, report)
    _remove_from_landing(source)
    log.warning(
        "%s rejected, moved to %s: %s",
        source.uri,
        quarantine_uri,
        "; ".join(v.message for v in validation.ordered_violations()[:5]),
    )
    return _rejected_event(event, contract, report, report_uri)


def _rejected_event(
    event: CloudEvent, contract: Contract, report: dict[str, Any], report_uri: str
) -> CloudEvent:
    reasons = [
        {"rule": v["rule"], "column": v["column"], "count": v["count"], "message": v["message"]}
        for v in report["violations"]
    ]
    return DatasetRejected(
        dataset=contract.name,
        source_uri=report["source_uri"],
        quarantine_uri=report["quarantine_uri"],
        report_uri=report_uri,
        rows_in=report["rows_in"],
        rows_rejected=report["rows_rejected"],
        reasons=reasons,  # type: ignore[arg-type]
    ).to_event(
        source=SOURCE,
        subject=report["source_uri"].removeprefix(f"s3://{layout.LANDING}/"),
        id=reply_id(event, "rejected"),
        extensions={"partitionkey": contract.name},
    )


def _remove_from_landing(source: SourceObject) -> None:
    """Remove the original, unless it was overwritten since we read it (then it is a new file)."""
    try:
        current = s3().stat_object(source.bucket, source.key)
    except S3Error as exc:
        if exc.code in ("NoSuchKey", "NoSuchObject", "NotFound"):
            return
        raise
    if source.etag and (current.etag or "").strip('"') != source.etag:
        log.warning("%s changed since it was read; leaving the new version in landing", source.uri)
        return
    s3().remove_object(source.bucket, source.key)


def _answer_again_or_ignore(
    event: CloudEvent, created: ObjectCreated, contract: Contract
) -> CloudEvent | None:
    """The object is gone: answer again if this very version was quarantined, else ignore."""
    _, report_key = layout.quarantined(created.key)
    if _exists(layout.QUARANTINE, report_key):
        report = json.loads(_get_bytes(layout.QUARANTINE, report_key))
        if report.get("decision") == "rejected" and report.get("object_version") == created.version:
            log.info("%s was already quarantined; answering the rejection again", created.key)
            return _rejected_event(event, contract, report, f"s3://{layout.QUARANTINE}/{report_key}")
    log.warning("s3://%s/%s no longer exists; nothing to ingest", created.bucket, created.key)
    return None


def _accept(
    event: CloudEvent,
    created: ObjectCreated,
    contract: Contract,
    source: SourceObject,
    validation: ChunkedValidation,
) -> CloudEvent:
    version = source.sha256[:VERSION_HEX_DIGITS]
    origin = (
        "production" if source.key.startswith(layout.production_prefix(contract.landing_prefix)) else "file"
    )
    offline_key = layout.offline_data(contract.name, version)
    if _exists(layout.FEATURES, offline_key):
        checksum = _object_sha256(layout.FEATURES, offline_key)
        log.info("%s: version %s is already in the offline store; not rewritten", source.uri, version)
    else:
        written = source.path.parent / "offline.parquet"
        checksum = sha256_of(written)
        _put_file(layout.FEATURES, offline_key, written, "application/vnd.apache.parquet")
        log.info(
            "%s → s3://%s/%s (%d rows)", source.uri, layout.FEATURES, offline_key, validation.rows_written
        )
    assert validation.event_time_min is not None and validation.event_time_max is not None
    if validation.rows_rejected:
        _quarantine_rejected_rows(event, created, contract, source, validation, version)
    time_min = rfc3339(validation.event_time_min.to_pydatetime())
    time_max = rfc3339(validation.event_time_max.to_pydatetime())
    if origin == "production":
        index = {
            "dataset": contract.name,
            "version": version,
            "contract": contract.ref,
            "source_uri": source.uri,
            "rows": validation.rows_written,
            "event_time_min": time_min,
            "event_time_max": time_max,
        }
        _put(
            layout.FEATURES,
            layout.production_index(contract.name, version),
            json.dumps(index, indent=2).encode(),
            "application/json",
        )
    return DatasetIngested(
        dataset=contract.name,
        version=version,
        contract=contract.ref,
        source_uri=source.uri,
        offline_uri=f"s3://{layout.FEATURES}/{offline_key}",
        checksum=checksum,
        rows_in=validation.rows_in,
        rows_written=validation.rows_written,
        rows_rejected=validation.rows_rejected,
        event_time_min=time_min,
        event_time_max=time_max,
        origin=origin,
    ).to_event(
        source=SOURCE,
        subject=f"{contract.name}/{version}",
        id=reply_id(event, "ingested"),
        extensions={"partitionkey": contract.name},
    )


def _quarantine_rejected_rows(
    event: CloudEvent,
    created: ObjectCreated,
    contract: Contract,
    source: SourceObject,
    validation: ChunkedValidation,
    version: str,
) -> None:
    file_key, report_key = layout.quarantined(source.key)
    fmt = source.format
    content_type = "application/vnd.apache.parquet" if fmt == "parquet" else "text/csv"
    _put_file(layout.QUARANTINE, file_key, source.path.parent / f"rejected.{fmt}", content_type)
    quarantine_uri = f"s3://{layout.QUARANTINE}/{file_key}"
    report = _report(
        event,
        created,
        contract,
        source,
        validation,
        decision="accepted_with_rejected_rows",
        quarantine_uri=quarantine_uri,
        version=version,
    )
    _put_report(report_key, report)
    log.info("%s: %d rejected rows → %s", source.uri, validation.rows_rejected, quarantine_uri)
