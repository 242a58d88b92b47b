"""Production data becomes training data: labelled predictions → a contract file in landing.

When a labels file or a ``label.recorded`` event is joined on the stored predictions, the
predictions it labelled (their inputs and the truth) are written as a CSV of the model's data contract to
``landing/<dataset>/production/`` (``layout.production_prefix``). The normal ingest path
validates it like any file (bad rows quarantined, a bad file rejected) and writes a dataset
version of origin ``production`` to the offline store, which the training window of a retrain
reads (``functions/tune/window.py``).

- ``udi`` (the entity key, from which the event time derives) is the prediction's entity id when
  it named one, else ``FAASPIPE_PRODUCTION_UDI_BASE`` + the prediction's sequence number in the
  monitor's store: production rows are later than the reference rows and ordered by arrival.
- columns a prediction does not carry are left empty when nullable; a non-nullable string
  column (AI4I's product id) gets the first of ``<category><udi>`` / ``<udi>`` its pattern
  accepts, else stays empty and the contract rejects the row.
- the file's bytes depend only on the labelled rows, so a redelivered labels file (or label
  event) writes the same object again and ingest finds the same version.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import re
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from minio import Minio
from minio.error import S3Error

from functions.monitor.store import ProductionRow
from shared import layout
from shared.contracts import Contract, contract_for_model

log = logging.getLogger("faaspipe.monitor")

VERSION_HEX_DIGITS = 16  # as ingest names a version: the first 16 hex digits of the file's SHA-256


@dataclass(frozen=True)
class ProductionConfig:
    ingest_wait_s: float = 60.0  # how long a drift waits for its production rows to be ingested
    udi_base: int = 10_000_000  # udi of a prediction without an entity id: base + its sequence

    @classmethod
    def from_env(cls) -> ProductionConfig:
        return cls(
            ingest_wait_s=float(os.environ.get("FAASPIPE_PRODUCTION_INGEST_WAIT_S", "60")),
            udi_base=int(os.environ.get("FAASPIPE_PRODUCTION_UDI_BASE", "10000000")),
        )


@dataclass(frozen=True)
class ProductionFile:
    dataset: str
    key: str  # in the landing bucket
    version: str  # the dataset version ingest will give it
    rows: int


def udi_of(row: ProductionRow, udi_base: int) -> int:
    if row.entity_id is not None and str(row.entity_id).isdigit():
        return int(row.entity_id)
    return udi_base + row.seq


def _filler(contract: Contract, column: Any, values: dict[str, Any], udi: int) -> str:
    """A value for a non-nullable column the prediction does not carry (see the module docstring)."""
    if column.type == "string" and column.pattern:
        categories = [str(values[c]) for c in contract.categoricals if values.get(c) not in (None, "")]
        for candidate in [*(f"{c}{udi}" for c in categories), str(udi)]:
            if re.search(column.pattern, candidate):
                return candidate
    return ""


def production_csv(contract: Contract, rows: list[ProductionRow], udi_base: int) -> bytes:
    """The rows as a CSV of ``contract`` (its source column names, in its order)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([c.source for c in contract.columns])
    for row in rows:
        udi = udi_of(row, udi_base)
        values = {**row.inputs, contract.entity_key: udi, contract.label: row.truth}
        line = []
        for column in contract.columns:
            value = values.get(column.name)
            if value is None or value == "":
                line.append("" if column.nullable else _filler(contract, column, values, udi))
            else:
                line.append(str(value))
        writer.writerow(line)
    return buffer.getvalue().encode()


def dataset_version(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:VERSION_HEX_DIGITS]


def production_key(contract: Contract, labels_key: str, data: bytes) -> str:
    stem = labels_key.rsplit("/", 1)[-1].rsplit(".", 1)[0] or "labels"
    return f"{layout.production_prefix(contract.landing_prefix)}{stem}-{dataset_version(data)[:8]}.csv"


def write_production(
    s3: Minio, rows: list[ProductionRow], labels_key: str, config: ProductionConfig
) -> list[ProductionFile]:
    """One production file per model's contract for the labelled rows; the files written."""
    by_model: dict[str, list[ProductionRow]] = defaultdict(list)
    for row in rows:
        by_model[row.model_name].append(row)
    written = []
    for model_name, model_rows in sorted(by_model.items()):
        contract = contract_for_model(model_name)
        if contract is None:
            log.warning(
                "no data contract declares model %s: %d labelled rows not kept", model_name, len(model_rows)
            )
            continue
        data = production_csv(contract, model_rows, config.udi_base)
        key = production_key(contract, labels_key, data)
        s3.put_object(layout.LANDING, key, io.BytesIO(data), len(data), content_type="text/csv")
        written.append(ProductionFile(contract.name, key, dataset_version(data), len(model_rows)))
        log.info("%d labelled rows of %s → s3://%s/%s", len(model_rows), model_name, layout.LANDING, key)
    return written


def _exists(s3: Minio, bucket: str, key: str) -> bool:
    try:
        s3.stat_object(bucket, key)
    except S3Error as exc:
        if exc.code in ("NoSuchKey", "NoSuchObject", "NotFound"):
            return False
        raise
    return True


def ingest_outcome(s3: Minio, file: ProductionFile) -> str | None:
    """ "ingested", "rejected" (quarantined) or None (not yet)."""
    if _exists(s3, layout.FEATURES, layout.production_index(file.dataset, file.version)):
        return "ingested"
    _, report_key = layout.quarantined(file.key)
    if _exists(s3, layout.QUARANTINE, report_key):
        report = json.loads(_read(s3, layout.QUARANTINE, report_key))
        if report.get("decision") == "rejected":
            return "rejected"
    return None


def _read(s3: Minio, bucket: str, key: str) -> bytes:
    response = s3.get_object(bucket, key)
    try:
        return response.read()
    finally:
        response.close()
        response.release_conn()


def wait_ingested(
    s3: Minio, files: list[ProductionFile], timeout_s: float, interval_s: float = 0.5
) -> dict[str, str]:
    """Each file's ingest outcome ("ingested" | "rejected" | "pending" when ``timeout_s`` ran out)."""
    deadline = time.monotonic() + timeout_s
    outcomes: dict[str, str] = {}
    while True:
        for file in files:
            if file.key not in outcomes:
                outcome = ingest_outcome(s3, file)
                if outcome is not None:
                    outcomes[file.key] = outcome
        if len(outcomes) == len(files) or time.monotonic() >= deadline:
            return {f.key: outcomes.get(f.key, "pending") for f in files}
        time.sleep(interval_s)
