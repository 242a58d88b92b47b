"""The model repository of a predict replica: every contract's champion, loaded on first use.

Each contract declares a model (``model_name``); its serving alias (``champion``) is looked up
and loaded the first time a request names the model or its dataset, then kept current by the
promotion event and the poll. A version pinned by URL is served while it carries one of the
rollout aliases (``champion``, ``challenger``, ``canary``).

Loaded models share a memory budget (``FAASPIPE_PREDICT_MEMORY_MB``); past it the least recently
used one is unloaded (and loaded again on its next request). One model failing to load answers
its own requests with the reason and never touches another model's.

A rollout in progress (the registered model's ``faaspipe.rollout`` tag, ``shared/rollout.py``)
is read with the alias, whenever the champion is loaded or refreshed, and kept per model
(``rollout(model)``): the data plane routes by it.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from minio import Minio
from prometheus_client import Counter, Gauge

from functions.predict.champion import ChampionHolder, LoadedModel, load_model
from functions.predict.inputs import BadInput
from shared.contracts import Contract
from shared.registry_alias import RegistryClient, RegistryError
from shared.rollout import ROLLOUT_TAG, Rollout

log = logging.getLogger("faaspipe.predict.repository")

PINNABLE_ALIASES = ("champion", "challenger", "canary")
LOADED = Gauge("faaspipe_predict_models_loaded", "Model versions loaded in this replica")
LOADED_BYTES = Gauge("faaspipe_predict_models_bytes", "Estimated memory of the loaded models (bytes)")
BUDGET_BYTES = Gauge("faaspipe_predict_models_budget_bytes", "Memory budget of the loaded models (bytes)")
EVICTIONS = Counter("faaspipe_predict_model_evictions_total", "Models unloaded to stay within the budget")


class Unavailable(RuntimeError):
    """The model is known but cannot serve now (no champion yet, or its load failed): 503."""


@dataclass(frozen=True)
class Entry:
    """What the repository index says of one model."""

    name: str
    dataset: str
    version: str | None
    state: str  # READY | UNAVAILABLE | UNLOADED (the repository extension's states)
    reason: str

    def as_dict(self) -> dict[str, str]:
        doc = {"name": self.name, "state": self.state, "reason": self.reason}
        return doc | ({"version": self.version} if self.version else {})


class ModelRepository:
    def __init__(
        self,
        contracts: Mapping[str, Contract],
        registry: RegistryClient,
        s3: Minio,
        *,
        alias: str = "champion",
        budget_bytes: int = 512 * 1024 * 1024,
        holder_factory: Callable[..., ChampionHolder] = ChampionHolder,
    ) -> None:
        self.contracts = {c.model_name: c for c in contracts.values()}
        self.by_dataset = {c.name: c.model_name for c in contracts.values()}
        self.registry, self.s3, self.alias = registry, s3, alias
        self.budget_bytes = budget_bytes
        self._holder_factory = holder_factory
        self._holders: dict[str, ChampionHolder] = {}
        self._pinned: dict[tuple[str, str], LoadedModel] = {}
        self._lru: OrderedDict[tuple[str, str | None], int] = OrderedDict()  # (model, pinned version) → bytes
        self._evicted: set[str] = set()  # champions unloaded for the budget: back on their next request
        self._lock = threading.RLock()
        self._rollouts: dict[str, Rollout] = {}  # model → the rollout in progress
        self.on_swap: Callable[[str], None] | None = None  # called with a model whose alias moved
        BUDGET_BYTES.set(budget_bytes)

    # ---------------------------------------------------------------- names
    def resolve(self, name: str) -> str:
        """A model name, or a dataset (contract) name → the model name; 404 otherwise."""
        if name in self.contracts:
            return name
        if name in self.by_dataset:
            return self.by_dataset[name]
        raise BadInput(
            f"unknown model '{name}'; served models: {sorted(self.contracts)} "
            f"(or their datasets {sorted(self.by_dataset)})",
            status=404,
        )

    def contract(self, model: str) -> Contract:
        return self.contracts[model]

    # ---------------------------------------------------------------- champions
    def holder(self, model: str) -> ChampionHolder:
        """The model's alias holder, created (not loaded) on first use."""
        with self._lock:
            holder = self._holders.get(model)
            if holder is None:
                holder = self._holder_factory(
                    self.contracts[model], self.registry, self.s3, model_name=model, alias=self.alias
                )
                self._holders[model] = holder
            return holder

    def champion(self, model: str) -> LoadedModel:
        """The model's current champion, loaded now if this replica has not loaded it yet."""
        holder = self.holder(model)
        current = holder.current
        if current is None:
            try:
                holder.refresh()
            except Exception as exc:  # noqa: BLE001 - this model's problem, answered as its 503
                raise Unavailable(f"model '{model}': {holder.unavailable_reason}") from exc
            current = holder.current
            if current is None:
                raise Unavailable(f"model '{model}': {holder.unavailable_reason}")
            self.refresh_rollout(model)
        with self._lock:
            self._evicted.discard(model)
        self._used(model, None, current)
        return current

    def get(self, model: str, version: str | None = None) -> LoadedModel:
        """The champion, or a pinned ``version`` that carries a rollout alias; 404 otherwise."""
        if version is None:
            return self.champion(model)
        holder = self.holder(model)
        current = holder.current
        if current is not None and current.version == version:
            self._used(model, None, current)
            return current
        with self._lock:
            pinned = self._pinned.get((model, version))
        if pinned is None:
            try:
                aliases = self.registry.version_aliases(model, version)
            except RegistryError as exc:
                raise Unavailable(f"model '{model}' version '{version}': {exc}") from exc
            if aliases is None:
                raise BadInput(f"model '{model}' has no version '{version}'", status=404)
            if not set(aliases) & set(PINNABLE_ALIASES):
                raise BadInput(
                    f"model '{model}' version '{version}' is not served: it carries none of the aliases "
                    f"{list(PINNABLE_ALIASES)} (it has {sorted(aliases) or 'none'})",
                    status=404,
                )
            try:
                pinned = load_model(self.s3, self.contracts[model], model, version)
            except Exception as exc:  # noqa: BLE001 - answered as this version's 503
                raise Unavailable(
                    f"model '{model}' version '{version}': {type(exc).__name__}: {exc}"
                ) from exc
            with self._lock:
                self._pinned[(model, version)] = pinned
        self._used(model, version, pinned)
        return pinned

    # ---------------------------------------------------------------- repository extension
    def load(self, model: str) -> LoadedModel:
        return self.champion(model)

    def unload(self, model: str) -> None:
        with self._lock:
            holder = self._holders.pop(model, None)
            self._evicted.discard(model)
            for key in [k for k in self._pinned if k[0] == model]:
                del self._pinned[key]
            for key in [k for k in self._lru if k[0] == model]:
                del self._lru[key]
            self._publish()
        if holder is not None:
            holder.stop()

    def index(self) -> list[Entry]:
        entries = []
        for model, contract in sorted(self.contracts.items()):
            holder = self._holders.get(model)
            current = holder.current if holder else None
            if current is not None:
                entries.append(Entry(model, contract.name, current.version, "READY", ""))
            elif holder is not None:
                entries.append(Entry(model, contract.name, None, "UNAVAILABLE", holder.unavailable_reason))
            else:
                entries.append(Entry(model, contract.name, None, "UNLOADED", "loaded on its first request"))
        return entries

    # ---------------------------------------------------------------- keeping current
    def refresh(self, model: str) -> bool:
        """The alias moved (event, poll): reload if this replica serves the model; True if swapped.
        A model unloaded for the budget stays unloaded until a request asks for it."""
        with self._lock:
            holder = self._holders.get(model)
            if holder is None or model in self._evicted:
                return False
        swapped = holder.refresh()
        self.refresh_rollout(model)
        if swapped and holder.current is not None:
            self._used(model, None, holder.current)
            if self.on_swap is not None:
                self.on_swap(model)
        return swapped

    def refresh_all(self) -> None:
        """The poll: every loaded model converges on its alias, one model's failure aside, and a
        pinned version that lost its rollout aliases is no longer served."""
        with self._lock:
            models, pinned = list(self._holders), list(self._pinned)
        for model in models:
            try:
                self.refresh(model)
            except Exception as exc:  # noqa: BLE001 - keep serving what is loaded; retry next poll
                log.warning("refreshing %s failed: %s", model, exc)
        for model, version in pinned:
            try:
                aliases = self.registry.version_aliases(model, version)
            except Exception as exc:  # noqa: BLE001 - unknown: keep it until the registry answers
                log.warning("alias lookup of %s v%s failed: %s", model, version, exc)
                continue
            if not set(aliases or ()) & set(PINNABLE_ALIASES):
                with self._lock:
                    self._pinned.pop((model, version), None)
                    self._lru.pop((model, version), None)
                    self._publish()

    # ---------------------------------------------------------------- rollouts
    def rollout(self, model: str) -> Rollout | None:
        """The rollout in progress for ``model``, as last read from the registry."""
        return self._rollouts.get(model)

    def refresh_rollout(self, model: str) -> None:
        """Read the model's rollout tag; a registry failure keeps what was read before."""
        try:
            text = self.registry.model_tag(model, ROLLOUT_TAG)
        except RegistryError as exc:
            log.warning("rollout tag of %s unreadable (%s); keeping what was read before", model, exc)
            return
        try:
            rollout = Rollout.from_json(text) if text else None
        except (ValueError, TypeError, KeyError) as exc:
            log.warning("rollout tag of %s is malformed (%s); serving the champion only", model, exc)
            rollout = None
        with self._lock:
            before = self._rollouts.pop(model, None)
            if rollout is not None:
                self._rollouts[model] = rollout
        if (before and before.id) != (rollout and rollout.id):
            log.info(
                "%s: rollout %s",
                model,
                f"{rollout.id} ({rollout.mode} of v{rollout.candidate})" if rollout else "ended",
            )

    def loaded_names(self) -> list[str]:
        with self._lock:
            return [m for m, h in self._holders.items() if h.current is not None]

    # ---------------------------------------------------------------- memory budget
    def _used(self, model: str, version: str | None, loaded: LoadedModel) -> None:
        key = (model, version)
        with self._lock:
            self._lru[key] = loaded.size_bytes
            self._lru.move_to_end(key)
            while sum(self._lru.values()) > self.budget_bytes and len(self._lru) > 1:
                victim, _ = self._lru.popitem(last=False)
                self._evict(victim)
            self._publish()

    def _evict(self, key: tuple[str, str | None]) -> None:
        model, version = key
        EVICTIONS.inc()
        log.info("unloading %s %s to stay within %d bytes", model, version or "champion", self.budget_bytes)
        if version is not None:
            self._pinned.pop((model, version), None)
        else:
            holder = self._holders.get(model)
            if holder is not None:
                holder.current = None  # loaded again by its next request, not by the poll
                self._evicted.add(model)

    def _publish(self) -> None:
        LOADED.set(len(self._lru))
        LOADED_BYTES.set(sum(self._lru.values()))
