"""predict: JSON + Open Inference v2 routes, bad input, lean image, hot swap (real stack).

The champion is a fixture model (``tests/fixtures_model.py``) registered in the stack's
MLflow; set ``FAASPIPE_DEV_STATE_DIR`` to run against an already-running stack instead.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
import urllib3

from functions.predict.inputs import (
    BadInput,
    check_row,
    encode_rows,
    rows_from_instances,
    rows_from_v2_inputs,
)
from shared.contracts import get_contract, load_contract
from tests.conftest import REPO, Stack, wait_until
from tests.fixtures_model import (
    LITE_MODEL_NAME,
    MODEL_NAME,
    TEST_CONTRACTS,
    ai4i_rows,
    promote,
    publish_models,
    serving_stack,
    wait_served,
)
from tests.functions.serve_recorder.client import recorded

CONTRACT = get_contract("ai4i")
HTTP = urllib3.PoolManager(maxsize=8, retries=False, timeout=urllib3.Timeout(connect=2, read=30))
ROW = {
    "type": "M",
    "air_temperature_k": 298.1,
    "process_temperature_k": 308.6,
    "rotational_speed_rpm": 1551.0,
    "torque_nm": 42.8,
    "tool_wear_min": 10.0,
}
FAILING_ROW = {**ROW, "type": "L", "torque_nm": 68.0, "tool_wear_min": 230.0, "rotational_speed_rpm": 1250.0}


@pytest.fixture(scope="module")
def serving(request: pytest.FixtureRequest) -> Stack:
    return serving_stack(request)


@pytest.fixture(scope="module")
def champion(serving: Stack) -> dict[str, Any]:
    """Two fixture versions: ``current`` is the champion, ``next`` waits for the hot-swap test."""
    current, following = publish_models(serving.config.function_env(), [101, 102])
    promote(serving, current["version"], None)
    wait_served(serving, current["version"])
    return {"current": current, "next": following}


def call(stack: Stack, method: str, path: str, body: Any = None, **headers: str) -> tuple[int, Any]:
    raw = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    resp = HTTP.request(
        method,
        stack.config.function_url("predict") + path,
        body=raw,
        headers={"Content-Type": "application/json", **headers},
    )
    try:
        return resp.status, json.loads(resp.data)
    except ValueError:
        return resp.status, resp.data


def v2_tensors(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "name": name,
            "shape": [len(rows)],
            "datatype": "BYTES" if name in CONTRACT.categoricals else "FP32",
            "data": [r[name] for r in rows],
        }
        for name in CONTRACT.raw_inputs
    ]


INFER = f"v2/models/{MODEL_NAME}/infer"


# --------------------------------------------------------------------------- units (no stack)


def test_encoding_matches_the_contract_row_by_row() -> None:
    rows = [check_row(CONTRACT, r, "r") for r in (ROW, FAILING_ROW, {**ROW, "type": "H"})]
    matrix = encode_rows(CONTRACT, rows)
    assert matrix.dtype == np.float32 and matrix.shape == (3, len(CONTRACT.encoded_features))
    for got, row in zip(matrix, rows, strict=True):
        assert got.tolist() == pytest.approx(np.float32(CONTRACT.encode(CONTRACT.derive(row))).tolist())


def test_v2_tensor_forms_agree() -> None:
    per_input = rows_from_v2_inputs(CONTRACT, v2_tensors([ROW, FAILING_ROW]))
    nested = [
        {**t, "shape": [2, 1], "data": [[v] for v in t["data"]]} for t in v2_tensors([ROW, FAILING_ROW])
    ]
    codes = list(CONTRACT.categoricals["type"])
    flat = [[codes.index(r["type"]), *(r[n] for n in CONTRACT.raw_inputs[1:])] for r in (ROW, FAILING_ROW)]
    single = rows_from_v2_inputs(
        CONTRACT, [{"name": "input", "shape": [2, 6], "datatype": "FP32", "data": flat}]
    )
    assert per_input == rows_from_v2_inputs(CONTRACT, nested) == single
    assert per_input[1]["type"] == "L" and per_input[0]["torque_nm"] == 42.8


@pytest.mark.parametrize(
    ("instances", "needle"),
    [
        ([{**ROW, "torque_nm": float("nan")}], "finite"),
        ([{**ROW, "torque_nm": float("inf")}], "finite"),
        ([{**ROW, "air_temperature_k": 100}], "minimum"),
        ([{**ROW, "type": 1}], "not one of"),
        (["not an object"], "expected an object"),
        ([{}], "missing feature"),
    ],
)
def test_instance_checks(instances: list[Any], needle: str) -> None:
    with pytest.raises(BadInput, match=needle) as caught:
        rows_from_instances(CONTRACT, instances)
    assert caught.value.status == 400


def test_too_many_rows_is_413() -> None:
    with pytest.raises(BadInput) as caught:
        rows_from_instances(CONTRACT, [ROW] * 10_001)
    assert caught.value.status == 413


# --------------------------------------------------------------------------- lean image


def test_serving_image_is_lean() -> None:
    """predict's import path pulls in none of mlflow/feast/sklearn/pandas (nor are they installed)."""
    script = (
        "import importlib.util, sys\n"
        "import functions.predict.app as app\n"
        "app.create_app()\n"
        "heavy = ('mlflow', 'feast', 'sklearn', 'pandas', 'pyarrow', 'alibi_detect')\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in heavy)\n"
        "installed = [m for m in heavy if importlib.util.find_spec(m) is not None]\n"
        "print(loaded, installed)\n"
        "assert not loaded and not installed, (loaded, installed)\n"
    )
    result = subprocess.run(
        [str(REPO / ".venvs" / "serving" / "bin" / "python"), "-c", script],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --------------------------------------------------------------------------- routes


@pytest.mark.integration
def test_instances_route_predicts_and_logs(serving: Stack, champion: dict[str, Any]) -> None:
    version = champion["current"]["version"]
    threshold = champion["current"]["meta"]["threshold"]
    request_id = f"t-{uuid.uuid4().hex}"
    status, body = call(serving, "POST", "predict", {"instances": [ROW]}, **{"X-Request-Id": request_id})
    assert status == 200, body
    assert body["model_name"] == MODEL_NAME and body["model_version"] == version
    assert body["request_id"] == request_id
    (prediction,) = body["predictions"]
    assert 0.0 <= prediction["probability"] <= 1.0
    assert prediction["label"] == int(prediction["probability"] >= threshold)

    status, batch = call(serving, "POST", "predict", {"instances": [ROW, FAILING_ROW, ROW]})
    assert status == 200, batch
    probs = [p["probability"] for p in batch["predictions"]]
    assert probs[0] == pytest.approx(prediction["probability"]) == pytest.approx(probs[2])
    assert probs[1] > 0.5 > probs[0], "a high-torque, worn-tool, slow L machine should fail"

    def logged() -> list[dict[str, Any]]:
        rows = recorded(serving, "dev.faaspipe.prediction.logged.v1", subject=f"{MODEL_NAME}/{version}")
        return [r for r in rows if r["data"]["request_id"] == request_id]

    (event,) = wait_until(logged, 30, what="the prediction.logged event of the request")
    data = event["data"]
    assert data["route"] == "json" and data["model_version"] == version
    assert data["inputs"] == {k: (v if k == "type" else float(v)) for k, v in ROW.items()}
    assert data["output"] == prediction
    assert data["latency_ms"] > 0

    def batch_logged() -> set[str] | None:
        rows = recorded(serving, "dev.faaspipe.prediction.logged.v1", subject=f"{MODEL_NAME}/{version}")
        ids = {
            r["data"]["request_id"] for r in rows if r["data"]["request_id"].startswith(batch["request_id"])
        }
        return ids if len(ids) == 3 else None

    batch_ids = wait_until(batch_logged, 30, what="three logged rows of the batch")
    assert batch_ids == {f"{batch['request_id']}-{i}" for i in range(3)}


@pytest.mark.integration
def test_v2_protocol(serving: Stack, champion: dict[str, Any]) -> None:
    version = champion["current"]["version"]
    assert call(serving, "GET", "v2/health/live") == (200, {"live": True})
    assert call(serving, "GET", "v2/health/ready") == (200, {"ready": True})
    status, ready = call(serving, "GET", f"v2/models/{MODEL_NAME}/ready")
    assert status == 200 and ready["ready"] is True
    status, meta = call(serving, "GET", f"v2/models/{MODEL_NAME}")
    assert status == 200, meta
    assert meta["name"] == MODEL_NAME and meta["versions"] == [version]
    assert [i["name"] for i in meta["inputs"]] == list(CONTRACT.raw_inputs)
    assert {i["name"]: i["datatype"] for i in meta["inputs"]}["type"] == "BYTES"
    assert {o["name"]: o["datatype"] for o in meta["outputs"]} == {"probability": "FP32", "label": "INT64"}

    rows = [ROW, FAILING_ROW]
    status, body = call(serving, "POST", INFER, {"id": "req-1", "inputs": v2_tensors(rows)})
    assert status == 200, body
    assert body["model_name"] == MODEL_NAME and body["model_version"] == version and body["id"] == "req-1"
    outputs = {o["name"]: o for o in body["outputs"]}
    assert outputs["probability"]["datatype"] == "FP32" and outputs["probability"]["shape"] == [2]
    assert outputs["label"]["datatype"] == "INT64" and outputs["label"]["shape"] == [2]

    # the single [N, 6] tensor form (type as its index in [L, M, H]) gives the same answer
    codes = list(CONTRACT.categoricals["type"])
    matrix = [[codes.index(r["type"])] + [r[n] for n in CONTRACT.raw_inputs if n != "type"] for r in rows]
    status, single = call(
        serving,
        "POST",
        f"v2/models/{MODEL_NAME}/versions/{version}/infer",
        {"inputs": [{"name": "input", "shape": [2, 6], "datatype": "FP32", "data": matrix}]},
    )
    assert status == 200, single
    assert single["outputs"][0]["data"] == pytest.approx(outputs["probability"]["data"])
    # ... and so does the simple JSON route
    status, plain = call(serving, "POST", "predict", {"instances": rows})
    assert [p["probability"] for p in plain["predictions"]] == pytest.approx(outputs["probability"]["data"])
    assert [p["label"] for p in plain["predictions"]] == outputs["label"]["data"]


@pytest.mark.integration
def test_tritonclient_with_its_defaults_binary_tensors_both_ways(
    serving: Stack, champion: dict[str, Any]
) -> None:
    """NVIDIA's HTTP client sends binary inputs and asks for binary outputs unless told not to
    (the binary tensor data extension); its answer equals the JSON route's, one binary output
    can be asked for beside a JSON one, and all-JSON requests give the same answer."""
    from urllib.parse import urlsplit

    import numpy as np
    import tritonclient.http as triton

    url = urlsplit(serving.config.function_url("predict"))
    client = triton.InferenceServerClient(url=f"{url.netloc}{url.path.rstrip('/')}", network_timeout=30)
    try:
        assert client.is_server_live()
        assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
        rows = [ROW, FAILING_ROW]
        inputs = []
        for name in CONTRACT.raw_inputs:
            if name in CONTRACT.categoricals:
                tensor = triton.InferInput(name, [len(rows)], "BYTES")
                tensor.set_data_from_numpy(np.array([r[name].encode() for r in rows], dtype=np.object_))
            else:
                tensor = triton.InferInput(name, [len(rows)], "FP64")
                tensor.set_data_from_numpy(np.array([r[name] for r in rows], dtype=np.float64))
            inputs.append(tensor)
        result = client.infer(MODEL_NAME, inputs, request_id="triton-1")
        answer = result.get_response()
        assert answer["id"] == "triton-1"
        assert all("binary_data_size" in o["parameters"] for o in answer["outputs"]), answer
        probability, label = result.as_numpy("probability"), result.as_numpy("label")

        status, plain = call(serving, "POST", "predict", {"instances": rows})
        assert status == 200, plain
        assert probability.tolist() == pytest.approx(
            [p["probability"] for p in plain["predictions"]], abs=1e-6
        )
        assert label.tolist() == [p["label"] for p in plain["predictions"]]

        mixed = client.infer(
            MODEL_NAME,
            inputs,
            outputs=[
                triton.InferRequestedOutput("label", binary_data=True),
                triton.InferRequestedOutput("probability", binary_data=False),
            ],
        )
        shapes = {
            o["name"]: ("data" in o, "binary_data_size" in o.get("parameters", {}))
            for o in mixed.get_response()["outputs"]
        }
        assert shapes == {"label": (False, True), "probability": (True, False)}
        assert mixed.as_numpy("label").tolist() == label.tolist()

        # and all JSON: inputs with binary_data=False, outputs asked as JSON
        for tensor, source in zip(inputs, CONTRACT.raw_inputs, strict=True):
            values = [r[source] for r in rows]
            tensor.set_data_from_numpy(
                np.array([v.encode() for v in values], dtype=np.object_)
                if source in CONTRACT.categoricals
                else np.array(values, dtype=np.float64),
                binary_data=False,
            )
        as_json = client.infer(
            MODEL_NAME,
            inputs,
            outputs=[triton.InferRequestedOutput(n, binary_data=False) for n in ("probability", "label")],
        )
        assert all("data" in o for o in as_json.get_response()["outputs"])
        assert as_json.as_numpy("probability").tolist() == pytest.approx(probability.tolist(), abs=1e-6)
    finally:
        client.close()


@pytest.mark.integration
def test_tritonclient_grpc_through_the_gateways_grpc_front(serving: Stack, champion: dict[str, Any]) -> None:
    """NVIDIA's gRPC client (raw tensors, its default) and a typed-contents request reach
    predict-grpc through the gateway (which starts it from zero); the answers equal the JSON
    route's, errors are the protocol's status codes, and the prediction is logged as grpc."""
    import grpc
    import tritonclient.grpc as triton_grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc
    from tritonclient.utils import InferenceServerException

    target = f"127.0.0.1:{serving.config.ports['grpc']}"
    client = triton_grpc.InferenceServerClient(url=target)
    rows = [ROW, FAILING_ROW]
    try:
        assert client.is_server_live(client_timeout=180)  # held while predict-grpc starts
        assert client.is_model_ready(MODEL_NAME, client_timeout=60)
        metadata = client.get_model_metadata(MODEL_NAME, client_timeout=30)
        assert [t.name for t in metadata.inputs] == list(CONTRACT.raw_inputs)
        assert metadata.versions == [champion["current"]["version"]]
        inputs = []
        for name in CONTRACT.raw_inputs:
            if name in CONTRACT.categoricals:
                tensor = triton_grpc.InferInput(name, [len(rows)], "BYTES")
                tensor.set_data_from_numpy(np.array([r[name].encode() for r in rows], dtype=np.object_))
            else:
                tensor = triton_grpc.InferInput(name, [len(rows)], "FP32")
                tensor.set_data_from_numpy(np.array([r[name] for r in rows], dtype=np.float32))
            inputs.append(tensor)
        request_id = f"grpc-{uuid.uuid4().hex}"
        result = client.infer(MODEL_NAME, inputs, request_id=request_id, client_timeout=30)
        response = result.get_response()
        assert response.id == request_id and response.model_version == champion["current"]["version"]
        probability, label = result.as_numpy("probability"), result.as_numpy("label")

        status, plain = call(serving, "POST", "predict", {"instances": rows})
        assert status == 200, plain
        assert probability.tolist() == pytest.approx(
            [p["probability"] for p in plain["predictions"]], abs=1e-6
        )
        assert label.tolist() == [p["label"] for p in plain["predictions"]]

        only_label = client.infer(
            MODEL_NAME, inputs, outputs=[triton_grpc.InferRequestedOutput("label")], client_timeout=30
        )
        assert [o.name for o in only_label.get_response().outputs] == ["label"]

        with pytest.raises(InferenceServerException) as unknown:
            client.infer("no-such-model", inputs, client_timeout=30)
        assert unknown.value.status() == "StatusCode.NOT_FOUND", unknown.value
        with pytest.raises(InferenceServerException) as missing:
            client.infer(MODEL_NAME, inputs[1:], client_timeout=30)
        assert missing.value.status() == "StatusCode.INVALID_ARGUMENT"
        assert CONTRACT.raw_inputs[0] in missing.value.message()
    finally:
        client.close()

    # typed contents (no raw bytes), answered as typed contents
    typed = service_pb2.ModelInferRequest(model_name=MODEL_NAME, id=f"{request_id}-typed")
    for name in CONTRACT.raw_inputs:
        tensor = typed.inputs.add(name=name, shape=[len(rows)])
        if name in CONTRACT.categoricals:
            tensor.datatype = "BYTES"
            tensor.contents.bytes_contents.extend(r[name].encode() for r in rows)
        else:
            tensor.datatype = "FP64"
            tensor.contents.fp64_contents.extend(float(r[name]) for r in rows)
    with grpc.insecure_channel(target) as channel:
        answer = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(typed, timeout=30)
    assert not answer.raw_output_contents
    outputs = {o.name: o for o in answer.outputs}
    assert list(outputs["probability"].contents.fp32_contents) == pytest.approx(
        probability.tolist(), abs=1e-6
    )
    assert list(outputs["label"].contents.int64_contents) == label.tolist()

    version = champion["current"]["version"]

    def logged() -> list[dict[str, Any]]:
        events = recorded(serving, "dev.faaspipe.prediction.logged.v1", subject=f"{MODEL_NAME}/{version}")
        return [e for e in events if e["data"]["request_id"] == f"{request_id}-0"]

    (event,) = wait_until(logged, 30, what="the prediction.logged event of the gRPC request")
    assert event["data"]["route"] == "grpc"


@pytest.mark.integration
def test_every_contracts_champion_is_served_by_both_routes(serving: Stack, champion: dict[str, Any]) -> None:
    """A second contract (tests/contracts/ai4i_lite.yaml, other features) gets a champion: predict
    serves it with no configuration, loaded on its first request, by model or dataset name, on
    the JSON route and over the Open Inference Protocol, beside the first model."""
    lite_contract = load_contract(TEST_CONTRACTS / "ai4i_lite.yaml")
    (lite,) = publish_models(serving.config.function_env(), [103], contract="ai4i-lite")
    promote(serving, lite["version"], None, model_name=LITE_MODEL_NAME)
    rows = [{name: row[name] for name in lite_contract.raw_inputs} for row in (ROW, FAILING_ROW)]

    status, by_dataset = call(serving, "POST", "predict", {"dataset": "ai4i-lite", "instances": rows})
    assert status == 200, by_dataset
    assert by_dataset["model_name"] == LITE_MODEL_NAME and by_dataset["model_version"] == lite["version"]
    status, by_model = call(serving, "POST", "predict", {"model": LITE_MODEL_NAME, "instances": rows})
    assert status == 200 and by_model["predictions"] == by_dataset["predictions"], by_model
    tensors = [
        {"name": n, "shape": [2], "datatype": "FP32", "data": [r[n] for r in rows]}
        for n in lite_contract.raw_inputs
    ]
    status, v2 = call(serving, "POST", f"v2/models/{LITE_MODEL_NAME}/infer", {"inputs": tensors})
    assert status == 200, v2
    assert v2["model_version"] == lite["version"]
    probabilities = [p["probability"] for p in by_dataset["predictions"]]
    assert v2["outputs"][0]["data"] == pytest.approx(probabilities, abs=1e-6)
    status, meta = call(serving, "GET", f"v2/models/{LITE_MODEL_NAME}")
    assert status == 200 and [i["name"] for i in meta["inputs"]] == list(lite_contract.raw_inputs), meta

    # the first model answers as before, by default and by name; each model its own encoding
    status, plain = call(serving, "POST", "predict", {"instances": [ROW]})
    assert status == 200 and plain["model_name"] == MODEL_NAME, plain
    status, wrong = call(serving, "POST", "predict", {"model": MODEL_NAME, "instances": rows})
    assert status == 400 and "type" in wrong["error"], wrong

    # the repository extension: both READY (on the replica that answered), unload then load
    status, index = call(serving, "POST", "v2/repository/index", {})
    assert status == 200 and {MODEL_NAME, LITE_MODEL_NAME} <= {e["name"] for e in index}, index
    status, listed = call(serving, "GET", "v2/models")
    assert status == 200 and {MODEL_NAME, LITE_MODEL_NAME} <= {e["name"] for e in listed["models"]}
    status, loaded = call(serving, "POST", f"v2/repository/models/{LITE_MODEL_NAME}/load")
    assert status == 200 and loaded["version"] == lite["version"], loaded
    status, _ = call(serving, "POST", "v2/repository/models/ai4i-lite/unload")
    assert status == 200
    status, again = call(serving, "POST", "predict", {"dataset": "ai4i-lite", "instances": rows})
    assert status == 200 and again["predictions"] == by_dataset["predictions"], again
    status, unknown = call(serving, "POST", "v2/repository/models/nope/load")
    assert status == 404 and LITE_MODEL_NAME in unknown["error"], unknown


@pytest.mark.integration
def test_a_pinned_version_is_served_while_it_carries_a_rollout_alias(
    serving: Stack, champion: dict[str, Any]
) -> None:
    """``/v2/models/{name}/versions/{v}`` answers for the champion, and for a version marked
    challenger, not for a version without a rollout alias."""
    from tests.fixtures_model import set_alias

    current, following = champion["current"]["version"], champion["next"]["version"]
    status, meta = call(serving, "GET", f"v2/models/{MODEL_NAME}/versions/{current}")
    assert status == 200 and meta["versions"] == [current], meta
    status, refused = call(serving, "GET", f"v2/models/{MODEL_NAME}/versions/{following}")
    if status == 200:
        pytest.skip(f"version {following} already carries a rollout alias (hot-swap test ran first)")
    assert status == 404 and "aliases" in refused["error"], refused
    set_alias(serving, following, alias="challenger")
    body = {"inputs": v2_tensors([ROW])}
    status, pinned = call(serving, "POST", f"v2/models/{MODEL_NAME}/versions/{following}/infer", body)
    assert status == 200 and pinned["model_version"] == following, pinned
    status, default = call(serving, "POST", INFER, body)
    assert status == 200 and default["model_version"] == current, default


def _without(row: dict[str, Any], name: str) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k != name}


