"""Every documented setting works for every function, or `faaspipe up` says which does not.

No stack here: these tests are fast. The whole chain on PostgreSQL + Redis is
tests/test_services_profile.py.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

from localdev import preflight
from localdev.config import PLATFORM_SET, PORT_OFFSETS, SETTINGS
from shared.topology import load_topology
from tests import services
from tests.conftest import REPO, TEST_PORT_BASE, _stack_processes

FUNCTION_DIRS = (REPO / "functions", REPO / "tests" / "functions")
UNREACHABLE_REDIS = "redis://127.0.0.1:1/0"


def _cli(args: list[str], env: dict[str, str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "localdev.cli", *args],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), **env},
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
        **kwargs,  # type: ignore[arg-type]
    )


# --- `faaspipe up` checks the settings first --------------------------------------------------


def test_up_with_an_unreachable_idempotency_redis_names_it_and_starts_nothing(tmp_path: Path) -> None:
    state = tmp_path / "state"
    env = {
        "FAASPIPE_STATE_DIR": str(state),
        "FAASPIPE_PORT_BASE": str(TEST_PORT_BASE + 1500),
        "FAASPIPE_IDEMPOTENCY_URL": UNREACHABLE_REDIS,
    }
    result = _cli(["up"], env)
    assert result.returncode != 0, result.stdout
    assert "FAASPIPE_IDEMPOTENCY_URL" in result.stderr, result.stderr
    assert "127.0.0.1:1" in result.stderr
    assert "Traceback" not in result.stderr
    # nothing started (no process knows the state dir), nothing recorded
    assert not _stack_processes(state)
    assert not (state / "stack.json").exists()
    assert not (state / "supervisor.pid").exists()
    assert not (state / "pids").exists() or not list((state / "pids").glob("*.pid"))


@pytest.mark.parametrize(
    ("env", "setting"),
    [
        ({"FAASPIPE_IDEMPOTENCY_URL": "http://127.0.0.1:6379/0"}, "FAASPIPE_IDEMPOTENCY_URL"),
        ({"FAASPIPE_IDEMPOTENCY_URL": "redis://127.0.0.1:6379/0?ttl_days=soon"}, "FAASPIPE_IDEMPOTENCY_URL"),
        ({"FAASPIPE_IDEMPOTENCY_URL": "sqlite://relative.db"}, "FAASPIPE_IDEMPOTENCY_URL"),
        ({"FAASPIPE_FEAST_REDIS": "127.0.0.1"}, "FAASPIPE_FEAST_REDIS"),
        ({"FAASPIPE_FEAST_REDIS": "127.0.0.1:1,db=2"}, "FAASPIPE_FEAST_REDIS"),
        ({"FAASPIPE_MLFLOW_BACKEND_URI": "not a url"}, "FAASPIPE_MLFLOW_BACKEND_URI"),
        (
            {"FAASPIPE_MLFLOW_BACKEND_URI": "postgresql+psycopg2://u@127.0.0.1:1/x"},
            "FAASPIPE_MLFLOW_BACKEND_URI",
        ),
        ({"FAASPIPE_MLFLOW_BACKEND_URI": "nosuchdb://h/x"}, "FAASPIPE_MLFLOW_BACKEND_URI"),
        ({"FAASPIPE_PORT_BASE": "seventeen"}, "FAASPIPE_PORT_BASE"),
        ({"FAASPIPE_PORT_BASE": "65500"}, "FAASPIPE_PORT_BASE"),
        ({"FAASPIPE_PORT_MLFLOW": "0"}, "FAASPIPE_PORT_MLFLOW"),
        ({"FAASPIPE_KAFKA_STORAGE": "disk"}, "FAASPIPE_KAFKA_STORAGE"),
        ({"FAASPIPE_BROKER_PARTITIONS": "0"}, "FAASPIPE_BROKER_PARTITIONS"),
        ({"FAASPIPE_LOG_LEVEL": "LOUD"}, "FAASPIPE_LOG_LEVEL"),
        ({"FAASPIPE_FUNCTION_DIRS": "/nonexistent/functions"}, "FAASPIPE_FUNCTION_DIRS"),
        ({"FAASPIPE_VENVS_DIR": "/nonexistent/venvs"}, "FAASPIPE_VENVS_DIR"),
        ({"FAASPIPE_DRIFT_P_VAL": "five percent"}, "FAASPIPE_DRIFT_P_VAL"),
        ({"FAASPIPE_PREDICT_CACHE": "memcached://h:1"}, "FAASPIPE_PREDICT_CACHE"),
        ({"FAASPIPE_PREDICT_CACHE_SIZE": "0"}, "FAASPIPE_PREDICT_CACHE_SIZE"),
        ({"FAASPIPE_CONTRACT_DIRS": "/nonexistent/contracts"}, "FAASPIPE_CONTRACT_DIRS"),
        ({"FAASPIPE_CONTRACT_DIRS": str(REPO / "shared" / "contracts")}, "FAASPIPE_CONTRACT_DIRS"),  # twice
    ],
)
def test_preflight_names_the_setting_that_cannot_work(env: dict[str, str], setting: str) -> None:
    problems = preflight.check(env)
    assert problems, f"{env} passed the checks"
    assert {p.setting for p in problems} == {setting}, [str(p) for p in problems]
    assert all(str(p).startswith(setting) for p in problems)


def test_preflight_checks_the_settings_in_function_yaml(tmp_path: Path) -> None:
    fn = tmp_path / "fns" / "sample"
    fn.mkdir(parents=True)
    doc = (REPO / "functions" / "sample" / "function.yaml").read_text()
    (fn / "function.yaml").write_text(doc.rstrip() + '\nenv:\n  FAASPIPE_RETRAIN_COOLDOWN_SECONDS: "ten"\n')
    problems = preflight.check({"FAASPIPE_FUNCTION_DIRS": str(tmp_path / "fns")}, services=False)
    assert [(p.setting, p.where) for p in problems] == [
        ("FAASPIPE_RETRAIN_COOLDOWN_SECONDS", "sample's function.yaml env")
    ]


def test_preflight_accepts_the_defaults_and_every_documented_service_setting() -> None:
    assert preflight.check({}) == []
    user = services.require_services()
    env = {
        "FAASPIPE_MLFLOW_BACKEND_URI": services.database_uri(user, services.POSTGRES_DB),
        "FAASPIPE_IDEMPOTENCY_URL": "redis://127.0.0.1:6379/0?prefix=faaspipe:preflight:",
        "FAASPIPE_FEAST_REDIS": "127.0.0.1:6379,db=0",
        "FAASPIPE_KAFKA_STORAGE": "memory",
        "FAASPIPE_PORT_BASE": str(TEST_PORT_BASE),
    }
    assert preflight.check(env) == []


# --- each function imports in its own environment, with each setting --------------------------

# Run by each environment's interpreter: import every function module of that environment and
# open what each setting makes it open, as a replica does at start. Prints one JSON document.
_IMPORT_CHECK = r"""
import importlib, json, os, sys, traceback, uuid

