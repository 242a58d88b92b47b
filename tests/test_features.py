"""Features: Feast definitions (unit), the feature server's request checks (unit), and the
chain ingest → materialise → online store → feature server on the real stack (integration).
"""

from __future__ import annotations

import json
import math
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
import urllib3

from events import DatasetIngested
from functions.feature_server import app as feature_server
from localdev.datagen import generate, write_csv
from shared import feast_repo, layout
from shared.contracts import get_contract
from tests.conftest import REPO, Stack, wait_until

CONTRACT = get_contract("ai4i")
HTTP = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(connect=2, read=30))
TRAIN_PYTHON = REPO / ".venvs" / "train" / "bin" / "python"
integration = pytest.mark.integration


# --- definitions and request checks (unit) ----------------------------------------------


def test_the_view_holds_the_model_features_but_not_the_label_or_the_entity() -> None:
    features = feast_repo.view_features(CONTRACT)
    assert set(CONTRACT.model_features) <= set(features)
    assert "product_id" in features
    assert not {"udi", "machine_failure", "twf", "hdf", "pwf", "osf", "rnf"} & set(features)


def test_the_definition_fingerprint_follows_the_version_and_the_endpoint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FAASPIPE_S3_ENDPOINT", "http://127.0.0.1:9000")
    one = feast_repo.definition_fingerprint(CONTRACT, "0123456789abcdef")
    assert one == feast_repo.definition_fingerprint(CONTRACT, "0123456789abcdef")
    assert one != feast_repo.definition_fingerprint(CONTRACT, "fedcba9876543210")
    monkeypatch.setenv("FAASPIPE_S3_ENDPOINT", "http://127.0.0.1:9001")
    assert one != feast_repo.definition_fingerprint(CONTRACT, "0123456789abcdef")
    assert feast_repo.offline_uri(CONTRACT, "abc") == "s3://features/offline/ai4i/version=abc/data.parquet"


def test_the_online_store_is_redis_only_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(feast_repo.REDIS_ENV, raising=False)
    assert feast_repo.online_store_kind() == "sqlite"
    monkeypatch.setenv(feast_repo.REDIS_ENV, "127.0.0.1:6379")
    assert feast_repo.online_store_kind() == "redis"


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b"not json", 400, "must be JSON"),
        (b"[1, 2]", 400, "JSON object"),
        (b'{"dataset": "ai4i"}', 400, "'entities' must be a list"),
        (b'{"dataset": "ai4i", "entities": [1, "2"]}', 400, "'entities[1]' must be an integer"),
        (b'{"dataset": "ai4i", "entities": [true]}', 400, "'entities[0]' must be an integer"),
        (b'{"dataset": "", "entities": [1]}', 400, "'dataset' must be a non-empty string"),
        (b'{"dataset": "ai4i", "entities": [1], "x": 1}', 400, "unknown field(s) ['x']"),
        (b'{"dataset": "nope", "entities": [1]}', 404, "unknown dataset 'nope'"),
    ],
)
def test_the_feature_server_names_what_is_wrong_with_a_request(
    body: bytes, status: int, message: str
) -> None:
    client = feature_server.create_app().test_client()
    feature_server._ready.set()
    try:
        resp = client.post("/online", data=body, headers={"Content-Type": "application/json"})
    finally:
        feature_server._ready.clear()
    assert resp.status_code == status and message in resp.get_json()["error"], resp.get_json()


def test_the_feature_server_is_unavailable_until_initialised() -> None:
    resp = (
        feature_server.create_app().test_client().post("/online", json={"dataset": "ai4i", "entities": [1]})
    )
    assert resp.status_code == 503


# --- the chain on the real stack (integration) ------------------------------------------

FIRST_UDI = 800_001
ROWS = 600
UNKNOWN_UDI = 999_999_999


def chain_records(stack: Stack, trigger: str) -> list[dict[str, Any]]:
    resp = HTTP.request("GET", stack.config.function_url("chain-recorder") + "records")
    assert resp.status == 200, resp.data
    return [r for r in json.loads(resp.data) if r["trigger"] == trigger]


def materialise_log(stack: Stack) -> str:
    return "".join(
        p.read_text(errors="replace") for p in sorted((stack.state_dir / "logs").glob("fn-materialise-*.log"))
    )


