"""Which version carries a registry alias: MLflow's REST API over urllib3.

No mlflow client, so the lean serving image (predict, retrain-controller) can ask. ``None``
means the model, or the alias, does not exist; an unreachable or failing registry raises
``RegistryError``.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

import urllib3

CHAMPION = "champion"


class RegistryError(RuntimeError):
    """The MLflow registry could not be asked (down, or an unexpected answer)."""


class RegistryClient:
    """Reads registry aliases over MLflow's REST API."""

    def __init__(self, tracking_uri: str, http: urllib3.PoolManager | None = None) -> None:
        self.tracking_uri = tracking_uri.rstrip("/")
        self.http = http or urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(connect=2, read=10))

    def alias_version(self, model_name: str, alias: str = CHAMPION) -> str | None:
        """Version carrying ``alias`` on ``model_name``; ``None`` if the model or alias does not exist."""
        url = f"{self.tracking_uri}/api/2.0/mlflow/registered-models/alias"
        try:
            resp = self.http.request("GET", url, fields={"name": model_name, "alias": alias})
        except urllib3.exceptions.HTTPError as exc:
            raise RegistryError(f"MLflow registry at {self.tracking_uri} unreachable: {exc}") from exc
        body: dict[str, Any] = {}
        with contextlib.suppress(ValueError):
            body = json.loads(resp.data or b"{}")
        if resp.status == 200:
            return str(body["model_version"]["version"])
        code, message = body.get("error_code"), str(body.get("message", ""))
        if code == "RESOURCE_DOES_NOT_EXIST" or (
            code == "INVALID_PARAMETER_VALUE" and "alias" in message and "not found" in message
        ):
            return None
        raise RegistryError(f"MLflow alias lookup answered {resp.status}: {resp.data[:300]!r}")

    def version_aliases(self, model_name: str, version: str) -> list[str] | None:
        """The aliases ``version`` of ``model_name`` carries; ``None`` if there is no such version."""
        url = f"{self.tracking_uri}/api/2.0/mlflow/model-versions/get"
        try:
            resp = self.http.request("GET", url, fields={"name": model_name, "version": version})
        except urllib3.exceptions.HTTPError as exc:
            raise RegistryError(f"MLflow registry at {self.tracking_uri} unreachable: {exc}") from exc
        body: dict[str, Any] = {}
        with contextlib.suppress(ValueError):
            body = json.loads(resp.data or b"{}")
        if resp.status == 200:
            return [str(a) for a in body.get("model_version", {}).get("aliases", [])]
        if body.get("error_code") in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise RegistryError(f"MLflow model-version lookup answered {resp.status}: {resp.data[:300]!r}")

    def model_tag(self, model_name: str, key: str) -> str | None:
        """The registered model's tag ``key``; ``None`` if the model or the tag does not exist."""
        url = f"{self.tracking_uri}/api/2.0/mlflow/registered-models/get"
        try:
            resp = self.http.request("GET", url, fields={"name": model_name})
        except urllib3.exceptions.HTTPError as exc:
            raise RegistryError(f"MLflow registry at {self.tracking_uri} unreachable: {exc}") from exc
        body: dict[str, Any] = {}
        with contextlib.suppress(ValueError):
            body = json.loads(resp.data or b"{}")
        if resp.status == 200:
            tags = body.get("registered_model", {}).get("tags", [])
            return next((str(t.get("value", "")) for t in tags if t.get("key") == key), None)
        if body.get("error_code") in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise RegistryError(f"MLflow registered-model lookup answered {resp.status}: {resp.data[:300]!r}")