spec = json.loads(sys.argv[1])
failures = {}

def attempt(label, action):
    try:
        action()
    except BaseException:
        failures[label] = traceback.format_exc(limit=6)

def import_function(fn):
    module = importlib.import_module(fn["module"])
    entry = {"event": "handle", "grpc": "register"}.get(fn["kind"], "create_app")
    assert callable(getattr(module, entry, None)), f"{fn['module']} has no {entry}()"

def idempotency_store():
    from shared.idempotency import NamespacedStore, open_store
    url = os.environ["FAASPIPE_IDEMPOTENCY_URL"]
    for fn in spec["functions"] or [{"name": "platform"}]:
        store = NamespacedStore(open_store(url), fn["name"])
        if spec["redis"]:
            key = uuid.uuid4().hex
            assert store.claim(key, 5.0).state == "new"
            store.complete(key, b"reply")
            assert store.claim(key, 5.0).reply == b"reply"
        store.store.close()

def feast_online_store():
    from feast.infra.online_stores.redis import RedisOnlineStore
    from shared import feast_repo
    from shared.contracts import get_contract
    assert feast_repo.online_store_kind() == "redis"
    store = feast_repo.feature_store(get_contract("ai4i"))
    client = RedisOnlineStore()._get_client(store.config.online_store)
    if spec["redis"]:
        assert client.ping()

