"""Online features by entity id, from the feature-server function (an http function)."""

from __future__ import annotations

import json
from typing import Any

import urllib3

from functions.predict.inputs import BadInput
from shared.auth.bearer import own_authorization

# A read waits as long as the gateway may hold a request for a feature-server replica that is
# starting (or a first online read that loads the store's client on a busy node): 5 s turned a
# slow first read into a 503. A refused connection is retried once, a read never (no doubling).
READ_TIMEOUT_S = 30.0
CONNECT_TIMEOUT_S = 3.0


class FeatureServer:
    """``POST <gateway>/feature-server/online {"dataset", "entities"}`` → ``{"rows": [row | null]}``."""

    def __init__(self, base_url: str, dataset: str, http: urllib3.PoolManager | None = None) -> None:
        self.url = f"{base_url.rstrip('/')}/online"
        self.dataset = dataset
        self.http = http or urllib3.PoolManager(
            maxsize=16,
            retries=urllib3.Retry(total=1, connect=1, read=0, status=0, redirect=0),
            timeout=urllib3.Timeout(connect=CONNECT_TIMEOUT_S, read=READ_TIMEOUT_S),
        )

    def rows(self, entities: list[int]) -> list[dict[str, Any]]:
        """One row per entity; unknown entities → ``BadInput`` 404 naming them all."""
        body = json.dumps({"dataset": self.dataset, "entities": entities}).encode()
        try:
            resp = self.http.request(
                "POST",
                self.url,
                body=body,
                headers={"Content-Type": "application/json", **own_authorization()},
            )
        except urllib3.exceptions.HTTPError as exc:
            raise BadInput(f"feature server at {self.url} unreachable: {exc}", status=503) from exc
        if resp.status != 200:
            raise BadInput(
                f"feature server at {self.url} answered {resp.status}: {resp.data[:300].decode(errors='replace')}",
                status=503 if resp.status in (404, 503) or resp.status >= 500 else 502,
            )
        try:
            rows = json.loads(resp.data)["rows"]
        except (ValueError, KeyError, TypeError) as exc:
            raise BadInput(f"feature server answered an unexpected body: {exc}", status=502) from exc
        if not isinstance(rows, list) or len(rows) != len(entities):
            raise BadInput(
                f"feature server returned {len(rows) if isinstance(rows, list) else rows!r} rows for {len(entities)} entities",
                status=502,
            )
        unknown = [entity for entity, row in zip(entities, rows, strict=True) if row is None]
        if unknown:
            raise BadInput(
                f"unknown entity id(s) {unknown}: no online features for dataset '{self.dataset}'", status=404
            )
        return rows
