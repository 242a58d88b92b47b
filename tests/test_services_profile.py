"""The services profile: the main job with every documented service setting at once, on
functions started from the rendered manifests (the cluster parity test of issue 10).

``faaspipe up`` + ``faaspipe run`` on a stack of its own whose MLflow database is PostgreSQL
(``FAASPIPE_MLFLOW_BACKEND_URI``), whose idempotency store is Redis (``FAASPIPE_IDEMPOTENCY_URL``),
whose Feast online store is Redis (``FAASPIPE_FEAST_REDIS``) and whose functions keep their
state (Feast's registry, the monitor's store) in PostgreSQL (``FAASPIPE_DATABASE_URL``).

Every function replica runs as its Knative Service in ``manifests/`` says
(``FAASPIPE_REPLICAS_FROM=manifests``, ``localdev/from_manifests.py``): its command, arguments
and environment, with the image replaced by its environment and the cluster's service
addresses by this stack's. A setting the stack gives and a manifest lacks stops ``up``.

Authentication is on (``FAASPIPE_AUTH=on``): every function posts its events with its own
identity, under the rendered EventPolicies' rules, and this test calls predict with a token.

A champion is promoted and serves a prediction by entity id, the monitor stores the logged
prediction, and each service holds what it should: nothing fell back to a file in the state
directory, which on the cluster is a pod's scratch space. Skips, saying which, when
PostgreSQL or Redis does not answer.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import urllib3

from shared.contracts import get_contract
from tests import services
from tests.conftest import REPO, TEST_PORT_BASE, Stack, _stack_processes, wait_until

pytestmark = pytest.mark.integration
PORT_BASE = TEST_PORT_BASE + 1000  # the session stack uses +0, durable_stack +500
STACK_ENV = {"FAASPIPE_START_TIMEOUT_S": "600"}
HTTP = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(connect=2, read=60))


@dataclass
class ServicesStack:
    stack: Stack
    settings: dict[str, str]
    redis_db: int
    database: str
    state_database: str
    postgres_user: str
    idempotency_prefix: str


@pytest.fixture(scope="module")
def services_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServicesStack]:
    user = services.require_services()  # skips when PostgreSQL or Redis does not answer
    with contextlib.ExitStack() as cleanup:  # unwinds: stack down, database dropped, Redis db flushed
        db = cleanup.enter_context(services.claimed_redis_db())
        database = cleanup.enter_context(services.fresh_database(user))
        state_database = cleanup.enter_context(services.fresh_database(user))
        _create_mlflow_tables(services.database_uri(user, database))
        prefix = f"faaspipe:services-{uuid.uuid4().hex[:8]}:idem:"
        settings = {
            "FAASPIPE_MLFLOW_BACKEND_URI": services.database_uri(user, database),
            "FAASPIPE_IDEMPOTENCY_URL": f"redis://{services.REDIS_HOST}:{services.REDIS_PORT}/{db}?prefix={prefix}",
            "FAASPIPE_FEAST_REDIS": f"{services.REDIS_HOST}:{services.REDIS_PORT},db={db}",
            "FAASPIPE_DATABASE_URL": services.postgres_url(user, state_database),
            "FAASPIPE_REPLICAS_FROM": "manifests",
            "FAASPIPE_AUTH": "on",
        }
        stack = cleanup.enter_context(
            _running_stack(tmp_path_factory.mktemp("services-state"), {**settings, **STACK_ENV})
        )
        assert all(stack.env[name] == value for name, value in settings.items())
        yield ServicesStack(stack, settings, db, database, state_database, user, prefix)


@contextlib.contextmanager
def _running_stack(state_dir: Path, settings: dict[str, str]) -> Iterator[Stack]:
    """conftest's running_stack with this profile's settings and a start-up budget for a busy box
    (eleven function replicas importing Feast, MLflow and XGBoost at once on 2 cores)."""
    stack = Stack(
        {
            **os.environ,
            **settings,
            "FAASPIPE_STATE_DIR": str(state_dir),
            "FAASPIPE_PORT_BASE": str(PORT_BASE),
            "FAASPIPE_FUNCTION_DIRS": str(REPO / "functions"),
            "FAASPIPE_KAFKA_STORAGE": "memory",
            "PYTHONPATH": str(REPO),
        },
        state_dir,
    )
    result = stack.cli("up", timeout=float(STACK_ENV["FAASPIPE_START_TIMEOUT_S"]) * 2 + 120)
    if result.returncode != 0:
        stack.cli("down")
        pytest.fail(f"faaspipe up failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    try:
        yield stack
    finally:
        stack.cli("down")
        leftovers = _stack_processes(state_dir)
        assert not leftovers, f"processes left after `faaspipe down`: {leftovers}"


def _create_mlflow_tables(uri: str) -> None:
    """MLflow's ~50 schema migrations, run before `up` as README advises for a fresh database:
    on a busy 2-core box they take minutes, longer than a component's start-up timeout."""
    result = subprocess.run(
        [str(Path(sys.executable).parent / "mlflow"), "db", "upgrade", uri],
        capture_output=True,
        text=True,
        timeout=1200,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, (
        f"mlflow db upgrade failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    )


def _query(profile: ServicesStack, database: str, sql: str, params: tuple[object, ...] = ()) -> list[tuple]:
    import psycopg2

    conn = psycopg2.connect(
        host=services.POSTGRES_HOST,
        port=services.POSTGRES_PORT,
        dbname=database,
        user=profile.postgres_user,
        connect_timeout=3,
    )
    try:
        with conn.cursor() as cur:
            cur.execute(sql, params)
            return list(cur.fetchall())
    finally:
        conn.close()


def _champion_in_postgres(profile: ServicesStack, model: str) -> str | None:
    rows = _query(
        profile,
        profile.database,
        "SELECT version FROM registered_model_aliases WHERE name = %s AND alias = 'champion'",
        (model,),
    )
    return str(rows[0][0]) if rows else None


@pytest.mark.timeout(2700)
def test_main_job_with_mlflow_on_postgresql_and_idempotency_and_feast_on_redis(
    services_stack: ServicesStack,
) -> None:
    import redis

    profile, stack = services_stack, services_stack.stack
    model = get_contract("ai4i").model_name
    started = time.monotonic()
    result = stack.cli("run", "--timeout", "2000", timeout=2300)
    logs = "\n".join(f"--- {n}\n{stack.log(n)}" for n in ("supervisor", "mlflow", "fn-promote-0"))
    assert result.returncode == 0, f"{result.stdout[-4000:]}\n{result.stderr[-3000:]}\n{logs}"
    found = re.search(rf"^champion: {re.escape(model)} version (\d+)", result.stdout, re.M)
    assert found, result.stdout[-4000:]
    version = found.group(1)
    print(f"services profile: file drop to champion v{version} in {time.monotonic() - started:.0f}s")

    # MLflow's registry is in this run's PostgreSQL database, the alias on the promoted version
    assert _champion_in_postgres(profile, model) == version
    assert not (stack.state_dir / "mlflow.db").exists()

    # an entity prediction: features from Feast's online store (Redis) through the feature server
    predict = stack.config.function_url("predict")

    token = {"Authorization": f"Bearer {stack.config.auth.mint('user:services-profile')}"}
    assert HTTP.request("GET", f"{predict}v2/models/{model}").status == 401  # auth is on

    def serving_version() -> bool:
        resp = HTTP.request("GET", f"{predict}v2/models/{model}", headers=token)
        return resp.status == 200 and json.loads(resp.data).get("versions", [None])[0] == version

    wait_until(serving_version, timeout=180, interval=1, what=f"predict serving version {version}")
    request_id = f"services-{uuid.uuid4().hex[:12]}"
    resp = HTTP.request(
        "POST",
        f"{predict}predict",
        body=json.dumps({"entities": [42]}).encode(),
        headers={"Content-Type": "application/json", "X-Request-Id": request_id, **token},
    )
    assert resp.status == 200, resp.data
    answer = json.loads(resp.data)
    assert answer["model_version"] == version
    assert len(answer["predictions"]) == 1
    assert 0.0 <= answer["predictions"][0]["probability"] <= 1.0

    # the idempotency store and Feast's online store are in this run's Redis database, not SQLite
    client = redis.Redis(services.REDIS_HOST, services.REDIS_PORT, db=profile.redis_db)
    try:
        keys = list(client.scan_iter(count=1000))
    finally:
        client.close()
    idempotency = [k for k in keys if k.startswith(profile.idempotency_prefix.encode())]
    feast = [k for k in keys if not k.startswith(b"faaspipe:")]
    assert idempotency, (
        f"no idempotency key under {profile.idempotency_prefix} in Redis db {profile.redis_db}"
    )
    assert feast, f"no Feast online-store key in Redis db {profile.redis_db}"
    assert not (stack.state_dir / "idempotency.db").exists()
    assert not (stack.state_dir / "feast" / "online.db").exists()

    # Feast's registry and the monitor's store are in the state database, not in the state dir
    view = get_contract("ai4i").feature_view
    assert _query(
        profile, profile.state_database, "SELECT 1 FROM feature_views WHERE feature_view_name = %s", (view,)
    )
    assert not (stack.state_dir / "feast" / "registry.db").exists()

    def monitored() -> bool:
        import psycopg2.errors

        try:
            return bool(
                _query(
                    profile,
                    profile.state_database,
                    "SELECT 1 FROM monitor_predictions WHERE request_id = %s",
                    (request_id,),
                )
            )
        except psycopg2.errors.UndefinedTable:  # the monitor is at zero until the prediction wakes it
            return False

    wait_until(monitored, timeout=120, interval=1, what=f"the monitor storing prediction {request_id}")
    assert not (stack.state_dir / "monitor").exists()

    # every replica was started from its manifest: the supervisor's log names the file
    supervisor_log = (stack.state_dir / "logs" / "supervisor.log").read_text(errors="replace")  # whole
    for name in ("ingest", "materialise", "tune", "trial", "train", "promote", "predict", "monitor"):
        assert f"manifests/base/functions/{name}.yaml" in supervisor_log, name


@pytest.mark.parametrize("args", [["status"], ["events", "--all"], ["logs", "supervisor", "-n", "500"]])
def test_cli_on_a_running_stack_exits_quietly_when_its_reader_has_gone(
    services_stack: ServicesStack, args: list[str]
) -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)  # `faaspipe status | head` with the reader gone before the first write
    try:
        result = subprocess.run(
            [sys.executable, "-m", "localdev.cli", *args],
            cwd=REPO,
            env=services_stack.stack.env,
            stdout=write_end,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            timeout=120,
        )
    finally:
        os.close(write_end)
    assert result.stderr == "", result.stderr
    assert result.returncode == 1