def mlflow_backend():
    from sqlalchemy import create_engine, text
    engine = create_engine(os.environ["FAASPIPE_MLFLOW_BACKEND_URI"])  # loads the driver
    if spec["postgres"]:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    engine.dispose()

attempt("shared.runtime", lambda: importlib.import_module("shared.runtime"))
for fn in spec["functions"]:
    attempt(f"import {fn['module']} ({fn['name']})", lambda fn=fn: import_function(fn))
attempt("FAASPIPE_IDEMPOTENCY_URL", idempotency_store)
if "shared.feast_repo" in sys.modules:  # a function of this environment uses Feast
    attempt("FAASPIPE_FEAST_REDIS", feast_online_store)
if spec["platform"]:
    attempt("FAASPIPE_MLFLOW_BACKEND_URI", mlflow_backend)
print(json.dumps({"failures": failures, "feast": "shared.feast_repo" in sys.modules}))
"""


def _functions_by_environment() -> dict[str, list[dict[str, str]]]:
    by_env: dict[str, list[dict[str, str]]] = {}
    for fn in load_topology(FUNCTION_DIRS).functions.values():
        by_env.setdefault(fn.environment, []).append({"name": fn.name, "module": fn.module, "kind": fn.kind})
    return by_env


def test_every_function_imports_in_its_environment_with_every_documented_setting() -> None:
    by_env = _functions_by_environment()
    assert {"serving", "train", "drift"} <= set(by_env), by_env.keys()
    redis_up = services.redis_problem() is None
    user, pg_problem = services.postgres_user()
    prefix = f"faaspipe:test-settings:{uuid.uuid4().hex[:8]}:"
    with tempfile.TemporaryDirectory() as state:
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "FAASPIPE_STATE_DIR": state,
            "FAASPIPE_IDEMPOTENCY_URL": f"redis://127.0.0.1:6379/0?prefix={prefix}&ttl_days=0.01",
            "FAASPIPE_FEAST_REDIS": "127.0.0.1:6379,db=0",
            "FAASPIPE_MLFLOW_BACKEND_URI": services.database_uri(user or "postgres", services.POSTGRES_DB),
        }
        runs = {}
        for environment in [*sorted(by_env), "platform"]:
            python = (
                Path(sys.executable)
                if environment == "platform"
                else REPO / ".venvs" / environment / "bin" / "python"
            )
            assert python.exists(), f"environment {environment} missing: run `make envs`"
            spec = {
                "functions": by_env.get(environment, []),
                "redis": redis_up,
                "postgres": pg_problem is None,
                "platform": environment == "platform",
            }
            runs[environment] = subprocess.Popen(  # all environments at once: one subprocess each
                [str(python), "-c", _IMPORT_CHECK, json.dumps(spec)],
                cwd=REPO,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                stdin=subprocess.DEVNULL,
            )
        failures, feast = {}, {}
        for environment, proc in runs.items():
            out, err = proc.communicate(timeout=300)
            assert proc.returncode == 0, f"{environment}: exit {proc.returncode}\n{err[-3000:]}"
            doc = json.loads(out.strip().splitlines()[-1])
            feast[environment] = doc["feast"]
            failures.update({f"[{environment}] {label}": tb for label, tb in doc["failures"].items()})
    assert not failures, "\n".join(f"{label}:\n{tb}" for label, tb in failures.items())
    assert feast["train"], "no train function uses Feast any more: FAASPIPE_FEAST_REDIS went unchecked"


# --- README documents every setting -----------------------------------------------------------

# every FAASPIPE_* name the code mentions, and any other variable it reads from the environment
_OURS = re.compile(r"""["'](FAASPIPE_[A-Z0-9_]+|BENCH_[A-Z0-9_]+)["']""")
_READ = re.compile(
    r"""(?:environ(?:\.get|\.setdefault)?[(\[]|getenv\(|env\.get\(|env\[)\s*["']([A-Z][A-Z0-9_]+)["']"""
)
_NOT_SETTINGS = {"PATH", "PATH_INFO"}  # the system's PATH; a WSGI environ key
# the env of the rendered Kafka container (localdev/render/services.py): the image's, not ours
_NOT_SETTINGS |= {"CLUSTER_ID", "KAFKA_ADVERTISED_LISTENERS", "KAFKA_PROCESS_ROLES"}


def _settings_section() -> str:
    readme = (REPO / "README.md").read_text()
    match = re.search(r"^## Settings\n(.*?)(?=^## )", readme, re.S | re.M)
    assert match, "README.md has no '## Settings' section"
    return match.group(1)


def _table_rows(section: str) -> dict[str, str]:
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        names = re.findall(r"`([A-Z][A-Z0-9_<>]+)`", cells[0]) if line.startswith("|") else []
        for name in names:
            rows[name] = line
    return rows


def test_readme_lists_every_setting_with_its_default() -> None:
    rows = _table_rows(_settings_section())
    for setting in SETTINGS:
        assert setting.name in rows, f"README Settings table has no row for {setting.name}"
        assert f"`{setting.default}`" in rows[setting.name] or setting.default in rows[setting.name], (
            f"README row of {setting.name} does not give its default {setting.default!r}: {rows[setting.name]}"
        )
    for name in PLATFORM_SET:
        assert name in rows, f"README Settings table has no row for {name} (set by the platform)"
    assert "FAASPIPE_PORT_<NAME>" in rows


def test_every_environment_variable_read_in_the_code_is_documented() -> None:
    read = set()
    for folder in ("localdev", "shared", "functions", "events", "bench", "tests"):
        for path in (REPO / folder).rglob("*.py"):
            if path.name == "test_settings.py":
                continue  # names bad values on purpose
            text = path.read_text()
            read |= set(_OURS.findall(text)) | set(_READ.findall(text))
    for dirs in (FUNCTION_DIRS, (REPO / "bench" / "functions", REPO / "bench" / "scaling_functions")):
        for fn in load_topology(dirs).functions.values():
            read |= set(fn.env)  # function.yaml `env`
    ports = {f"FAASPIPE_PORT_{name.upper()}" for name in PORT_OFFSETS}
    read = {"FAASPIPE_PORT_<NAME>" if name in ports else name for name in read - _NOT_SETTINGS}
    documented = set(_table_rows(_settings_section()))
    assert len(read) > 40, f"found only {sorted(read)}: the scan is broken"
    missing = sorted(read - documented)
    assert not missing, f"read in the code but not in README's Settings section: {missing}"


# --- a closed pipe ends every command quietly -------------------------------------------------


@pytest.mark.parametrize(
    "args", [["--help"], ["logs"], ["logs", "big", "-n", "50000"], ["render", "--help"]], ids=" ".join
)
def test_cli_exits_quietly_when_its_reader_has_gone(tmp_path: Path, args: list[str]) -> None:
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "big.log").write_text("".join(f"line {i}\n" for i in range(50_000)))
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the command writes anything: EPIPE for sure
    try:
        result = subprocess.run(
            [sys.executable, "-m", "localdev.cli", "--state-dir", str(tmp_path), *args],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            stdout=write_end,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            timeout=120,
        )
    finally:
        os.close(write_end)
    assert result.stderr == "", result.stderr  # no traceback, no "Exception ignored"
    # 1: the Python docs' status on EPIPE (argparse's --help ignores EPIPE itself: 0);
    # never 120, the interpreter's status when its own final flush fails
    assert result.returncode in (0, 1)
