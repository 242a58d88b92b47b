"""Tests for the object-events source: notification mapping and the HTTP app (local sink)."""

from __future__ import annotations

import base64
import copy
import json
import socket
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest

from events import validate_event
from functions.object_events import app as app_module
from functions.object_events.mapping import (
    OBJECT_CREATED,
    NotANotification,
    events_from_notification,
    map_notification,
)
from shared.topology import load_function

REPO = Path(__file__).resolve().parent.parent
ETAG = "e5ebd4c02cefbe7955977c67ada242b7"
MTIME = 1795507738
CHUNK_NS = 1795507738695137707


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def seaweed_entry(
    name: str = "part-1.csv",
    *,
    etag: str = ETAG,
    size: int = 8,
    mtime: int = MTIME,
    chunk_ns: int = CHUNK_NS,
    extended: dict[str, str] | None = None,
) -> dict[str, Any]:
    md5 = base64.b64encode(bytes.fromhex(etag)).decode()
    return {
        "name": name,
        "chunks": [
            {
                "size": size,
                "modified_ts_ns": chunk_ns,
                "e_tag": md5,
                "fid": {"volume_id": 3, "file_key": 7, "cookie": 2826475238},
            }
        ],
        "attributes": {
            "file_size": size,
            "mtime": mtime,
            "file_mode": 432,
            "crtime": mtime,
            "mime": "text/csv",
            "md5": md5,
            "inode": 8608313638386326693,
        },
        "extended": {
            "Seaweed-X-Amz-ETag": _b64(etag),
            "Seaweed-X-Amz-Owner": _b64("faaspipe"),
            **(extended or {}),
        },
    }


def seaweed(
    event_type: str,
    key: str,
    *,
    old: dict | None = None,
    new: dict | None = None,
    new_parent_path: str | None = None,
) -> dict[str, Any]:
    message: dict[str, Any] = {"delete_chunks": True, "signatures": [-1630518205]}
    if old is not None:
        message["old_entry"] = old
    if new is not None:
        message["new_entry"] = new
        message["new_parent_path"] = new_parent_path or key.rsplit("/", 1)[0]
    return {"event_type": event_type, "key": key, "message": message}


# The real sample captured from `weed` (fid abbreviated).
CREATE = {
    "event_type": "create",
    "key": "/buckets/landing/ai4i/part-1.csv",
    "message": {
        "new_entry": {
            "name": "part-1.csv",
            "chunks": [
                {
                    "size": 8,
                    "modified_ts_ns": CHUNK_NS,
                    "e_tag": "5evUwCzvvnlVl3xnraJCtw==",
                    "fid": {"volume_id": 3, "file_key": 7, "cookie": 2826475238},
                }
            ],
            "attributes": {
                "file_size": 8,
                "mtime": MTIME,
                "file_mode": 432,
                "crtime": MTIME,
                "mime": "text/csv",
                "md5": "5evUwCzvvnlVl3xnraJCtw==",
                "inode": 8608313638386326693,
            },
            "extended": {
                "Seaweed-X-Amz-ETag": "ZTVlYmQ0YzAyY2VmYmU3OTU1OTc3YzY3YWRhMjQyYjc=",
                "Seaweed-X-Amz-Owner": "ZmFhc3BpcGU=",
            },
        },
        "delete_chunks": True,
        "new_parent_path": "/buckets/landing/ai4i",
        "signatures": [-1630518205],
    },
}
NEW_ETAG = "0cc175b9c0f1b6a831c399e269772661"
OVERWRITE = seaweed(
    "update",
    "/buckets/landing/ai4i/part-1.csv",
    old=CREATE["message"]["new_entry"],
    new=seaweed_entry(etag=NEW_ETAG, size=12, mtime=MTIME + 60, chunk_ns=CHUNK_NS + 60_000_000_000),
)
MULTIPART_ETAG = "f74a2f0b47f1a1e5d8b6f3c0d8b0e2a1-2"
MULTIPART = {
    "event_type": "create",
    "key": "/buckets/landing/big/data.csv",
    "message": {
        "new_entry": {
            "name": "data.csv",
            "chunks": [
                {
                    "size": 5242880,
                    "modified_ts_ns": CHUNK_NS,
                    "e_tag": "AAAAAAAAAAAAAAAAAAAAAA==",
                    "fid": {"volume_id": 5, "file_key": 1},
                },
                {
                    "offset": 5242880,
                    "size": 1000,
                    "modified_ts_ns": CHUNK_NS + 5,
                    "e_tag": "AQEBAQEBAQEBAQEBAQEBAQ==",
                    "fid": {"volume_id": 5, "file_key": 2},
                },
            ],
            "attributes": {"file_size": 5243880, "mtime": MTIME, "file_mode": 432, "crtime": MTIME},
            "extended": {"Seaweed-X-Amz-ETag": _b64(MULTIPART_ETAG)},
        },
        "new_parent_path": "/buckets/landing/big",
    },
}

