"""The Feast feature repository, built in code from a data contract (no ``feature_store.yaml``).

Project ``faaspipe``; per contract one entity (``entity_key``, INT64), one ``FileSource`` over a
dataset version's offline Parquet in S3 (``s3://features/offline/<dataset>/version=<v>/data.parquet``,
``s3_endpoint_override`` = ``$FAASPIPE_S3_ENDPOINT``) and one ``FeatureView`` named
``contract.feature_view`` holding the model features (raw and derived) plus the raw inputs and
string identifiers. The label is not in the view: training takes it from the entity dataframe.

Registry: Feast's SQL registry on PostgreSQL when ``FAASPIPE_DATABASE_URL`` is set (the
cluster: every replica shares it, and a pod's restart loses nothing; ``apply`` is serialised
by a PostgreSQL advisory lock), else ``$FAASPIPE_STATE_DIR/feast/registry.db`` (localdev: a
file registry whose writes are atomic, see ``AtomicFileRegistryStore``, serialised by a file
lock). Online store: Redis when ``FAASPIPE_FEAST_REDIS`` is set (``host:port[,db=N]``), else
SQLite ``$FAASPIPE_STATE_DIR/feast/online.db``. Offline store: ``file``, over S3. The pinned
stores' private registries (below) are per-process caches, rebuilt on demand.

**How versions are tracked.** Each dataset version is its own Parquet object (content
addressed, never rewritten), and the FileSource points at exactly one version:

- the *shared* registry (online serving) follows the latest materialised version: ``apply``
  re-points the source when the version changes, and only then (a definition fingerprint in
  the view's tags makes redeliveries and restarts no-ops);
- training is pinned: ``feature_store(contract, version)`` returns a store over a private,
  in-process registry holding that version's definitions, so ``training_frame(contract, v)``
  joins exactly version ``v`` even if a newer version has been applied meanwhile.

A directory source over all versions was rejected: the versions overlap (a re-sent or
corrected file carries the same entity keys and event times), so the point-in-time join would
mix versions and a training run could not name the data it saw.

Feast is imported lazily: this module imports anywhere, Feast is needed in the ``train`` env only.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import functools
import hashlib
import io
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from shared import layout, settings, training_sample
from shared.contracts import Contract
from shared.sqldb import DATABASE_URL_ENV

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow.parquet as pq
    from feast import Entity, FeatureStore, FeatureView, FileSource

__all__ = [
    "EVENT_TIMESTAMP",
    "PROJECT",
    "apply",
    "definition_fingerprint",
    "feature_store",
    "materialise",
    "offline_uri",
    "online_features",
    "online_store_kind",
    "read_offline",
    "training_frame",
    "training_set",
    "view_features",
]

log = logging.getLogger("faaspipe.feast")

PROJECT = "faaspipe"
EVENT_TIMESTAMP = "event_timestamp"
REDIS_ENV = "FAASPIPE_FEAST_REDIS"
FINGERPRINT_TAG = "faaspipe.definition"
VERSION_TAG = "faaspipe.dataset_version"
REGISTRY_CACHE_TTL_S = 10
_VIEW_FEATURES: dict[str, tuple[str, ...]] = {}
_DEFAULT_STATE_DIR = Path(__file__).resolve().parent.parent / ".faaspipe"
_FEAST_TYPES = {"int": "Int64", "float": "Float64", "string": "String", "category": "String"}


# --- where things are -------------------------------------------------------------------


def feast_dir() -> Path:
    return Path(os.environ.get("FAASPIPE_STATE_DIR") or _DEFAULT_STATE_DIR) / "feast"


def online_store_kind() -> Literal["sqlite", "redis"]:
    return "redis" if os.environ.get(REDIS_ENV) else "sqlite"


def s3_endpoint() -> str:
    return os.environ.get("FAASPIPE_S3_ENDPOINT", "http://127.0.0.1:8333")


def offline_uri(contract: Contract, version: str) -> str:
    return f"s3://{layout.FEATURES}/{layout.offline_data(contract.name, version)}"


# --- definitions ------------------------------------------------------------------------


def view_features(contract: Contract) -> tuple[str, ...]:
    """The view's features: model features, the raw inputs behind them, string identifiers."""
    cached = _VIEW_FEATURES.get(contract.ref)
    if cached is None:
        names = list(contract.model_features)
        names += [n for n in contract.raw_inputs if n not in names]
        names += [c.name for c in contract.columns if c.type == "string" and c.name not in names]
        cached = tuple(n for n in names if n not in (contract.entity_key, contract.label))
        _VIEW_FEATURES[contract.ref] = cached
    return cached


