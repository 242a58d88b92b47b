"""The Open Inference Protocol over gRPC, below the stack: tensors both ways, the topology's
derived gRPC function, and the gateway's gRPC front routing real gRPC servers.

Our ``inference`` proto and tritonclient's cannot share one process (both register the
``inference`` package in protobuf's default pool), so the tensor cases run in the serving
environment in a subprocess; tritonclient.grpc against the stack is in tests/test_predict.py.
Rules: the OIP gRPC spec (kserve/open-inference-protocol ``grpc_predict_v2.proto``):
``raw_input_contents`` holds one entry per input in order and excludes ``contents``; FP16 and
BF16 travel only raw; raw data is flat, row-major, little endian, BYTES length-prefixed.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest

from localdev.gateway import Gateway
from localdev.grpc_front import GrpcFront
from localdev.processes import free_port
from shared.topology import TopologyError, load_function, load_topology
from tests.conftest import REPO

TENSOR_CASES = r"""
import json, struct
import numpy as np
from functions.predict.grpc_tensors import infer_response, tensors_from_request
from functions.predict.inputs import BadInput
from functions.predict.oip import inference_pb2 as pb

def raw_bytes(values):
    return b"".join(struct.pack("<I", len(v)) + v for v in values)

out = {}
req = pb.ModelInferRequest(model_name="m")
req.inputs.add(name="x", datatype="FP32", shape=[2])
req.inputs.add(name="t", datatype="BYTES", shape=[2, 1])
req.raw_input_contents.append(np.array([1.5, -2.0], dtype="<f4").tobytes())
req.raw_input_contents.append(raw_bytes([b"L", b"H"]))
out["raw"] = tensors_from_request(req)

typed = pb.ModelInferRequest(model_name="m")
t = typed.inputs.add(name="x", datatype="INT64", shape=[3])
t.contents.int64_contents.extend([1, 2, 3])
b = typed.inputs.add(name="t", datatype="BYTES", shape=[1])
b.contents.bytes_contents.append(b"M")
out["typed"] = tensors_from_request(typed)

def error(build):
    try:
        tensors_from_request(build())
    except BadInput as exc:
        return [exc.status, str(exc)]
    return None

def short_raw():
    r = pb.ModelInferRequest()
    r.inputs.add(name="a", datatype="FP32", shape=[1]); r.inputs.add(name="b", datatype="FP32", shape=[1])
    r.raw_input_contents.append(b"\0\0\0\0")
    return r

def raw_and_contents():
    r = pb.ModelInferRequest()
    t = r.inputs.add(name="a", datatype="FP32", shape=[1]); t.contents.fp32_contents.append(1.0)
    r.raw_input_contents.append(b"\0\0\0\0")
    return r

def fp16_typed():
    r = pb.ModelInferRequest(); r.inputs.add(name="h", datatype="FP16", shape=[1]); return r

def wrong_size():
    r = pb.ModelInferRequest(); r.inputs.add(name="a", datatype="FP32", shape=[2])
    r.raw_input_contents.append(b"\0\0\0\0"); return r

