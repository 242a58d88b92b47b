"""The champion of a dataset's model for a batch: the registry alias, loaded as predict loads it.

Each batch asks the registry which version carries the alias (one REST call), so a file is
scored by the champion of the moment it is scored; the loaded Booster is kept per model and
reused while the alias stays on its version. Loading is predict's own ``load_model`` (the
same artefact checks), with the Booster's thread count raised for batch work.
"""

from __future__ import annotations

import logging
import threading

from minio import Minio

from functions.predict.champion import ArtefactError, LoadedModel, load_model
from shared.contracts import Contract
from shared.registry_alias import CHAMPION, RegistryClient

__all__ = ["ArtefactError", "Champions", "NoChampion"]

log = logging.getLogger("faaspipe.batch_score.champions")


class NoChampion(LookupError):
    """The dataset's model has no version carrying the alias."""


class Champions:
    """Loaded champions by model name; ``current`` reloads when the alias moved."""

    def __init__(self, registry: RegistryClient, s3: Minio, *, nthread: int, alias: str = CHAMPION) -> None:
        self.registry = registry
        self.s3 = s3
        self.nthread = nthread
        self.alias = alias
        self._loaded: dict[str, LoadedModel] = {}
        self._lock = threading.Lock()

    def current(self, contract: Contract) -> LoadedModel:
        """The model version carrying the alias now (``RegistryError`` if the registry fails,
        :class:`NoChampion` if there is none, ``ArtefactError`` if it cannot be loaded)."""
        name = contract.model_name
        version = self.registry.alias_version(name, self.alias)
        if version is None:
            raise NoChampion(
                f"registered model {name!r} has no {self.alias!r} alias in {self.registry.tracking_uri}"
            )
        with self._lock:
            loaded = self._loaded.get(name)
            if loaded is not None and loaded.version == version:
                return loaded
            model = load_model(self.s3, contract, name, version)
            model.booster.set_param({"nthread": self.nthread})
            self._loaded[name] = model
        log.info("%s v%s loaded for batch scoring (nthread %d)", name, version, self.nthread)
        return model