def _feature_type(contract: Contract, name: str) -> str:
    if name in contract.derived:
        return "Float64"
    return _FEAST_TYPES[contract.column(name).type]


def definition_fingerprint(contract: Contract, version: str) -> str:
    """A digest of everything ``apply`` would register; equal digests → nothing to apply."""
    doc = {
        "project": PROJECT,
        "entity": contract.entity_key,
        "source": offline_uri(contract, version),
        "s3_endpoint": s3_endpoint(),
        "view": contract.feature_view,
        "fields": [[name, _feature_type(contract, name)] for name in view_features(contract)],
        "ttl_s": 0,
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def definitions(
    contract: Contract, version: str, source_path: str | None = None
) -> tuple[Entity, FileSource, FeatureView]:
    """The Feast objects of a contract whose source is dataset version ``version`` (its offline
    Parquet, or ``source_path``: a local file holding some of its rows)."""
    from feast import Entity, FeatureView, Field, FileSource, ValueType
    from feast import types as feast_types
    from feast.data_format import ParquetFormat

    entity = Entity(
        name=contract.entity_key,
        join_keys=[contract.entity_key],
        value_type=ValueType.INT64,
        description=f"entity of dataset {contract.name}",
    )
    source = FileSource(
        name=f"{contract.name}_offline",
        path=source_path or offline_uri(contract, version),
        file_format=ParquetFormat(),
        timestamp_field=EVENT_TIMESTAMP,
        s3_endpoint_override=s3_endpoint(),
        description=f"validated rows of dataset {contract.name} (one version)",
    )
    view = FeatureView(
        name=contract.feature_view,
        entities=[entity],
        ttl=timedelta(0),  # 0 = no age limit: readings stay valid until replaced
        schema=[
            Field(name=name, dtype=getattr(feast_types, _feature_type(contract, name)))
            for name in view_features(contract)
        ],
        source=source,
        online=True,
        description=contract.description,
        tags={
            FINGERPRINT_TAG: definition_fingerprint(contract, version),
            VERSION_TAG: version,
            "faaspipe.contract": contract.ref,
        },
    )
    return entity, source, view


# --- stores -----------------------------------------------------------------------------


def _atomic_registry_store_class() -> type:
    from feast.infra.registry.file import FileRegistryStore
    from feast.protos.feast.core.Registry_pb2 import Registry as RegistryProto
    from feast.utils import _utc_now

    class AtomicFileRegistryStore(FileRegistryStore):  # type: ignore[misc]
        """Feast's file registry, written to a temp file and renamed: readers never see half a file."""

        def _write_registry(self, registry_proto: RegistryProto) -> None:
            import uuid

            registry_proto.version_id = str(uuid.uuid4())
            registry_proto.last_updated.FromDatetime(_utc_now())
            self._filepath.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self._filepath.parent, prefix=".registry-")
            try:
                with os.fdopen(fd, "wb") as out:
                    out.write(registry_proto.SerializeToString())
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(tmp, self._filepath)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
                raise

    return AtomicFileRegistryStore


def __getattr__(name: str) -> Any:  # PEP 562: Feast imports the registry store class by name
    if name == "AtomicFileRegistryStore":
        return _atomic_registry_store_class()
    raise AttributeError(name)


