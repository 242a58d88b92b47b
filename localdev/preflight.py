"""Checks run by ``faaspipe up`` before it starts anything: every setting, by name.

A setting that cannot work (bad syntax, a service that does not answer, a driver missing from
the environment that needs it) fails here, naming the variable, instead of in a function's log
minutes later. Two kinds of check:

* syntax of every ``FAASPIPE_*`` setting that is set (numbers, choices, paths, URLs), in the
  shell's environment and in each function's ``function.yaml`` ``env``;
* reachability of the services the settings point at: the MLflow backend database
  (``FAASPIPE_MLFLOW_BACKEND_URI``, via SQLAlchemy as MLflow connects), the Redis of the
  idempotency store (``FAASPIPE_IDEMPOTENCY_URL``) and of Feast's online store
  (``FAASPIPE_FEAST_REDIS``), and the functions' state database (``FAASPIPE_DATABASE_URL``),
  each with a short timeout.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlparse, urlunparse

from localdev.config import PORT_OFFSETS, REPLICA_PORT_OFFSETS, SETTINGS, Setting

CONNECT_TIMEOUT_S = 3.0
_BY_NAME = {s.name: s for s in SETTINGS}


@dataclass(frozen=True)
class Problem:
    setting: str
    message: str
    where: str = "environment"

    def __str__(self) -> str:
        origin = "" if self.where == "environment" else f" (in {self.where})"
        return f"{self.setting}{origin}: {self.message}"


def check(env: Mapping[str, str] | None = None, *, services: bool = True) -> list[Problem]:
    """Every problem with the settings in ``env`` (default: ``os.environ``); empty = all good."""
    env = dict(os.environ if env is None else env)
    problems = check_syntax(env)
    if not any(p.setting in ("FAASPIPE_FUNCTION_DIRS", "FAASPIPE_VENVS_DIR") for p in problems):
        problems += check_functions(env)
    if services:
        bad = {p.setting for p in problems}
        problems += [p for p in check_services(env) if p.setting not in bad]
    return problems


# --- syntax ---------------------------------------------------------------------------------


def _number(setting: Setting, raw: str) -> str | None:
    try:
        value = int(raw) if setting.kind in ("int", "port") else float(raw)
    except ValueError:
        return f"expected {'an integer' if setting.kind != 'float' else 'a number'}, got {raw!r}"
    if setting.minimum is not None and value < setting.minimum:
        return f"must be at least {setting.minimum:g}, got {raw!r}"
    if setting.kind == "port":
        span = REPLICA_PORT_OFFSETS.stop - 1  # the stack's ports, then its replicas' range
        if value < 1024 or value + span > 65535:
            return f"ports base..base+{span} must lie in 1024-65535, got {raw!r}"
    return None


def _value_problem(setting: Setting, raw: str) -> str | None:
    if setting.kind in ("int", "float", "port"):
        return _number(setting, raw)
    if setting.name == "FAASPIPE_PREDICT_CACHE" and not (
        raw in ("off", "memory") or raw.startswith(("redis://", "rediss://", "unix://"))
    ):
        return f"expected off, memory or redis://host:port/db, got {raw!r}"
    if setting.kind == "choice" and raw not in setting.choices:
        return f"must be one of {', '.join(setting.choices)}, got {raw!r}"
    if setting.kind == "loglevel" and not isinstance(logging.getLevelName(raw.upper()), int):
        return f"not a logging level: {raw!r} (DEBUG, INFO, WARNING, ERROR)"
    if setting.kind == "path":
        return _writable_dir_problem(Path(raw)) if setting.name == "FAASPIPE_STATE_DIR" else None
    if setting.kind == "paths":
        missing = [p for p in raw.split(os.pathsep) if p and not Path(p).is_dir()]
        if missing:
            return f"not a directory: {', '.join(missing)}"
        return _contracts_problem(raw) if setting.name == "FAASPIPE_CONTRACT_DIRS" else None
    return None


def _contracts_problem(raw: str) -> str | None:
    """Every contract of the extra folders loads, and no name or model is declared twice."""
    from shared.contracts import CONTRACTS_DIR, ContractError, load_contract

    names: dict[str, Path] = {}
    models: dict[str, Path] = {}
    for folder in [CONTRACTS_DIR, *(Path(p) for p in raw.split(os.pathsep) if p)]:
        for path in sorted(folder.glob("*.yaml")):
            try:
                contract = load_contract(path)
            except (ContractError, OSError, ValueError, KeyError, TypeError) as exc:
                return f"{path}: not a valid data contract: {exc}"
            for seen, key in ((names, contract.name), (models, contract.model_name)):
                if key in seen:
                    return f"{path}: {key!r} is already declared by {seen[key]}"
                seen[key] = path
    return None


def _writable_dir_problem(path: Path) -> str | None:
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        return f"cannot create or write {path} ({existing} is not a writable directory)"
    return None


def check_syntax(env: Mapping[str, str]) -> list[Problem]:
    problems = []
    for setting in SETTINGS:
        raw = env.get(setting.name)
        if raw:
            message = _value_problem(setting, raw)
            if message:
                problems.append(Problem(setting.name, message))
    for name in PORT_OFFSETS:
        key = f"FAASPIPE_PORT_{name.upper()}"
        raw = env.get(key)
        if raw is not None and (not raw.isdigit() or not 0 < int(raw) < 65536):
            problems.append(Problem(key, f"expected a port number 1-65535, got {raw!r}"))
    return problems


def check_functions(env: Mapping[str, str]) -> list[Problem]:
    """The topology loads, each function's environment exists, its function.yaml env parses."""
    from shared.topology import DEFAULT_FUNCTION_DIRS, REPO_ROOT, load_topology

    dirs = env.get("FAASPIPE_FUNCTION_DIRS")
    try:
        topology = load_topology(
            tuple(Path(p) for p in dirs.split(os.pathsep) if p) if dirs else DEFAULT_FUNCTION_DIRS
        )
    except Exception as exc:  # noqa: BLE001 - any error in a function.yaml is reported, named
        return [Problem("FAASPIPE_FUNCTION_DIRS", f"the functions do not load: {exc}")]
    venvs = Path(env.get("FAASPIPE_VENVS_DIR") or REPO_ROOT / ".venvs")
    problems = []
    for environment in sorted({fn.environment for fn in topology.functions.values()}):
        if environment in ("default", "platform"):
            continue
        users = sorted(fn.name for fn in topology.functions.values() if fn.environment == environment)
        if not (venvs / environment / "bin" / "python").exists():
            problems.append(
                Problem(
                    "FAASPIPE_VENVS_DIR",
                    f"environment {environment!r} of {', '.join(users)} is missing under {venvs} "
                    "(create it with `make envs`)",
                )
            )
    for fn in topology.functions.values():
        for key, raw in sorted(fn.env.items()):
            setting = _BY_NAME.get(key)
            message = _value_problem(setting, str(raw)) if setting and raw != "" else None
            if message:
                problems.append(Problem(key, message, where=f"{fn.name}'s function.yaml env"))
    return problems