AWS_VERSION_ID = "3sL4kqtJlcpXroDTDmJ+rmSpXd3dIbrHY+MTRCxf3vjVBH40Nr8X8gdRQBpUMLUo"
AWS = {
    "Records": [
        {
            "eventVersion": "2.1",
            "eventSource": "aws:s3",
            "awsRegion": "us-east-1",
            "eventTime": "2024-05-01T12:00:00.123Z",
            "eventName": "ObjectCreated:Put",
            "userIdentity": {"principalId": "AWS:AIDAEXAMPLE"},
            "requestParameters": {"sourceIPAddress": "203.0.113.7"},
            "responseElements": {
                "x-amz-request-id": "C3D13FE58DE4C810",
                "x-amz-id-2": "FMyUVURIY8/IgAtTv8xRjskZQpcIZ9KG4V5Wp6S7S/JRWeUWerMUE5JgHvANOjpD",
            },
            "s3": {
                "s3SchemaVersion": "1.0",
                "configurationId": "faaspipe",
                "bucket": {
                    "name": "landing",
                    "ownerIdentity": {"principalId": "A3NL1KOZZKExample"},
                    "arn": "arn:aws:s3:::landing",
                },
                "object": {
                    "key": "ai4i/part+2%281%29.csv",
                    "size": 1024,
                    "eTag": "d41d8cd98f00b204e9800998ecf8427e",
                    "versionId": AWS_VERSION_ID,
                    "sequencer": "0055AED6DCD90281E5",
                },
            },
        }
    ]
}
MINIO = {
    "EventName": "s3:ObjectCreated:Put",
    "Key": "landing/ai4i/my file.csv",
    "Records": [
        {
            "eventVersion": "2.0",
            "eventSource": "minio:s3",
            "awsRegion": "",
            "eventTime": "2024-05-01T12:00:00.083Z",
            "eventName": "s3:ObjectCreated:Put",
            "userIdentity": {"principalId": "minioadmin"},
            "requestParameters": {"principalId": "minioadmin", "region": "", "sourceIPAddress": "10.0.2.100"},
            "responseElements": {
                "x-amz-id-2": "dd9025bab4ad",
                "x-amz-request-id": "17B0E4F7A1C9E3D2",
                "x-minio-deployment-id": "e6b0b6d5",
                "x-minio-origin-endpoint": "http://10.0.2.15:9000",
            },
            "s3": {
                "s3SchemaVersion": "1.0",
                "configurationId": "Config",
                "bucket": {
                    "name": "landing",
                    "ownerIdentity": {"principalId": "minioadmin"},
                    "arn": "arn:aws:s3:::landing",
                },
                "object": {
                    "key": "ai4i%2Fmy+file.csv",
                    "size": 2048,
                    "eTag": '"9b2cf535f27731c974343645a3985328"',
                    "contentType": "text/csv",
                    "userMetadata": {"content-type": "text/csv"},
                    "versionId": "null",
                    "sequencer": "17B0E4F7A1C9E3D2",
                },
            },
            "source": {
                "host": "10.0.2.100",
                "port": "",
                "userAgent": "MinIO (linux; amd64) minio-go/v7.0.70",
            },
        }
    ],
}


def only(payload: Any):
    events = events_from_notification(payload)
    assert len(events) == 1, events
    validate_event(events[0])
    return events[0]


def ignored(payload: Any) -> list[str]:
    result = map_notification(payload)
    assert result.events == []
    return [s.reason for s in result.skipped]


# --- SeaweedFS -----------------------------------------------------------------------------


def test_seaweedfs_create_maps_to_object_created() -> None:
    event = only(CREATE)
    version = f"{ETAG}-{CHUNK_NS}"
    assert event.get_type() == OBJECT_CREATED
    assert event.get_source() == "s3://landing"
    assert event.get_subject() == "ai4i/part-1.csv"
    assert event.get_id() == f"ai4i/part-1.csv@{version}"
    assert event.get_time() == datetime.fromtimestamp(MTIME, UTC)
    assert event.get_extension("partitionkey") == "landing/ai4i/part-1.csv"
    assert event.get_data() == {
        "bucket": "landing",
        "key": "ai4i/part-1.csv",
        "size": 8,
        "etag": ETAG,
        "version": version,
        "content_type": "text/csv",
        "event_name": "ObjectCreated:Put",
        "origin": "seaweedfs",
    }