BAD_REQUESTS = [
    ("missing feature", "predict", {"instances": [_without(ROW, "torque_nm")]}, 400, "torque_nm"),
    ("wrong type", "predict", {"instances": [{**ROW, "torque_nm": "high"}]}, 400, "torque_nm"),
    ("bool is not a number", "predict", {"instances": [{**ROW, "tool_wear_min": True}]}, 400, "tool_wear_min"),
    ("NaN", "predict", b'{"instances": [{"type": "M", "air_temperature_k": 298.1, "process_temperature_k": 308.6,'
     b' "rotational_speed_rpm": 1551, "torque_nm": NaN, "tool_wear_min": 10}]}', 400, "finite"),
    ("unknown category", "predict", {"instances": [{**ROW, "type": "X"}]}, 400, "'X'"),
    ("outside the contract", "predict", {"instances": [{**ROW, "torque_nm": 500}]}, 400, "maximum"),
    ("not JSON", "predict", b"{nope", 400, "JSON"),
    ("neither key", "predict", {"rows": []}, 400, "entities"),
    ("empty instances", "predict", {"instances": []}, 400, "empty"),
    ("entity not an id", "predict", {"entities": ["abc"]}, 400, "entities[0]"),
    ("unknown model", "v2/models/other-model/infer", {"inputs": []}, 404, "other-model"),
    ("version not loaded", f"v2/models/{MODEL_NAME}/versions/999999/infer", {"inputs": []}, 404, "999999"),
    ("missing tensor", INFER, {"inputs": v2_tensors([ROW])[1:]}, 400, "type"),
    ("unknown tensor", INFER, {"inputs": [*v2_tensors([ROW]), {"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]}, 400, "'x'"),
    ("wrong shape", INFER, {"inputs": [{"name": "input", "shape": [1, 5], "datatype": "FP32", "data": [1, 2, 3, 4, 5]}]}, 400, "shape"),
    ("data does not fill shape", INFER, {"inputs": [{"name": "input", "shape": [2, 6], "datatype": "FP32", "data": [1, 298, 308, 1500, 40, 10]}]}, 400, "shape"),
    ("categorical as FP32", INFER, {"inputs": [{**t, "datatype": "FP32"} if t["name"] == "type" else t for t in v2_tensors([ROW])]}, 400, "BYTES"),
    ("bad category code", INFER, {"inputs": [{"name": "input", "shape": [1, 6], "datatype": "FP32", "data": [7, 298, 308, 1500, 40, 10]}]}, 400, "category code"),
    ("no inputs", INFER, {"id": "x"}, 400, "inputs"),
]  # fmt: skip


@pytest.mark.integration
@pytest.mark.parametrize(
    ("case", "path", "body", "status", "needle"), BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS]
)
def test_bad_input_is_a_4xx_naming_the_problem(
    serving: Stack, champion: dict[str, Any], case: str, path: str, body: Any, status: int, needle: str
) -> None:
    got, answer = call(serving, "POST", path, body)
    assert got == status, (case, answer)
    assert isinstance(answer, dict) and needle in answer["error"], (case, answer)


@pytest.mark.integration
def test_entity_route(serving: Stack, champion: dict[str, Any]) -> None:
    probe = HTTP.request(
        "POST",
        serving.config.function_url("feature-server") + "online",
        body=json.dumps({"dataset": "ai4i", "entities": [1]}).encode(),
        headers={"Content-Type": "application/json"},
        timeout=urllib3.Timeout(connect=2, read=150),
    )
    if probe.status == 404 and b"no function named" in probe.data:
        pytest.skip("the feature-server function is not deployed in this stack")
    unknown = 987_654_321
    if probe.status == 404:  # deployed, but no dataset materialised yet: predict reports it as 503
        status, body = call(serving, "POST", "predict", {"entities": [1]})
        assert status == 503 and "feature server" in body["error"], body
        pytest.skip(f"the online store has no AI4I features yet ({probe.data[:120]!r}): entity cases skipped")
    assert probe.status == 200, probe.data
    status, body = call(serving, "POST", "predict", {"entities": [1, unknown]})
    assert status == 404 and str(unknown) in body["error"], body
    if json.loads(probe.data)["rows"][0] is None:
        pytest.skip("entity 1 is not in the online store: known-entity case skipped")
    status, body = call(serving, "POST", "predict", {"entities": [1, 2]})
    assert status == 200, body
    assert len(body["predictions"]) == 2 and body["model_version"] == champion["current"]["version"]
    (logged,) = wait_until(
        lambda: [
            r
            for r in recorded(serving, "dev.faaspipe.prediction.logged.v1")
            if r["data"]["request_id"] == f"{body['request_id']}-0"
        ],
        30,
        what="the logged entity prediction",
    )
    assert logged["data"]["entity_id"] == 1


def test_no_champion_is_503_with_a_reason() -> None:
    """Unit level, in the serving venv: a replica without champion answers 503 and says why."""
    script = """
import json
from functions.predict import app as predict, dataplane
from functions.predict.repository import ModelRepository
from shared.contracts import all_contracts, get_contract

class Registry:  # ai4i has no champion yet; the lite model's lookups fail
    tracking_uri = "http://mlflow.invalid"
    def alias_version(self, model_name, alias):
        if model_name == "ai4i-lite-failure":
            raise RuntimeError("boom: the lite model's registry entry is broken")
        return None

contract = get_contract("ai4i")
models = ModelRepository(all_contracts(), Registry(), None)
dataplane._serving = dataplane.Serving(models, contract.model_name, "http://gateway.invalid", None)
client = predict.create_app().test_client()
answers = {
    "ready": client.get("/v2/health/ready"),
    "model_ready": client.get(f"/v2/models/{contract.model_name}/ready"),
    "predict": client.post("/predict", json={"instances": [{"type": "L"}]}),
    "infer": client.post(f"/v2/models/{contract.model_name}/infer", json={"inputs": []}),
    "live": client.get("/v2/health/live"),
    "lite": client.post("/predict", json={"dataset": "ai4i-lite", "instances": [
        {"air_temperature_k": 300, "process_temperature_k": 310, "rotational_speed_rpm": 1500, "torque_nm": 40}]}),
    "unknown": client.post("/predict", json={"model": "nope", "instances": []}),
    "index": client.post("/v2/repository/index", json={}),
}
print(json.dumps({k: [r.status_code, r.get_json()] for k, r in answers.items()}))
"""
    result = subprocess.run(
        [str(REPO / ".venvs" / "serving" / "bin" / "python"), "-c", script],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "FAASPIPE_CONTRACT_DIRS": str(TEST_CONTRACTS)},
    )
    assert result.returncode == 0, result.stderr
    answers = json.loads(result.stdout.strip().splitlines()[-1])
    assert answers["live"][0] == 200
    for name in ("ready", "model_ready", "infer"):
        status, body = answers[name]
        assert status == 503, (name, body)
        assert "no 'champion' alias" in body["error"], (name, body)
    assert answers["predict"][0] == 400, "a malformed body is the caller's problem, champion or not"
    # one model's failing lookup is its own 503, named; the other model's answer is unchanged
    status, body = answers["lite"]
    assert status == 503 and "boom" in body["error"] and LITE_MODEL_NAME in body["error"], body
    status, body = answers["unknown"]
    assert status == 404 and MODEL_NAME in body["error"] and LITE_MODEL_NAME in body["error"], body
    status, index = answers["index"]
    assert status == 200 and {e["name"]: e["state"] for e in index} == {
        MODEL_NAME: "UNAVAILABLE",
        LITE_MODEL_NAME: "UNAVAILABLE",
        "ai4i-canary-failure": "UNLOADED",  # tests/contracts/ai4i_{canary,shadow}.yaml: never
        "ai4i-shadow-failure": "UNLOADED",  # asked for here
        "ai4i-learn-failure": "UNLOADED",  # tests/contracts/ai4i_learn.yaml
    }, index


# --------------------------------------------------------------------------- hot swap


@pytest.mark.integration
def test_hot_swap_without_failed_requests(serving: Stack, champion: dict[str, Any]) -> None:
    old, new = champion["current"]["version"], champion["next"]["version"]
    rows = ai4i_rows()[:200]
    stop = threading.Event()
    outcomes: list[tuple[float, int, str]] = []
    answers: dict[tuple[int, str], set[float]] = {}  # (row, version) → probabilities answered
    lock = threading.Lock()

    def loop(offset: int) -> None:
        pool = urllib3.PoolManager(maxsize=1, retries=False, timeout=urllib3.Timeout(connect=2, read=30))
        i = offset
        while not stop.is_set():
            index = i % len(rows)
            row = {k: rows[index][k] for k in CONTRACT.raw_inputs}
            i += 1
            try:
                resp = pool.request(
                    "POST",
                    serving.config.function_url("predict") + "predict",
                    body=json.dumps({"instances": [row]}).encode(),
                    headers={"Content-Type": "application/json"},
                )
                answer = json.loads(resp.data) if resp.status == 200 else {}
                version = answer.get("model_version", "")
                outcome = (time.monotonic(), resp.status, version or resp.data.decode(errors="replace")[:200])
                if version:
                    with lock:
                        answers.setdefault((index, version), set()).add(
                            answer["predictions"][0]["probability"]
                        )
            except urllib3.exceptions.HTTPError as exc:
                outcome = (time.monotonic(), 0, str(exc))
            with lock:
                outcomes.append(outcome)

    threads = [threading.Thread(target=loop, args=(n * 50,), daemon=True) for n in range(3)]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: len(outcomes) > 30, 30, what="the request loop to get going")
        promoted_at = time.monotonic()
        promote(serving, new, old)
        wait_until(
            lambda: [o for o in outcomes[-10:] if o[2] == new] == outcomes[-10:] and len(outcomes) > 10,
            60,
            interval=0.2,
            what=f"responses from version {new}",
        )
        swapped_at = min(t for t, _, v in outcomes if v == new)
        settled_at = time.monotonic()
        time.sleep(2.0)
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    failures = [o for o in outcomes if o[1] != 200]
    assert not failures, f"{len(failures)} of {len(outcomes)} requests failed during the swap: {failures[:5]}"
    versions = Counter(v for _, _, v in outcomes)
    assert set(versions) == {old, new}, versions
    after = Counter(v for t, _, v in outcomes if t > settled_at)
    assert set(after) == {new}, after
    # rows repeat (the response cache answers them): each version always gives a row one answer,
    # and the new version's answers are its own, not the old model's cached ones
    for index in sorted({r for r, v in answers if v == old}):  # each row the old model answered, again
        row = {k: rows[index][k] for k in CONTRACT.raw_inputs}
        status, again = call(serving, "POST", "predict", {"instances": [row]})
        assert status == 200 and again["model_version"] == new, again
        answers.setdefault((index, new), set()).add(again["predictions"][0]["probability"])
    assert all(len(p) == 1 for p in answers.values()), {k: p for k, p in answers.items() if len(p) > 1}
    both = [r for r in range(len(rows)) if (r, old) in answers and (r, new) in answers]
    same = [r for r in both if answers[(r, old)] == answers[(r, new)]]
    assert both and len(same) < len(both) / 2, f"{len(same)} of {len(both)} rows got the old model's answer"
    print(
        f"hot swap: {len(outcomes)} requests, none failed; first v{new} answer "
        f"{swapped_at - promoted_at:.2f}s after the promotion, versions {dict(versions)}"
    )


# --------------------------------------------------------------------------- scale to zero


@pytest.mark.integration
def test_idle_predict_scales_to_zero_and_serves_its_cold_start_without_errors(
    serving: Stack, champion: dict[str, Any]
) -> None:
    """minReplicaCount 0: after its stable window without requests predict has no process; the
    requests that then arrive together are held by the activator until a fresh replica has
    loaded the champion, and every one of them gets a prediction."""

    def predict_status() -> dict[str, Any]:
        return json.loads(serving.cli("status", "--json").stdout)["functions"]["predict"]

    assert predict_status()["min_replicas"] == 0
    wait_until(lambda: not predict_status()["replicas"], 240, what="predict scaled to zero when idle")
    row = {k: ai4i_rows()[0][k] for k in CONTRACT.raw_inputs}
    body = json.dumps({"instances": [row]}).encode()

    def ask(_: int) -> tuple[int, str]:
        resp = HTTP.request(
            "POST",
            serving.config.function_url("predict") + "predict",
            body=body,
            headers={"Content-Type": "application/json"},
        )
        return resp.status, json.loads(resp.data).get(
            "model_version", ""
        ) if resp.status == 200 else resp.data

    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(ask, range(6)))
    assert [status for status, _ in answers] == [200] * 6, answers
    assert len({version for _, version in answers}) == 1, f"one champion answers them all: {answers}"
    scaling = predict_status()["scaling"]
    assert scaling["last_cold_start_s"] is not None, scaling
    print(f"predict cold start (request held by the activator): {scaling['last_cold_start_s']}s")