# --- services -------------------------------------------------------------------------------


def check_services(env: Mapping[str, str]) -> list[Problem]:
    checks: list[tuple[str, Callable[[str], str | None]]] = [
        ("FAASPIPE_MLFLOW_BACKEND_URI", check_database_uri),
        ("FAASPIPE_IDEMPOTENCY_URL", check_idempotency_url),
        ("FAASPIPE_FEAST_REDIS", check_feast_redis),
        ("FAASPIPE_DATABASE_URL", check_state_database_url),
    ]
    problems = []
    for name, probe in checks:
        raw = env.get(name)
        if raw:
            message = probe(raw)
            if message:
                problems.append(Problem(name, message))
    return problems


def _redact(url: str) -> str:
    parsed = urlparse(url)
    if parsed.password:
        return urlunparse(parsed._replace(netloc=parsed.netloc.replace(f":{parsed.password}@", ":***@")))
    return url


def check_database_uri(uri: str) -> str | None:
    """MLflow's backend store: a SQLAlchemy URL whose database answers (sqlite: its directory)."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        url = make_url(uri)
    except (ArgumentError, ValueError) as exc:
        return f"not a database URL ({exc}); e.g. postgresql+psycopg2://user@host:5432/db"
    if url.get_backend_name() == "sqlite":
        if not url.database or url.database == ":memory:":
            return "an in-memory SQLite database cannot back the MLflow server; use sqlite:///abs/path.db"
        return _writable_dir_problem(Path(url.database).parent)
    connect_args: dict[str, object] = {}
    if url.get_backend_name() in ("postgresql", "mysql"):
        connect_args["connect_timeout"] = int(CONNECT_TIMEOUT_S)
    try:
        engine = create_engine(url, connect_args=connect_args, poolclass=_null_pool())
    except NoSuchModuleError as exc:
        return f"unsupported database {url.drivername!r}: {exc}"
    except ImportError as exc:
        return f"the driver for {url.drivername!r} is not installed in the platform environment: {exc}"
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001 - the driver's own error says what is wrong
        first = str(getattr(exc, "orig", exc)).strip().splitlines()
        return f"cannot connect to {_redact(uri)}: {first[0] if first else type(exc).__name__}"
    finally:
        engine.dispose()
    return None


def _null_pool() -> type:
    from sqlalchemy.pool import NullPool

    return NullPool


def _no_retry() -> object:
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return Retry(NoBackoff(), 0)  # one attempt: redis-py retries refused connections for seconds


def _ping_redis(describe: str, **kwargs: object) -> str | None:
    import redis

    kwargs.setdefault("socket_connect_timeout", CONNECT_TIMEOUT_S)
    kwargs.setdefault("socket_timeout", CONNECT_TIMEOUT_S)
    kwargs.setdefault("retry", _no_retry())
    try:
        client = redis.Redis(**kwargs)  # type: ignore[arg-type]
    except TypeError as exc:
        return f"unknown Redis parameter: {exc}"
    try:
        client.ping()
    except redis.RedisError as exc:
        return f"Redis at {describe} does not answer: {exc}"
    finally:
        client.close()
    return None


def check_idempotency_url(url: str) -> str | None:
    """sqlite:///abs/path.db (its directory writable) or redis://host:port/db (answers PING)."""
    from shared.idempotency import open_store

    parsed = urlparse(url)
    if parsed.scheme == "sqlite":
        if not parsed.path or parsed.netloc:
            return f"expected sqlite:///abs/path.db, got {url!r}"
        return _writable_dir_problem(Path(parsed.path).parent)
    if parsed.scheme not in ("redis", "rediss", "unix"):
        return f"unsupported URL {_redact(url)!r}: use sqlite:///abs/path.db or redis://host:port/db"
    try:
        store = open_store(url)  # parses the query (prefix, ttl_days) as the functions will
        store.close()  # type: ignore[attr-defined]
    except ValueError as exc:
        return f"invalid URL {_redact(url)!r}: {exc}"
    import redis

    query = {k: v[-1] for k, v in parse_qs(parsed.query).items() if k not in ("prefix", "ttl_days")}
    rest = urlunparse(parsed._replace(query=urlencode(query)))
    try:
        pool = redis.ConnectionPool.from_url(
            rest,
            socket_connect_timeout=CONNECT_TIMEOUT_S,
            socket_timeout=CONNECT_TIMEOUT_S,
            retry=_no_retry(),
        )
    except ValueError as exc:
        return f"invalid URL {_redact(url)!r}: {exc}"
    return _ping_redis(_redact(url), connection_pool=pool)


