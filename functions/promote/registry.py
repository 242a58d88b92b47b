"""The MLflow model registry seen by promote: the champion alias and the versions' scores."""

from __future__ import annotations

from typing import Any

from shared import layout, modelling

CHAMPION = "champion"


class MlflowRegistry:
    def __init__(self, client: Any | None = None, alias: str = CHAMPION) -> None:
        self.client = client if client is not None else modelling.mlflow_client()
        self.alias = alias

    def champion(self, model_name: str) -> str | None:
        return self.alias_version(model_name, self.alias)

    def set_champion(self, model_name: str, version: str) -> None:
        self.client.set_registered_model_alias(model_name, self.alias, version)

    def roc_auc(self, model_name: str, version: str) -> float | None:
        """A version's holdout ROC-AUC: its ``faaspipe.holdout_roc_auc`` tag, else its meta.json."""
        tags = self.client.get_model_version(model_name, version).tags
        if tags.get("faaspipe.holdout_roc_auc"):
            return float(tags["faaspipe.holdout_roc_auc"])
        meta = modelling.get_json(layout.MODELS, layout.serving_model(model_name, version, "meta.json"))
        value = ((meta or {}).get("metrics") or {}).get("roc_auc")
        return float(value) if value is not None else None

    def tag(self, model_name: str, version: str, key: str, value: str) -> None:
        self.client.set_model_version_tag(model_name, version, key, value)

    # ------------------------------------------------------------------ rollouts
    def alias_version(self, model_name: str, alias: str) -> str | None:
        from mlflow.exceptions import MlflowException

        try:
            return str(self.client.get_model_version_by_alias(model_name, alias).version)
        except MlflowException as exc:
            if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
                return None
            raise

    def set_alias(self, model_name: str, alias: str, version: str) -> None:
        self.client.set_registered_model_alias(model_name, alias, version)

    def delete_alias(self, model_name: str, alias: str) -> None:
        """Remove ``alias`` (a no-op when no version carries it)."""
        if self.alias_version(model_name, alias) is not None:
            self.client.delete_registered_model_alias(model_name, alias)

    def model_tag(self, model_name: str, key: str) -> str | None:
        value = self.client.get_registered_model(model_name).tags.get(key)
        return None if value is None else str(value)

    def set_model_tag(self, model_name: str, key: str, value: str) -> None:
        self.client.set_registered_model_tag(model_name, key, value)

    def delete_model_tag(self, model_name: str, key: str) -> None:
        if self.model_tag(model_name, key) is not None:
            self.client.delete_registered_model_tag(model_name, key)