@pytest.fixture(scope="module")
def materialised(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A generated file dropped into landing, followed until its features are materialised."""
    rows = generate(ROWS, seed=31, start_udi=FIRST_UDI)
    path = write_csv(tmp_path_factory.mktemp("features") / "readings.csv", rows)
    key = f"ai4i/tests/{uuid.uuid4().hex[:8]}/readings.csv"
    stack.s3().fput_object(layout.LANDING, key, str(path), content_type="text/csv")
    ingested = wait_until(
        lambda: [
            r for r in chain_records(stack, "chain-dataset-ingested") if r["data"]["source_uri"].endswith(key)
        ],
        timeout=90,
        what=f"dataset.ingested for {key}",
    )[0]
    version = ingested["data"]["version"]
    reply = wait_until(
        lambda: [
            r for r in chain_records(stack, "chain-features-materialised") if r["data"]["version"] == version
        ],
        timeout=180,
        what=f"features.materialised for version {version}",
    )[0]
    return {"rows": rows, "ingested": ingested, "reply": reply, "version": version}


def online(stack: Stack, body: dict[str, Any]) -> urllib3.BaseHTTPResponse:
    return HTTP.request(
        "POST",
        stack.config.function_url("feature-server") + "online",
        body=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )


@integration
def test_an_ingested_version_is_materialised(stack: Stack, materialised: dict[str, Any]) -> None:
    data, ingested = materialised["reply"]["data"], materialised["ingested"]["data"]
    assert data == {
        "feature_view": CONTRACT.feature_view,
        "dataset": "ai4i",
        "version": materialised["version"],
        "start": ingested["event_time_min"],
        "end": ingested["event_time_max"],
        "rows": ROWS,
        "online_store": "sqlite",
    }
    response = stack.s3().get_object(layout.FEATURES, layout.dataset_latest("ai4i"))
    try:
        assert json.loads(response.read()) == data
    finally:
        response.close()
        response.release_conn()


@integration
def test_the_feature_server_returns_derived_features_and_null_for_unknown(
    stack: Stack, materialised: dict[str, Any]
) -> None:
    source = materialised["rows"][7]
    resp = online(stack, {"dataset": "ai4i", "entities": [source["UDI"], UNKNOWN_UDI]})
    assert resp.status == 200, resp.data
    known, unknown = json.loads(resp.data)["rows"]
    assert unknown is None
    torque, speed = source["Torque [Nm]"], source["Rotational speed [rpm]"]
    assert known["udi"] == source["UDI"] and known["type"] == source["Type"]
    assert known["product_id"] == source["Product ID"]
    assert known["power_w"] == pytest.approx(torque * speed * 2 * math.pi / 60)
    assert known["temperature_diff_k"] == pytest.approx(
        source["Process temperature [K]"] - source["Air temperature [K]"]
    )
    assert known["strain_nm_min"] == pytest.approx(source["Tool wear [min]"] * torque)
    assert "machine_failure" not in known


@integration
def test_redelivering_dataset_ingested_does_not_apply_again(
    stack: Stack, materialised: dict[str, Any]
) -> None:
    version, ingested = materialised["version"], materialised["ingested"]
    data = DatasetIngested.from_data(ingested["data"])

    def answered() -> set[str]:
        return {
            r["id"]
            for r in chain_records(stack, "chain-features-materialised")
            if r["data"]["version"] == version
        }

    def redeliver(*events: Any) -> None:
        seen = answered()
        for event in events:
            assert stack.post_event(event).status == 202
        wait_until(lambda: len(answered()) > len(seen), timeout=120, what="the redelivery materialised")

    # Make this version the applied one (another test's dataset may have been applied since).
    first = data.to_event(source=ingested["source"], subject=ingested.get("subject"))
    redeliver(first)
    applied_line = f"applied feast definitions of ai4i@{version} "
    applied = materialise_log(stack).count(applied_line)
    assert applied >= 1
    # The same event again (deduplicated) and a copy under a new id (handled: a no-op apply).
    redeliver(first, data.to_event(source=ingested["source"], subject=ingested.get("subject")))
    log = materialise_log(stack)
    assert log.count(applied_line) == applied
    assert f"feast definitions of ai4i@{version} unchanged" in log


@integration
def test_the_training_frame_is_a_point_in_time_join_of_the_version(
    stack: Stack, materialised: dict[str, Any], tmp_path: Path
) -> None:
    script = (
        "import json, sys\n"
        "from shared import feast_repo\n"
        "from shared.contracts import get_contract\n"
        "frame = feast_repo.training_frame(get_contract('ai4i'), sys.argv[1])\n"
        "print(frame.to_json(orient='records', date_format='iso'))\n"
    )
    env = {**stack.env, **stack.config.function_env()}
    result = subprocess.run(
        [str(TRAIN_PYTHON), "-c", script, materialised["version"]],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    frame = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(frame) == ROWS
    expected = [CONTRACT.entity_key, "event_timestamp", CONTRACT.label, *CONTRACT.model_features]
    assert list(frame[0]) == expected
    by_udi = {r["udi"]: r for r in frame}
    for source in materialised["rows"][:50]:
        row = by_udi[source["UDI"]]
        assert row["machine_failure"] == source["Machine failure"]
        assert row["torque_nm"] == source["Torque [Nm]"] and row["type"] == source["Type"]
    assert all(r[name] is not None for r in frame for name in CONTRACT.model_features)