def test_seaweedfs_etag_falls_back_on_md5_then_empty() -> None:
    doc = copy.deepcopy(CREATE)
    del doc["message"]["new_entry"]["extended"]
    assert only(doc).get_data()["etag"] == ETAG
    del doc["message"]["new_entry"]["attributes"]["md5"]
    event = only(doc)
    assert event.get_data()["etag"] == ""
    assert event.get_data()["version"] == str(CHUNK_NS)


def test_seaweedfs_overwrite_is_a_new_version() -> None:
    first, second = only(CREATE), only(OVERWRITE)
    data = second.get_data()
    assert data["event_name"] == "ObjectCreated:Put"
    assert (data["etag"], data["size"]) == (NEW_ETAG, 12)
    assert second.get_subject() == first.get_subject()
    assert second.get_id() != first.get_id()
    assert second.get_time() == datetime.fromtimestamp(MTIME + 60, UTC)


def test_seaweedfs_metadata_only_update_is_ignored() -> None:
    tagged = copy.deepcopy(CREATE["message"]["new_entry"])
    tagged["extended"]["X-Amz-Tagging-stage"] = _b64("raw")
    doc = seaweed(
        "update", "/buckets/landing/ai4i/part-1.csv", old=CREATE["message"]["new_entry"], new=tagged
    )
    assert ignored(doc) == ["metadata_only"]
    # Same content (etag, size, chunks) but a touched mtime: still metadata only.
    tagged["attributes"]["mtime"] = MTIME + 5
    assert ignored(doc) == ["metadata_only"]


def test_seaweedfs_same_path_rename_is_an_overwrite_and_real_moves_are_ignored() -> None:
    # Some filer versions label in-place overwrites "rename" (new_parent_path always set).
    doc = copy.deepcopy(OVERWRITE)
    doc["event_type"] = "rename"
    assert only(doc).get_id() == only(OVERWRITE).get_id()
    moved = seaweed(
        "rename",
        "/buckets/landing/ai4i/part-1.csv",
        old=CREATE["message"]["new_entry"],
        new=seaweed_entry(),
        new_parent_path="/buckets/landing/archive",
    )
    assert ignored(moved) == ["renamed"]


@pytest.mark.parametrize(
    ("doc", "reason"),
    [
        pytest.param(
            seaweed(
                "create",
                "/buckets/landing/ai4i",
                new={
                    "name": "ai4i",
                    "is_directory": True,
                    "attributes": {"mtime": MTIME, "file_mode": 2147484141},
                },
            ),
            "directory",
            id="folder",
        ),
        pytest.param(
            seaweed(
                "create",
                "/buckets/landing",
                new={"name": "landing", "is_directory": True, "attributes": {"mtime": MTIME}},
                new_parent_path="/buckets",
            ),
            "not_an_object",
            id="bucket-creation",
        ),
        pytest.param(
            seaweed(
                "create",
                "/buckets/landing/.uploads/6f1e0c2a/0001_3b9a.part",
                new=seaweed_entry("0001_3b9a.part"),
            ),
            "not_an_object",
            id="multipart-part",
        ),
        pytest.param(
            seaweed("create", "/buckets/.system/log/2026-01-01/00-00.0a1b", new=seaweed_entry("00-00.0a1b")),
            "not_an_object",
            id="system",
        ),
        pytest.param(
            seaweed("create", "/etc/faaspipe/x.csv", new=seaweed_entry("x.csv")),
            "not_an_object",
            id="outside-buckets",
        ),
        pytest.param(
            seaweed("delete", "/buckets/landing/ai4i/part-1.csv", old=seaweed_entry()), "deleted", id="delete"
        ),
    ],
)
def test_seaweedfs_non_objects_are_ignored(doc: dict, reason: str) -> None:
    assert ignored(doc) == [reason]


def test_seaweedfs_multipart_completion_counts() -> None:
    event = only(MULTIPART)
    data = event.get_data()
    assert event.get_subject() == "big/data.csv"
    assert data["etag"] == MULTIPART_ETAG
    assert data["size"] == 5243880
    assert data["version"] == f"{MULTIPART_ETAG}-{CHUNK_NS + 5}"
    assert data["content_type"] is None
    assert data["event_name"] == "ObjectCreated:CompleteMultipartUpload"