out["errors"] = {
    "short_raw": error(short_raw),
    "raw_and_contents": error(raw_and_contents),
    "fp16_typed": error(fp16_typed),
    "wrong_size": error(wrong_size),
}
outputs = [("probability", "FP32", [0.25, 0.75]), ("label", "INT64", [0, 1])]
raw = infer_response("m", "3", "r1", outputs, raw=True)
out["raw_out"] = {
    "names": [o.name for o in raw.outputs],
    "has_contents": [o.HasField("contents") for o in raw.outputs],
    "probability": np.frombuffer(raw.raw_output_contents[0], dtype="<f4").tolist(),
    "label": np.frombuffer(raw.raw_output_contents[1], dtype="<i8").tolist(),
    "shape": list(raw.outputs[0].shape), "id": raw.id, "version": raw.model_version,
}
typed_out = infer_response("m", "3", "r1", outputs, raw=False)
out["typed_out"] = {
    "raw_count": len(typed_out.raw_output_contents),
    "probability": list(typed_out.outputs[0].contents.fp32_contents),
    "label": list(typed_out.outputs[1].contents.int64_contents),
}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def tensor_cases() -> dict[str, Any]:
    result = subprocess.run(
        [str(REPO / ".venvs" / "serving" / "bin" / "python"), "-c", TENSOR_CASES],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_raw_inputs_decode_as_the_binary_extension(tensor_cases: dict[str, Any]) -> None:
    assert tensor_cases["raw"] == [
        {"name": "x", "datatype": "FP32", "shape": [2], "data": [1.5, -2.0]},
        {"name": "t", "datatype": "BYTES", "shape": [2, 1], "data": ["L", "H"]},
    ]


def test_typed_contents_use_the_datatypes_field(tensor_cases: dict[str, Any]) -> None:
    assert tensor_cases["typed"] == [
        {"name": "x", "datatype": "INT64", "shape": [3], "data": [1, 2, 3]},
        {"name": "t", "datatype": "BYTES", "shape": [1], "data": ["M"]},
    ]


@pytest.mark.parametrize(
    ("case", "needle"),
    [
        ("short_raw", "raw_input_contents has 1 entries for 2 inputs"),  # one entry per input
        ("raw_and_contents", "contents must be empty"),  # raw excludes contents
        ("fp16_typed", "needs raw_input_contents"),  # FP16 travels only raw
        ("wrong_size", "does not fit shape [2]"),  # size must match shape x datatype
    ],
)
def test_malformed_tensors_are_invalid_argument(tensor_cases: dict[str, Any], case: str, needle: str) -> None:
    status, message = tensor_cases["errors"][case]
    assert status == 400 and needle in message, message


def test_outputs_answer_the_way_inputs_came(tensor_cases: dict[str, Any]) -> None:
    raw = tensor_cases["raw_out"]
    assert raw["names"] == ["probability", "label"] and raw["has_contents"] == [False, False]
    assert raw["probability"] == [0.25, 0.75] and raw["label"] == [0, 1]
    assert raw["shape"] == [2] and raw["id"] == "r1" and raw["version"] == "3"
    typed = tensor_cases["typed_out"]
    assert typed == {"raw_count": 0, "probability": [0.25, 0.75], "label": [0, 1]}


# --------------------------------------------------------------------------- topology


def test_predict_declares_its_grpc_endpoint_as_a_derived_function() -> None:
    topology = load_topology()
    http, derived = topology.functions["predict"], topology.functions["predict-grpc"]
    assert derived.kind == "grpc" and derived.grpc_services == ("inference.GRPCInferenceService",)
    assert derived.module == "functions.predict.grpc_service"
    assert (derived.environment, derived.env, derived.scaling, derived.concurrency) == (
        http.environment,
        http.env,
        http.scaling,
        http.concurrency,
    )
    assert derived.subscriptions == ()


@pytest.mark.parametrize(
    ("block", "needle"),
    [
        ({"module": "m"}, "exactly `module` and `services`"),
        ({"module": "m", "services": []}, "fully qualified"),
        ({"module": "m", "services": ["NoPackage"]}, "fully qualified"),
    ],
)
def test_bad_grpc_blocks_are_refused(tmp_path: Path, block: dict[str, Any], needle: str) -> None:
    import yaml

    path = tmp_path / "f" / "function.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump({"name": "f", "kind": "http", "module": "m", "grpc": block}))
    with pytest.raises(TopologyError, match=needle):
        load_function(path)
    path.write_text(yaml.safe_dump({"name": "f", "kind": "event", "module": "m", "grpc": block}))
    with pytest.raises(TopologyError, match="only an http function"):
        load_function(path)


# --------------------------------------------------------------------------- the gRPC front


def _identity(data: bytes) -> bytes:
    return data


class Backend(grpc.GenericRpcHandler):
    """A real gRPC server answering /demo.Echo/* with the request and what it saw."""

    def __init__(self) -> None:
        self.port = free_port()
        self.server = grpc.server(ThreadPoolExecutor(4), handlers=[self])
        self.server.add_insecure_port(f"127.0.0.1:{self.port}")
        self.calls: list[tuple[str, dict[str, str], float | None]] = []

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        if not details.method.startswith("/demo.Echo/"):
            return None
        return grpc.unary_unary_rpc_method_handler(
            lambda req, ctx: self._answer(details.method, req, ctx),
            request_deserializer=_identity,
            response_serializer=_identity,
        )

    def _answer(self, method: str, request: bytes, context: grpc.ServicerContext) -> bytes:
        metadata = {m.key: m.value for m in context.invocation_metadata()}
        self.calls.append((method, metadata, context.time_remaining()))
        if method.endswith("/Fail"):
            context.set_trailing_metadata([("why", "asked-to")])
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad tensor 'x'")
        return b"echo:" + request


@pytest.fixture
def backend() -> Any:
    server = Backend()
    server.server.start()
    yield server
    server.server.stop(0)


def _front(resolve: Any, demand: Any = None, hold_s: float = 5.0) -> GrpcFront:
    gateway = Gateway(free_port(), resolve, demand=demand, hold_s=hold_s)
    front = GrpcFront(gateway, {"demo.Echo": "echo"}, free_port())
    front.start()
    return front


def _stub(front: GrpcFront, method: str) -> Any:
    channel = grpc.insecure_channel(f"127.0.0.1:{front.port}")
    return channel, channel.unary_unary(method, request_serializer=_identity, response_deserializer=_identity)


def test_front_forwards_bytes_metadata_and_deadline(backend: Backend) -> None:
    front = _front(lambda fn: [f"http://127.0.0.1:{backend.port}"] if fn == "echo" else None)
    channel, echo = _stub(front, "/demo.Echo/Say")
    try:
        answer = echo(b"hi", metadata=[("x-request-id", "r-7")], timeout=10)
        assert answer == b"echo:hi"
        method, metadata, remaining = backend.calls[-1]
        assert method == "/demo.Echo/Say" and metadata["x-request-id"] == "r-7"
        assert remaining is not None and 0 < remaining <= 10  # the caller's deadline travels
        assert front.gateway.stats["echo"].in_flight == 0
    finally:
        channel.close()
        front.stop()


def test_front_returns_the_callees_status_details_and_trailers(backend: Backend) -> None:
    front = _front(lambda fn: [f"http://127.0.0.1:{backend.port}"])
    channel, fail = _stub(front, "/demo.Echo/Fail")
    try:
        with pytest.raises(grpc.RpcError) as caught:
            fail(b"x", timeout=10)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert caught.value.details() == "bad tensor 'x'"
        assert ("why", "asked-to") in tuple(caught.value.trailing_metadata())
    finally:
        channel.close()
        front.stop()


def test_front_unknown_service_is_unimplemented(backend: Backend) -> None:
    front = _front(lambda fn: [f"http://127.0.0.1:{backend.port}"])
    channel, other = _stub(front, "/other.Service/Call")
    try:
        with pytest.raises(grpc.RpcError) as caught:
            other(b"x", timeout=10)
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        channel.close()
        front.stop()


def test_front_holds_a_call_until_demand_brings_a_replica(backend: Backend) -> None:
    """Scale from zero: no replica → demand is signalled, the call waits, then is served."""
    ready: list[str] = []

    def demand(function: str) -> None:
        threading.Timer(0.5, lambda: ready.append(f"http://127.0.0.1:{backend.port}")).start()

    front = _front(lambda fn: list(ready), demand=demand)
    channel, echo = _stub(front, "/demo.Echo/Say")
    try:
        started = time.monotonic()
        assert echo(b"cold", timeout=10) == b"echo:cold"
        assert time.monotonic() - started >= 0.4
        assert [f for f, _ in front.gateway.cold_starts] == ["echo"]
    finally:
        channel.close()
        front.stop()


def test_front_without_a_replica_in_time_is_unavailable() -> None:
    front = _front(lambda fn: [], hold_s=0.3)
    channel, echo = _stub(front, "/demo.Echo/Say")
    try:
        with pytest.raises(grpc.RpcError) as caught:
            echo(b"x", timeout=10)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "no ready replica" in caught.value.details()
    finally:
        channel.close()
        front.stop()