def check_state_database_url(url: str) -> str | None:
    """The functions' state database (``shared/sqldb.py``): a PostgreSQL URL that answers."""
    import psycopg2

    from shared.sqldb import is_postgres

    if not is_postgres(url):
        return f"expected postgresql://user[:password]@host:port/db, got {_redact(url)!r}"
    try:
        psycopg2.connect(url, connect_timeout=max(1, round(CONNECT_TIMEOUT_S))).close()
    except psycopg2.Error as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"PostgreSQL at {_redact(url)} does not answer: {first}"
    return None


def check_feast_redis(spec: str) -> str | None:
    """Feast's connection string ``host:port[,db=N][,password=…][,ssl=true]`` (answers PING)."""
    import json

    nodes = [part for part in spec.split(",") if "=" not in part]
    if len(nodes) != 1 or nodes[0].count(":") != 1:
        return f"expected host:port[,db=N], got {spec!r}"
    host, port = nodes[0].split(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        return f"expected host:port[,db=N] with a port number, got {spec!r}"
    params: dict[str, object] = {}
    for part in spec.split(","):
        if "=" in part:
            key, value = part.split("=", 1)
            try:
                params[key] = json.loads(value)
            except json.JSONDecodeError:
                params[key] = value
    if "db" in params and not isinstance(params["db"], int):
        return f"db must be a number, got {params['db']!r}"
    return _ping_redis(f"{host}:{port}", host=host, port=int(port), **params)