# --- S3 / MinIO ------------------------------------------------------------------------------


def test_aws_record_maps_with_version_id_and_decoded_key() -> None:
    event = only(AWS)
    assert event.get_source() == "s3://landing"
    assert event.get_subject() == "ai4i/part 2(1).csv"
    assert event.get_id() == f"ai4i/part 2(1).csv@{AWS_VERSION_ID}"
    assert event.get_time() == datetime(2024, 5, 1, 12, 0, 0, 123000, tzinfo=UTC)
    assert event.get_extension("partitionkey") == "landing/ai4i/part 2(1).csv"
    assert event.get_data() == {
        "bucket": "landing",
        "key": "ai4i/part 2(1).csv",
        "size": 1024,
        "etag": "d41d8cd98f00b204e9800998ecf8427e",
        "version": AWS_VERSION_ID,
        "content_type": None,
        "event_name": "ObjectCreated:Put",
        "origin": "s3",
    }


def test_minio_record_maps_with_sequencer_version() -> None:
    event = only(MINIO)
    data = event.get_data()
    version = "9b2cf535f27731c974343645a3985328-17B0E4F7A1C9E3D2"
    assert event.get_subject() == "ai4i/my file.csv"
    assert event.get_id() == f"ai4i/my file.csv@{version}"
    assert data["version"] == version
    assert data["etag"] == "9b2cf535f27731c974343645a3985328"
    assert data["content_type"] == "text/csv"
    assert data["event_name"] == "ObjectCreated:Put"
    assert data["origin"] == "s3"


def test_s3_only_created_records_become_events() -> None:
    created = MINIO["Records"][0]
    removed = copy.deepcopy(created)
    removed["eventName"] = "s3:ObjectRemoved:Delete"
    tagging = copy.deepcopy(created)
    tagging["eventName"] = "s3:ObjectCreated:PutTagging"
    result = map_notification({"Records": [removed, created, tagging]})
    assert [e.get_subject() for e in result.events] == ["ai4i/my file.csv"]
    assert [s.reason for s in result.skipped] == ["not_created", "metadata_only"]


@pytest.mark.parametrize(
    "doc",
    [
        {"Records": []},
        {"Records": None},
        {
            "Service": "Amazon S3",
            "Event": "s3:TestEvent",
            "Time": "2024-05-01T12:00:00.000Z",
            "Bucket": "landing",
        },
    ],
    ids=["empty", "null", "test-event"],
)
def test_s3_empty_and_test_notifications_emit_nothing(doc: dict) -> None:
    assert events_from_notification(doc) == []


@pytest.mark.parametrize(
    "doc",
    [
        None,
        [],
        "hello",
        42,
        {"hello": "world"},
        {"Records": "x"},
        {"Records": [{"s3": {}}]},
        {"Records": [{"eventName": "s3:ObjectCreated:Put"}]},
        {"event_type": "create", "key": 3, "message": {}},
    ],
)
def test_garbage_is_not_a_notification(doc: Any) -> None:
    with pytest.raises(NotANotification, match="notification"):
        events_from_notification(doc)


# --- id stability ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "doc", [CREATE, OVERWRITE, MULTIPART, AWS, MINIO], ids=["create", "update", "multipart", "aws", "minio"]
)
def test_same_notification_twice_gives_the_same_id(doc: dict) -> None:
    assert only(copy.deepcopy(doc)).get_id() == only(copy.deepcopy(doc)).get_id()


def test_new_version_gives_a_new_id() -> None:
    again = seaweed("create", "/buckets/landing/ai4i/part-1.csv", new=seaweed_entry(chunk_ns=CHUNK_NS + 1))
    assert only(again).get_id() != only(CREATE).get_id()  # same bytes, written again
    later = copy.deepcopy(MINIO)
    later["Records"][0]["s3"]["object"]["sequencer"] = "17B0E4F7A1C9E3FF"
    assert only(later).get_id() != only(MINIO).get_id()
    other = copy.deepcopy(AWS)
    other["Records"][0]["s3"]["object"]["versionId"] = "v2"
    assert only(other).get_id() == "ai4i/part 2(1).csv@v2"


# --- the app ---------------------------------------------------------------------------------


