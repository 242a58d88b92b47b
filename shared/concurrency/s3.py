"""S3 backend of :class:`~shared.concurrency.base.VersionedStore`: conditional writes on ETags.

``If-None-Match: *`` creates an object only if it does not exist, ``If-Match: <etag>``
replaces it only if it is still that version; the loser gets HTTP 412 PreconditionFailed (AWS
also answers 409 ConditionalRequestConflict to a write racing another, and 404 NoSuchKey to
``If-Match`` on a deleted key: all three are a lost race here). SeaweedFS 4.x (the local stack;
``tests/test_concurrency.py`` checks it under racing writers), AWS S3 (since 2024) and MinIO
honour both on PutObject.

The minio SDK's ``put_object`` turns unknown headers into user metadata (``x-amz-meta-*``),
so the conditional write uses its ``_put_object``, which sends headers as they are.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from shared.concurrency.base import Versioned
from shared.concurrency.exceptions import Conflict

if TYPE_CHECKING:
    from minio import Minio

PRECONDITION_CODES = ("PreconditionFailed", "ConditionalRequestConflict")


class S3VersionedStore:
    """JSON documents in one bucket, versioned by ETag."""

    def __init__(self, client: Minio, bucket: str) -> None:
        self.client = client
        self.bucket = bucket

    def read(self, key: str) -> Versioned | None:
        from minio.error import S3Error

        try:
            response = self.client.get_object(self.bucket, key)
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchBucket"):
                return None
            raise
        try:
            body = response.read()
            etag = str(response.headers.get("ETag", "")).strip('"')
        finally:
            response.close()
            response.release_conn()
        return Versioned(json.loads(body), etag)

    def write(self, key: str, doc: Any, *, expected: str | None) -> str:
        from minio.error import S3Error

        body = json.dumps(doc, indent=1, sort_keys=True).encode()
        condition = {"If-None-Match": "*"} if expected is None else {"If-Match": f'"{expected}"'}
        try:
            result = self.client._put_object(  # noqa: SLF001 - see the module docstring
                self.bucket, key, body, headers={"Content-Type": "application/json", **condition}
            )
        except S3Error as exc:
            gone = expected is not None and exc.code == "NoSuchKey"
            status = exc.response.status if exc.response is not None else None
            if gone or exc.code in PRECONDITION_CODES or status in (409, 412):
                raise Conflict(f"s3://{self.bucket}/{key}: {exc.code}") from exc
            raise
        return str(result.etag)