def _online_store_config(directory: Path) -> dict[str, Any]:
    redis = os.environ.get(REDIS_ENV)
    if redis:
        return {"type": "redis", "connection_string": redis}
    return {"type": "sqlite", "path": str(directory / "online.db")}


def _registry_config(directory: Path, database_url: str | None) -> dict[str, Any]:
    if database_url:
        return {
            "registry_type": "sql",
            "path": _sqlalchemy_url(database_url),
            "cache_ttl_seconds": REGISTRY_CACHE_TTL_S,
            "sqlalchemy_config_kwargs": {"echo": False, "pool_pre_ping": True},
        }
    return {
        "registry_type": "file",
        "registry_store_type": f"{__name__}.AtomicFileRegistryStore",
        "path": str(directory / "registry.db"),
        "cache_ttl_seconds": REGISTRY_CACHE_TTL_S,
    }


def _sqlalchemy_url(database_url: str) -> str:
    """``postgresql://…`` → ``postgresql+psycopg2://…`` (the driver in the train image)."""
    scheme, rest = database_url.split("://", 1)
    return f"postgresql+psycopg2://{rest}" if scheme in ("postgresql", "postgres") else database_url


def _store(directory: Path, online: dict[str, Any], database_url: str | None = None) -> FeatureStore:
    from feast import FeatureStore, RepoConfig

    directory.mkdir(parents=True, exist_ok=True)
    config = RepoConfig(
        project=PROJECT,
        provider="local",
        registry=_registry_config(directory, database_url),
        online_store=online,
        offline_store={"type": "file"},
        entity_key_serialization_version=3,
        repo_path=directory,
    )
    # Feast's SQL registry creates its tables when first opened: one replica at a time.
    with _postgres_lock(database_url) if database_url else contextlib.nullcontext():
        store = FeatureStore(config=config)
        # Feast gates online reads on the view's state, and ``materialize`` flips it to
        # MATERIALIZING in the shared registry: without this, feature servers (whose registry
        # cache may hold that state for cache_ttl_seconds) would fail every read during and just
        # after a materialisation. Feast reads the flag from the config only for SQL/remote
        # registries; set here for both.
        store.registry.serve_features_while_materializing = True
    return store


_SHARED_STORES: dict[tuple[str, str, str], FeatureStore] = {}


@functools.cache
def _pinned_store(dataset: str, version: str, fingerprint: str) -> FeatureStore:
    from shared.contracts import get_contract

    pinned = feast_dir() / "pinned"
    pinned.mkdir(parents=True, exist_ok=True)
    directory = Path(tempfile.mkdtemp(prefix=f"{dataset}-{version}-", dir=pinned))
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    store = _store(directory, {"type": "sqlite", "path": str(directory / "online.db")})
    store.apply(list(definitions(get_contract(dataset), version)))
    return store


def feature_store(contract: Contract, dataset_version: str | None = None) -> FeatureStore:
    """The shared store (no version), or a store pinned to ``dataset_version``'s definitions.

    The shared store (state-dir registry, the online store) serves online reads and is what
    ``apply`` and ``materialise`` change. A pinned store has a private in-process registry with
    that version's definitions (applied once per process) and is meant for offline reads.
    """
    if dataset_version is None:
        database_url = os.environ.get(DATABASE_URL_ENV) or None
        where = (os.environ.get("FAASPIPE_STATE_DIR", ""), os.environ.get(REDIS_ENV, ""), database_url or "")
        store = _SHARED_STORES.get(where)
        if store is None:
            online = _online_store_config(feast_dir())
            store = _SHARED_STORES[where] = _store(feast_dir(), online, database_url)
        return store
    if not dataset_version.isalnum():
        raise ValueError(f"bad dataset version {dataset_version!r}: expected hex digits")
    return _pinned_store(contract.name, dataset_version, definition_fingerprint(contract, dataset_version))