class Sink:
    """A tiny broker ingress: records binary-mode requests, answers ``status``."""

    def __init__(self) -> None:
        self.status = 202
        self.requests: list[tuple[dict[str, str], bytes]] = []
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                sink.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
                reply = b"" if sink.status < 300 else json.dumps({"error": "bad event"}).encode()
                self.send_response(sink.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def sink(monkeypatch: pytest.MonkeyPatch) -> Iterator[Sink]:
    server = Sink()
    monkeypatch.setenv("K_SINK", server.url)
    monkeypatch.setattr(app_module, "SINK_BACKOFF_S", 0.0)
    yield server
    server.close()


@pytest.fixture
def client(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv(app_module.BUCKETS_ENV, raising=False)
    return app_module.create_app().test_client()


def test_app_posts_binary_events_to_the_sink(sink: Sink, client) -> None:
    two = {
        "Records": [
            MINIO["Records"][0],
            AWS["Records"][0],
            {**AWS["Records"][0], "eventName": "ObjectRemoved:Delete"},
        ]
    }
    response = client.post("/", json=two)
    assert response.status_code == 200, response.get_json()
    assert response.get_json() == {"accepted": 2, "ignored": 1}
    assert len(sink.requests) == 2
    headers, body = sink.requests[0]
    assert headers["ce-type"] == OBJECT_CREATED
    assert headers["ce-source"] == "s3://landing"
    assert headers["ce-specversion"] == "1.0"
    assert unquote(headers["ce-partitionkey"]) == "landing/ai4i/my file.csv"  # %-encoded on the wire
    assert headers["ce-traceparent"].startswith("00-")
    assert headers["content-type"].startswith("application/json")
    assert json.loads(body)["key"] == "ai4i/my file.csv"


def test_app_seaweedfs_webhook(sink: Sink, client) -> None:
    response = client.post("/", json=CREATE)
    assert response.get_json() == {"accepted": 1, "ignored": 0}
    assert sink.requests[0][0]["ce-id"] == f"ai4i/part-1.csv@{ETAG}-{CHUNK_NS}"
    folder = seaweed("create", "/buckets/landing/ai4i", new={"name": "ai4i", "is_directory": True})
    response = client.post("/", json=folder)
    assert (response.status_code, response.get_json()) == (200, {"accepted": 0, "ignored": 1})
    assert len(sink.requests) == 1


def test_app_bucket_allow_list(sink: Sink, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(app_module.BUCKETS_ENV, "raw, other")
    response = app_module.create_app().test_client().post("/", json=CREATE)
    assert (response.status_code, response.get_json()) == (200, {"accepted": 0, "ignored": 1})
    assert sink.requests == []


@pytest.mark.parametrize("body", [b"not json{", b'{"hello": "world"}', b"[]"])
def test_app_rejects_garbage_with_400(sink: Sink, client, body: bytes) -> None:
    response = client.post("/", data=body, content_type="application/json")
    assert response.status_code == 400
    assert "error" in response.get_json()
    assert sink.requests == []


def test_app_503_when_the_sink_is_down(client, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("K_SINK", f"http://127.0.0.1:{port}/")
    monkeypatch.setattr(app_module, "SINK_BACKOFF_S", 0.0)
    response = client.post("/", json=CREATE)
    assert response.status_code == 503
    assert "unavailable" in response.get_json()["error"]


def test_app_retries_5xx_then_503(sink: Sink, client) -> None:
    sink.status = 503
    response = client.post("/", json=CREATE)
    assert response.status_code == 503
    assert len(sink.requests) == app_module.SINK_ATTEMPTS


def test_app_502_when_the_sink_rejects_the_event(sink: Sink, client) -> None:
    sink.status = 400
    response = client.post("/", json=CREATE)
    assert response.status_code == 502
    assert "bad event" in response.get_json()["error"]
    assert len(sink.requests) == 1  # a 4xx is not retried


def test_app_without_events_needs_no_sink(client, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("K_SINK", raising=False)
    response = client.post("/", json={"Records": []})
    assert (response.status_code, response.get_json()) == (200, {"accepted": 0, "ignored": 0})


def test_function_yaml_is_a_valid_source() -> None:
    fn = load_function(REPO / "functions" / "object_events" / "function.yaml")
    assert (fn.name, fn.kind, fn.module, fn.environment) == (
        "object-events",
        "source",
        "functions.object_events.app",
        "serving",
    )
    assert not fn.idempotent
    assert (fn.scaling.min_replicas, fn.scaling.max_replicas) == (1, 1)
    assert fn.triggers == ()
