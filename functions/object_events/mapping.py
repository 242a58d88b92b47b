"""Object-storage notifications → ``dev.faaspipe.object.created.v1`` CloudEvents (pure functions).

Two input formats are recognised:

- **SeaweedFS filer webhook** (``[notification.webhook]`` in ``notification.toml``): one
  ``{"event_type", "key", "message": {"old_entry", "new_entry", "new_parent_path", ...}}`` per
  request, where ``key`` is the filer path ``/buckets/<bucket>/<key>``.
- **S3 / MinIO bucket notifications**: ``{"Records": [{"eventName", "eventTime", "s3": {...}}]}``.

The mapping follows the CloudEvents AWS S3 adapter, with our reverse-DNS type:
``source`` = ``s3://<bucket>``, ``subject`` = the object key, ``time`` = the object's mtime
(SeaweedFS) or the record's ``eventTime`` (S3), extension ``partitionkey`` = ``<bucket>/<key>``
(one object's events stay ordered). ``id`` = ``<key>@<version>`` is unique per object version
and stable across redeliveries of the same notification, so the broker's dedupe on
``source`` + ``id`` absorbs notifier retries.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote_plus

from events import new_event
from shared.cloudevents_io import CloudEvent, with_attributes

__all__ = [
    "OBJECT_CREATED",
    "MappingResult",
    "NotANotification",
    "Skipped",
    "events_from_notification",
    "map_notification",
]

OBJECT_CREATED = "dev.faaspipe.object.created.v1"
SEAWEED_BUCKETS_DIR = "/buckets/"
SEAWEED_ETAG_KEY = "Seaweed-X-Amz-ETag"
# MinIO files tagging/retention/legal-hold changes under ObjectCreated: the content is unchanged.
S3_METADATA_ONLY = frozenset(
    {
        "ObjectCreated:PutTagging",
        "ObjectCreated:DeleteTagging",
        "ObjectCreated:PutRetention",
        "ObjectCreated:PutLegalHold",
    }
)


class NotANotification(ValueError):
    """The JSON is neither a SeaweedFS filer webhook nor an S3/MinIO notification."""


@dataclass(frozen=True)
class Skipped:
    """A change that produced no event: ``reason`` is a short, fixed code (a metrics label)."""

    reason: str
    detail: str


@dataclass
class MappingResult:
    """What one notification turned into."""

    format: str  # "seaweedfs" or "s3"
    events: list[CloudEvent] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)


def events_from_notification(payload: Any) -> list[CloudEvent]:
    """The ``object.created`` events of a notification; ``NotANotification`` if it is none."""
    return map_notification(payload).events


def map_notification(payload: Any) -> MappingResult:
    """Detect the format of ``payload`` and map it (events plus what was skipped and why)."""
    if isinstance(payload, Mapping):
        if "Records" in payload:
            return _from_s3(payload)
        if "event_type" in payload and ("message" in payload or "message_data" in payload):
            return _from_seaweedfs(payload)
        if payload.get("Event") == "s3:TestEvent":  # sent by S3 when a notification is configured
            return MappingResult("s3", skipped=[Skipped("test_event", "s3:TestEvent")])
        described = f"a JSON object with keys {sorted(map(str, payload))[:10]}"
    else:
        described = f"a JSON {type(payload).__name__}" if payload is not None else "JSON null"
    raise NotANotification(
        "not an object-storage notification: expected a SeaweedFS filer webhook "
        '{"event_type", "key", "message"} or an S3/MinIO notification {"Records": [...]}, '
        f"got {described}"
    )


def _object_event(
    *,
    bucket: str,
    key: str,
    size: int,
    etag: str,
    version: str,
    content_type: str | None,
    event_name: str,
    origin: str,
    time: datetime | None,
) -> CloudEvent:
    data = {
        "bucket": bucket,
        "key": key,
        "size": size,
        "etag": etag,
        "version": version,
        "content_type": content_type,
        "event_name": event_name,
        "origin": origin,
    }
    event = new_event(
        OBJECT_CREATED,
        data,
        source=f"s3://{bucket}",
        subject=key,
        id=f"{key}@{version}",
        extensions={"partitionkey": f"{bucket}/{key}"},
    )
    return with_attributes(event, time=time) if time is not None else event


def _as_int(value: Any, default: int | None = None) -> int | None:
    if isinstance(value, bool):
        return default
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            return default
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return default


def _unquote_etag(etag: Any) -> str:
    return etag.strip().strip('"') if isinstance(etag, str) else ""


# --- SeaweedFS filer webhook -------------------------------------------------------------


@dataclass(frozen=True)
class _Entry:
    """The fields of a filer ``Entry`` that matter for an object version."""

    etag: str
    size: int
    stamp: str  # newest chunk modified_ts_ns, else mtime
    mtime: int | None
    newest_chunk_ns: int | None
    mime: str | None
    is_directory: bool

    @property
    def version(self) -> str:
        parts = [p for p in (self.etag, self.stamp) if p]
        return "-".join(parts) or "0"

    def content(self) -> tuple[str, int, str]:
        return self.etag, self.size, self.stamp


def _b64(value: Any) -> bytes | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None


def _seaweed_etag(entry: Mapping[str, Any], attributes: Mapping[str, Any]) -> str:
    extended = entry.get("extended")
    if isinstance(extended, Mapping):
        raw = _b64(extended.get(SEAWEED_ETAG_KEY))
        if raw:
            try:
                return _unquote_etag(raw.decode("utf-8"))
            except UnicodeDecodeError:
                pass
    md5 = _b64(attributes.get("md5"))
    return md5.hex() if md5 else ""


def _seaweed_entry(entry: Mapping[str, Any]) -> _Entry:
    attributes = entry.get("attributes")
    attributes = attributes if isinstance(attributes, Mapping) else {}
    chunks = [c for c in entry.get("chunks") or [] if isinstance(c, Mapping)]
    chunk_times = [t for c in chunks if (t := _as_int(c.get("modified_ts_ns"))) is not None]
    newest_chunk_ns = max(chunk_times) if chunk_times else None
    mtime = _as_int(attributes.get("mtime"))
    size = _as_int(attributes.get("file_size"))
    if size is None:  # zero values are omitted from the JSON; fall back on the chunks
        size = sum(_as_int(c.get("size"), 0) or 0 for c in chunks)
    stamp = newest_chunk_ns if newest_chunk_ns is not None else mtime
    mime = attributes.get("mime")
    return _Entry(
        etag=_seaweed_etag(entry, attributes),
        size=max(size, 0),
        stamp="" if stamp is None else str(stamp),
        mtime=mtime,
        newest_chunk_ns=newest_chunk_ns,
        mime=mime if isinstance(mime, str) and mime else None,
        is_directory=bool(entry.get("is_directory")),
    )


def _split_bucket_path(path: str) -> tuple[str, str] | None:
    """``/buckets/<bucket>/<key>`` → (bucket, key); None for anything else or hidden paths."""
    if not path.startswith(SEAWEED_BUCKETS_DIR):
        return None
    bucket, _, key = path[len(SEAWEED_BUCKETS_DIR) :].partition("/")
    if not bucket or not key:
        return None
    if any(segment.startswith(".") for segment in [bucket, *key.split("/")]):
        return None
    return bucket, key


def _entry_path(parent: Any, entry: Mapping[str, Any]) -> str | None:
    name = entry.get("name")
    if isinstance(parent, str) and parent and isinstance(name, str) and name:
        return f"{parent.rstrip('/')}/{name}"
    return None


def _from_seaweedfs(payload: Mapping[str, Any]) -> MappingResult:
    result = MappingResult("seaweedfs")
    event_type = payload.get("event_type")
    key_path = payload.get("key")
    message = payload.get("message", payload.get("message_data"))
    if not isinstance(event_type, str) or not isinstance(key_path, str) or not isinstance(message, Mapping):
        raise NotANotification(
            "malformed SeaweedFS filer webhook notification: need string 'event_type' and 'key' and an object 'message'"
        )
    old, new = message.get("old_entry"), message.get("new_entry")
    old = old if isinstance(old, Mapping) else None
    new = new if isinstance(new, Mapping) else None

    def skip(reason: str, detail: str) -> MappingResult:
        result.skipped.append(Skipped(reason, f"{event_type} {key_path}: {detail}"))
        return result

    if event_type == "delete" or new is None:
        return skip("deleted", "not a creation")
    if event_type not in ("create", "update", "rename"):
        return skip("unknown_event_type", f"unknown event_type {event_type!r}")
    # ``key`` is the old entry's path when there is one; the new path is new_parent_path/name.
    new_path = _entry_path(message.get("new_parent_path"), new) or key_path
    if old is not None and new_path != key_path:
        # A real move. Some filer versions report in-place overwrites as "rename" (the
        # new_parent_path is always set), so only a changed path counts as a rename.
        return skip("renamed", f"moved to {new_path}")
    where = _split_bucket_path(new_path)
    if where is None:
        return skip("not_an_object", "outside /buckets/<bucket>/<key>, or a hidden/internal path")
    new_entry = _seaweed_entry(new)
    if new_entry.is_directory:
        return skip("directory", "a folder, not an object")
    if old is not None and _seaweed_entry(old).content() == new_entry.content():
        return skip("metadata_only", "content unchanged (same etag, size and chunks)")
    bucket, key = where
    if new_entry.mtime is not None:
        time: datetime | None = datetime.fromtimestamp(new_entry.mtime, UTC)
    elif new_entry.newest_chunk_ns is not None:
        time = datetime.fromtimestamp(new_entry.newest_chunk_ns / 1e9, UTC)
    else:
        time = None
    multipart = "-" in new_entry.etag and new_entry.etag.rsplit("-", 1)[1].isdigit()
    result.events.append(
        _object_event(
            bucket=bucket,
            key=key,
            size=new_entry.size,
            etag=new_entry.etag,
            version=new_entry.version,
            content_type=new_entry.mime,
            event_name="ObjectCreated:CompleteMultipartUpload" if multipart else "ObjectCreated:Put",
            origin="seaweedfs",
            time=time,
        )
    )
    return result


# --- S3 / MinIO notifications ------------------------------------------------------------


def _parse_event_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("z", "Z"))
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _from_s3(payload: Mapping[str, Any]) -> MappingResult:
    result = MappingResult("s3")
    records = payload.get("Records")
    if records is None:
        return result
    if not isinstance(records, list):
        raise NotANotification("malformed S3 notification: 'Records' must be a list")
    for i, record in enumerate(records):
        if not isinstance(record, Mapping):
            raise NotANotification(f"malformed S3 notification: Records[{i}] is not an object")
        s3 = record.get("s3")
        s3 = s3 if isinstance(s3, Mapping) else {}
        bucket_doc, object_doc = s3.get("bucket"), s3.get("object")
        bucket = bucket_doc.get("name") if isinstance(bucket_doc, Mapping) else None
        object_doc = object_doc if isinstance(object_doc, Mapping) else {}
        raw_key = object_doc.get("key")
        event_name = record.get("eventName")
        if not (isinstance(bucket, str) and bucket and isinstance(raw_key, str) and raw_key):
            raise NotANotification(
                f"malformed S3 notification: Records[{i}] needs s3.bucket.name and s3.object.key"
            )
        if not isinstance(event_name, str):
            raise NotANotification(f"malformed S3 notification: Records[{i}] has no eventName")
        key = unquote_plus(raw_key)
        name = event_name.removeprefix("s3:")
        if not name.startswith("ObjectCreated:"):
            result.skipped.append(Skipped("not_created", f"{event_name} s3://{bucket}/{key}"))
            continue
        if name in S3_METADATA_ONLY:
            result.skipped.append(Skipped("metadata_only", f"{event_name} s3://{bucket}/{key}"))
            continue
        etag = _unquote_etag(object_doc.get("eTag", object_doc.get("etag")))
        version_id = object_doc.get("versionId")
        if isinstance(version_id, str) and version_id and version_id != "null":
            version = version_id
        else:
            sequencer = object_doc.get("sequencer")
            stamp = sequencer if isinstance(sequencer, str) and sequencer else record.get("eventTime")
            version = "-".join(p for p in (etag, stamp if isinstance(stamp, str) else "") if p) or "0"
        content_type = object_doc.get("contentType")
        result.events.append(
            _object_event(
                bucket=bucket,
                key=key,
                size=max(_as_int(object_doc.get("size"), 0) or 0, 0),
                etag=etag,
                version=version,
                content_type=content_type if isinstance(content_type, str) and content_type else None,
                event_name=name,
                origin="s3",
                time=_parse_event_time(record.get("eventTime")),
            )
        )
    return result