APPLY_LOCK_KEY = 0x66656173  # the PostgreSQL advisory lock of the registry's writers ("feas")


@contextlib.contextmanager
def _postgres_lock(database_url: str) -> Iterator[None]:
    """A session-level advisory lock in the registry's database; it goes with the session
    if this process dies, so a crashed replica never leaves it held."""
    import psycopg2

    conn = psycopg2.connect(database_url, connect_timeout=10)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_lock(%s)", (APPLY_LOCK_KEY,))
        yield
    finally:
        conn.close()


@contextlib.contextmanager
def _apply_lock() -> Iterator[None]:
    """One ``apply`` at a time among every replica: an advisory lock in the registry's
    PostgreSQL, or a file lock beside the file registry (localdev's replicas share a disk)."""
    database_url = os.environ.get(DATABASE_URL_ENV)
    if database_url:
        with _postgres_lock(database_url):
            yield
        return
    feast_dir().mkdir(parents=True, exist_ok=True)
    with open(feast_dir() / "apply.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def applied_fingerprint(contract: Contract) -> str | None:
    """The definition fingerprint in the shared registry (None if never applied)."""
    from feast.errors import FeatureViewNotFoundException

    store = feature_store(contract)
    try:
        view = store.get_feature_view(contract.feature_view, allow_registry_cache=False)
    except (FeatureViewNotFoundException, FileNotFoundError):
        return None
    return view.tags.get(FINGERPRINT_TAG)


def apply(contract: Contract, version: str) -> bool:
    """Point the shared registry at ``version``; a no-op when the definitions are unchanged.

    Returns True when definitions were applied.
    """
    wanted = definition_fingerprint(contract, version)
    feature_store(contract)  # opening it takes the same advisory lock: never inside it
    with _apply_lock():
        if applied_fingerprint(contract) == wanted:
            log.info("feast definitions of %s@%s unchanged (%s); not applied", contract.name, version, wanted)
            return False
        feature_store(contract).apply(list(definitions(contract, version)))
    log.info("applied feast definitions of %s@%s (%s)", contract.name, version, wanted)
    return True


# --- data -------------------------------------------------------------------------------


def read_offline(contract: Contract, version: str, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """A dataset version's offline rows (all columns, or ``columns``)."""
    import pandas as pd

    data = settings.read_object(layout.FEATURES, layout.offline_data(contract.name, version))
    return pd.read_parquet(io.BytesIO(data), columns=list(columns) if columns else None)


def materialise(contract: Contract, version: str, start: datetime, end: datetime) -> int:
    """Load the view's latest values per entity with ``start <= event time <= end`` into the online store.

    The shared registry must point at ``version`` (``apply`` first). Returns the rows
    (entities) materialised.
    """
    if applied_fingerprint(contract) != definition_fingerprint(contract, version):
        raise RuntimeError(f"the feature view does not point at {contract.name}@{version}: apply it first")
    feature_store(contract).materialize(start_date=start, end_date=end, feature_views=[contract.feature_view])
    frame = read_offline(contract, version, [contract.entity_key, EVENT_TIMESTAMP])
    in_window = frame[(frame[EVENT_TIMESTAMP] >= start) & (frame[EVENT_TIMESTAMP] <= end)]
    return int(in_window[contract.entity_key].nunique())


def training_frame(contract: Contract, version: str) -> pd.DataFrame:
    """The point-in-time join of version ``version`` (see :func:`training_set`), without its lineage."""
    return training_set(contract, version)[0]


def training_set(
    contract: Contract, version: str, parquet: pq.ParquetFile | None = None
) -> tuple[pd.DataFrame, training_sample.Sample]:
    """Point-in-time join of version ``version``: entity key, event time, label, model features;
    and the sample of the version's rows it was built from.

    The entity dataframe (entity key, ``event_timestamp``, label) is read from the version's
    offline Parquet (``parquet`` when it is local already, else streamed from the object store to
    a temporary file), row group by row group, and sampled first when the version has more rows
    than the contract's ``training.max_rows`` (``shared.training_sample``); Feast joins the model
    features as of each row's event time.

    Feast's file offline store reads its whole source into memory (every row, the view's
    columns) whatever the entity frame holds. So a sampled set is joined against a source of the
    sampled entities' rows only (every row of each, so each row's point-in-time match is the
    one the whole version gives), written row group by row group to a temporary local file,
    through a store pinned to it for this join alone (its registry in the same temporary folder).
    """
    if parquet is None:
        with training_sample.offline_file(contract, version) as local:
            return _training_set(contract, version, local)
    return _training_set(contract, version, parquet)


def _training_set(
    contract: Contract, version: str, parquet: pq.ParquetFile
) -> tuple[pd.DataFrame, training_sample.Sample]:
    entities, sample = training_sample.entity_frame(contract, parquet, version)
    features = [f"{contract.feature_view}:{name}" for name in contract.model_features]
    if not sample.sampled:
        joined = (
            feature_store(contract, version)
            .get_historical_features(entity_df=entities, features=features)
            .to_df()
        )
    else:
        log.info(
            "%s@%s: training set sampled to %d of %d rows (%s; classes %s)",
            contract.name,
            version,
            sample.rows_out,
            sample.rows_in,
            sample.rule.describe(),
            sample.classes,
        )
        with tempfile.TemporaryDirectory(prefix="training-join-") as tmp:
            source = Path(tmp) / "source.parquet"
            kept = training_sample.write_entity_rows(
                parquet, contract.entity_key, entities[contract.entity_key].to_numpy(), source
            )
            log.info("%s@%s: joining against the sampled entities' %d rows", contract.name, version, kept)
            store = _store(Path(tmp), {"type": "sqlite", "path": str(Path(tmp) / "online.db")})
            store.apply(list(definitions(contract, version, str(source))))
            joined = store.get_historical_features(entity_df=entities, features=features).to_df()
    del entities
    columns = [contract.entity_key, EVENT_TIMESTAMP, contract.label, *contract.model_features]
    frame = joined[columns].sort_values([EVENT_TIMESTAMP, contract.entity_key]).reset_index(drop=True)
    return frame, sample


def online_features(contract: Contract, entity_ids: Sequence[int]) -> list[dict[str, Any] | None]:
    """The online values of each entity (its key plus the view's features); None if unknown.

    A contract with a ``streaming:`` section also reads its stream view (``shared/feast_stream.py``):
    an entity's latest streamed reading and rolling aggregates win over its batch values."""
    if not entity_ids:
        return []
    if contract.streaming is None:
        return _batch_rows(contract, entity_ids)
    from feast.errors import FeatureViewNotFoundException

    from shared import feast_stream

    stream = feast_stream.online_rows(contract, entity_ids)
    try:
        base = _batch_rows(contract, entity_ids)
    except FeatureViewNotFoundException:
        if stream is None:
            raise
        base = [None] * len(entity_ids)
    if stream is None:
        return base
    return [
        feast_stream.merge(b, s, contract.entity_key, e)
        for b, s, e in zip(base, stream, entity_ids, strict=True)
    ]


def _batch_rows(contract: Contract, entity_ids: Sequence[int]) -> list[dict[str, Any] | None]:
    names = view_features(contract)
    response = (
        feature_store(contract)
        .get_online_features(
            features=[f"{contract.feature_view}:{name}" for name in names],
            entity_rows=[{contract.entity_key: int(i)} for i in entity_ids],
        )
        .to_dict()
    )
    rows: list[dict[str, Any] | None] = []
    for i, entity in enumerate(entity_ids):
        values = {name: response[name][i] for name in names}
        known = any(v is not None for v in values.values())
        rows.append({contract.entity_key: int(entity), **values} if known else None)
    return rows
