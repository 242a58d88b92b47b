"""Batch scoring: a CSV or Parquet file dropped under ``landing/<dataset>/score/`` → its champion's
predictions in ``s3://predictions/<dataset>/...``, announced by ``dev.faaspipe.batch.scored.v1``.

On ``dev.faaspipe.object.created.v1`` from ``s3://landing`` whose key is under a contract's
score prefix (``layout.score_prefix``; other keys are logged and ignored, no reply):

- the object is copied to local disk and read in chunks of ``FAASPIPE_BATCH_CHUNK_ROWS`` rows
  (``reader``); each chunk's rows are checked against the contract as predict checks a
  request (``rows``), the valid rows are scored by the champion in one call per chunk, and both
  kinds of row are appended to local files (``output``): memory holds one chunk, never the file;
- the predictions (``predictions.parquet``), the rejected rows with their reason
  (``rejected.csv``) and then ``report.json`` go to ``layout.batch_output(dataset, <key below
  score/>, <run>, file)``, where ``run`` is derived from the object key and version;
- the reply is ``batch.scored`` (``rows_in = rows_scored + rows_rejected``). A file that cannot
  be scored at all (format, unreadable, raw inputs missing, no champion or an unloadable one)
  is answered with ``batch.rejected`` and nothing is written.

Re-delivery does not score twice: the runtime's idempotency store answers a repeated event
(source + id) with its stored reply, and any other event for the same object version finds the
run's ``report.json`` (written last) and is answered from it. Registry or S3 failures raise (the
broker retries). The input file stays in landing.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from minio import Minio
from minio.error import S3Error
from prometheus_client import Counter

from events import BatchRejected, BatchScored, ObjectCreated, rfc3339
from functions.batch_score.champions import ArtefactError, Champions, NoChampion
from functions.batch_score.output import PREDICTIONS_FILE, REJECTED_FILE, BatchWriter
from functions.batch_score.reader import UnreadableFile, open_table
from functions.batch_score.rows import FileProblem, map_columns, prepare
from functions.ingest.validation import detect_format
from functions.predict.champion import LoadedModel
from shared import layout, settings
from shared.cloudevents_io import CloudEvent
from shared.contracts import Contract, contract_for_key
from shared.registry_alias import RegistryClient

log = logging.getLogger("faaspipe.batch_score")

SOURCE = "/faaspipe/functions/batch-score"
REPORT_FILE = "report.json"
RUN_HEX_DIGITS = 16
_NAMESPACE = uuid.UUID("0f6f3a52-2b7e-4c4a-9d1e-6a0b7c5d8e21")
_MISSING = ("NoSuchKey", "NoSuchObject", "NotFound")
RejectRule = Literal[
    "format", "unreadable", "missing_column", "duplicate_column", "no_champion", "model_unavailable"
]

ROWS = Counter("faaspipe_batch_rows_total", "Rows of files scored in batch", ["dataset", "outcome"])
FILES = Counter("faaspipe_batch_files_total", "Files handled by batch scoring", ["dataset", "outcome"])

_s3: Minio | None = None
_champions: Champions | None = None


def _chunk_rows() -> int:
    return int(os.environ.get("FAASPIPE_BATCH_CHUNK_ROWS", "4096"))


def init() -> None:
    global _s3, _champions
    _s3 = settings.s3_client()
    for bucket in (layout.LANDING, layout.MODELS):
        if not _s3.bucket_exists(bucket):
            raise RuntimeError(f"bucket {bucket!r} does not exist")
    _ensure_bucket(_s3, layout.PREDICTIONS)
    nthread = int(os.environ.get("FAASPIPE_BATCH_NTHREAD", "2"))
    _champions = Champions(RegistryClient(os.environ["MLFLOW_TRACKING_URI"]), _s3, nthread=nthread)
    log.info("batch scoring: chunks of %d rows, XGBoost nthread %d", _chunk_rows(), nthread)


def _ensure_bucket(s3: Minio, bucket: str) -> None:
    """Create the output bucket when the platform did not (another replica may race us)."""
    if s3.bucket_exists(bucket):
        return
    try:
        s3.make_bucket(bucket)
        log.info("created bucket %s", bucket)
    except S3Error as exc:
        if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            raise


def s3() -> Minio:
    global _s3
    if _s3 is None:
        _s3 = settings.s3_client()
    return _s3


def champions() -> Champions:
    global _champions
    if _champions is None:
        _champions = Champions(
            RegistryClient(os.environ["MLFLOW_TRACKING_URI"]),
            s3(),
            nthread=int(os.environ.get("FAASPIPE_BATCH_NTHREAD", "2")),
        )
    return _champions


def derived_id(event: CloudEvent, kind: str) -> str:
    """An id derived from the input event, so a redelivery reuses it."""
    return str(uuid.uuid5(_NAMESPACE, f"{event.get_source()}\n{event.get_id()}\n{kind}"))


def run_of(key: str, object_version: str) -> str:
    """The output folder of one object version: 16 hex digits of SHA-256(key, version)."""
    return hashlib.sha256(f"{key}\n{object_version}".encode()).hexdigest()[:RUN_HEX_DIGITS]


@dataclass(frozen=True)
class Job:
    """One object version to score, and where its outputs go."""

    contract: Contract
    created: ObjectCreated
    relative_key: str

    @property
    def source_uri(self) -> str:
        return f"s3://{self.created.bucket}/{self.created.key}"

    def output_key(self, file: str) -> str:
        run = run_of(self.created.key, self.created.version)
        return layout.batch_output(self.contract.name, self.relative_key, run, file)

    def output_uri(self, file: str) -> str:
        return f"s3://{layout.PREDICTIONS}/{self.output_key(file)}"


def job_for(created: ObjectCreated) -> Job | None:
    """The job of an object event, or None when the object is not a file to score."""
    if created.bucket != layout.LANDING:
        return None
    contract = contract_for_key(created.key)
    if contract is None:
        return None
    prefix = layout.score_prefix(contract.landing_prefix)
    relative = created.key.removeprefix(prefix)
    if relative == created.key or not relative or relative.endswith("/"):
        return None
    return Job(contract, created, relative)


def handle(event: CloudEvent) -> CloudEvent | None:
    created = ObjectCreated.from_event(event)
    job = job_for(created)
    if job is None:
        log.info("ignoring s3://%s/%s: not under a data contract's score prefix", created.bucket, created.key)
        return None
    stored = _stored_report(job)
    if stored is not None:
        log.info(
            "%s (version %s) was already scored; answering from its report", job.source_uri, created.version
        )
        return _scored_event(event, job, stored)
    fmt = detect_format(created.key, created.content_type, b"")
    if fmt is not None and fmt not in job.contract.formats:
        return _rejected(event, job, None, "format", None, _format_message(job, fmt))
    try:
        model = champions().current(job.contract)
    except NoChampion as exc:
        return _rejected(event, job, None, "no_champion", None, str(exc))
    except ArtefactError as exc:
        return _rejected(event, job, None, "model_unavailable", None, str(exc))
    if model.aggregates:  # a file has raw inputs, not machines' windows (shared/feature_set.py)
        message = (
            f"{model.name} v{model.version} scores the streamed rolling aggregates {list(model.aggregates)}, "
            "which a batch file does not carry: predict by entity instead"
        )
        return _rejected(event, job, model.version, "model_unavailable", None, message)
    with tempfile.TemporaryDirectory(prefix="faaspipe-batch-") as tmp:
        return _score(event, job, model, fmt, Path(tmp))


def _format_message(job: Job, fmt: str | None) -> str:
    found = fmt or f"unknown (extension/content type {job.created.content_type!r})"
    return f"format {found} is not one of the contract's formats {list(job.contract.formats)}"


def _score(event: CloudEvent, job: Job, model: LoadedModel, fmt: str | None, tmp: Path) -> CloudEvent | None:
    started = time.perf_counter()
    local = tmp / "input"
    try:
        s3().fget_object(job.created.bucket, job.created.key, str(local))
    except S3Error as exc:
        if exc.code in _MISSING:
            log.warning("%s no longer exists; nothing to score", job.source_uri)
            return None
        raise
    if fmt is None:
        with local.open("rb") as handle:
            fmt = detect_format(job.created.key, job.created.content_type, handle.read(4))
        if fmt is None or fmt not in job.contract.formats:
            return _rejected(event, job, model.version, "format", None, _format_message(job, fmt))
    request_id = derived_id(event, "request")
    out = tmp / "out"
    out.mkdir()
    try:
        table = open_table(local, fmt, _chunk_rows())
        columns = map_columns(job.contract, table.columns)
        with BatchWriter(
            out, model_name=model.name, model_version=model.version, request_id=request_id
        ) as writer:
            rows_in, chunks = 0, 0
            for chunk in table.chunks(columns.used):
                prepared = prepare(job.contract, chunk, columns, first_row=rows_in + 1)
                if len(prepared.rows):
                    probabilities = np.clip(model.predict_proba(prepared.matrix), 0.0, 1.0)
                    labels = (probabilities >= model.threshold).astype(np.int8)
                    writer.write_scored(prepared.rows, prepared.entity_ids, probabilities, labels)
                writer.write_rejected(prepared.rejected)
                rows_in += len(chunk)
                chunks += 1
    except UnreadableFile as exc:
        return _rejected(event, job, model.version, "unreadable", None, str(exc))
    except FileProblem as exc:
        return _rejected(event, job, model.version, exc.rule, exc.column, str(exc))
    if rows_in != writer.rows_scored + writer.rows_rejected:  # a bug, never a file's fault
        raise RuntimeError(
            f"{job.source_uri}: {rows_in} rows in but {writer.rows_scored} scored + "
            f"{writer.rows_rejected} rejected"
        )
    _upload(job, writer)
    report = _report(event, job, model, request_id, rows_in, chunks, writer, time.perf_counter() - started)
    body = json.dumps(report, indent=2).encode()
    s3().put_object(
        layout.PREDICTIONS,
        job.output_key(REPORT_FILE),
        io.BytesIO(body),
        len(body),
        content_type="application/json",
    )
    ROWS.labels(job.contract.name, "scored").inc(writer.rows_scored)
    ROWS.labels(job.contract.name, "rejected").inc(writer.rows_rejected)
    FILES.labels(job.contract.name, "scored").inc()
    log.info(
        "%s scored by %s v%s: %d rows in, %d scored, %d rejected, %d chunks, %.2fs → %s",
        job.source_uri,
        model.name,
        model.version,
        rows_in,
        writer.rows_scored,
        writer.rows_rejected,
        chunks,
        report["duration_s"],
        job.output_uri(PREDICTIONS_FILE),
    )
    return _scored_event(event, job, report)


def _upload(job: Job, writer: BatchWriter) -> None:
    s3().fput_object(
        layout.PREDICTIONS,
        job.output_key(PREDICTIONS_FILE),
        str(writer.predictions_path),
        content_type="application/vnd.apache.parquet",
    )
    s3().fput_object(
        layout.PREDICTIONS, job.output_key(REJECTED_FILE), str(writer.rejected_path), content_type="text/csv"
    )


def _report(
    event: CloudEvent,
    job: Job,
    model: LoadedModel,
    request_id: str,
    rows_in: int,
    chunks: int,
    writer: BatchWriter,
    duration_s: float,
) -> dict[str, Any]:
    return {
        "decision": "scored",
        "dataset": job.contract.name,
        "contract": job.contract.ref,
        "source_uri": job.source_uri,
        "object_version": job.created.version,
        "request_id": request_id,
        "model_name": model.name,
        "model_version": model.version,
        "threshold": model.threshold,
        "entity_key": job.contract.entity_key,
        "output_uri": job.output_uri(PREDICTIONS_FILE),
        "rejected_uri": job.output_uri(REJECTED_FILE),
        "report_uri": job.output_uri(REPORT_FILE),
        "rows_in": rows_in,
        "rows_scored": writer.rows_scored,
        "rows_rejected": writer.rows_rejected,
        "rejected_by_column": dict(writer.rejected_by_column.most_common()),
        "row_numbering": "1 = first data row (CSV line = row + 1)",
        "chunks": chunks,
        "chunk_rows": _chunk_rows(),
        "duration_s": round(duration_s, 3),
        "scored_at": rfc3339(),
        "event": {"source": event.get_source(), "id": event.get_id(), "type": event.get_type()},
    }


def _stored_report(job: Job) -> dict[str, Any] | None:
    try:
        report: dict[str, Any] = json.loads(
            settings.read_object(layout.PREDICTIONS, job.output_key(REPORT_FILE), s3())
        )
    except S3Error as exc:
        if exc.code in _MISSING:
            return None
        raise
    return report


def _scored_event(event: CloudEvent, job: Job, report: dict[str, Any]) -> CloudEvent:
    return BatchScored(
        dataset=report["dataset"],
        contract=report["contract"],
        source_uri=report["source_uri"],
        object_version=report["object_version"],
        request_id=report["request_id"],
        model_name=report["model_name"],
        model_version=report["model_version"],
        output_uri=report["output_uri"],
        rejected_uri=report["rejected_uri"],
        report_uri=report["report_uri"],
        rows_in=report["rows_in"],
        rows_scored=report["rows_scored"],
        rows_rejected=report["rows_rejected"],
        chunks=report["chunks"],
        duration_s=report["duration_s"],
    ).to_event(
        source=SOURCE,
        subject=job.created.key,
        id=derived_id(event, "scored"),
        extensions={"partitionkey": job.contract.name},
    )


def _rejected(
    event: CloudEvent,
    job: Job,
    model_version: str | None,
    rule: RejectRule,
    column: str | None,
    message: str,
) -> CloudEvent:
    FILES.labels(job.contract.name, "rejected").inc()
    log.warning("%s not scored (%s): %s", job.source_uri, rule, message)
    return BatchRejected(
        dataset=job.contract.name,
        source_uri=job.source_uri,
        object_version=job.created.version,
        model_name=job.contract.model_name,
        model_version=model_version,
        rule=rule,
        column=column,
        message=message,
    ).to_event(
        source=SOURCE,
        subject=job.created.key,
        id=derived_id(event, "rejected"),
        extensions={"partitionkey": job.contract.name},
    )
