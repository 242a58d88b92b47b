"""The binary tensor data extension of the Open Inference Protocol, rule by rule.

Source of every rule: Triton's ``docs/protocol/extension_binary_data.md`` (adopted by KServe's
v2 protocol); its request/response example is the first case. No difference is intended.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np
import pytest

from functions.predict import binary_tensors as bt
from functions.predict.inputs import BadInput


def _body(doc: dict[str, Any], *blobs: bytes) -> tuple[bytes, str]:
    head = json.dumps(doc).encode()
    return head + b"".join(blobs), str(len(head))


def _bytes_elements(*items: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(i)) + i for i in items)


def test_the_specs_request_example() -> None:
    """extension_binary_data.md "Examples": UINT32 [2, 2] (16 bytes) then BOOL [3] (3 bytes)."""
    doc = {
        "inputs": [
            {"name": "input0", "shape": [2, 2], "datatype": "UINT32", "parameters": {"binary_data_size": 16}},
            {"name": "input1", "shape": [3], "datatype": "BOOL", "parameters": {"binary_data_size": 3}},
        ],
        "outputs": [{"name": "output0", "parameters": {"binary_data": True}}],
    }
    body, header = _body(doc, np.array([1, 2, 3, 4], "<u4").tobytes(), bytes([1, 0, 1]))
    request = bt.read_request(body, header)
    assert request["inputs"][0]["data"] == [1, 2, 3, 4]
    assert request["inputs"][1]["data"] == [True, False, True]
    assert bt.binary_outputs(request) == {"*": False, "output0": True}


def test_the_specs_response_example() -> None:
    """A [3, 2] FP32 output asked as binary: 24 bytes after the JSON, binary_data_size 24."""
    values = [0.5, 1.0, 1.5, 2.0, 2.5, 3.0]
    doc = {"outputs": [{"name": "output0", "shape": [3, 2], "datatype": "FP32", "data": values}]}
    body, headers = bt.write_response(doc, {"output0": True})
    length = int(headers[bt.HEADER])
    head = json.loads(body[:length])
    assert head["outputs"][0]["parameters"] == {"binary_data_size": 24} and "data" not in head["outputs"][0]
    assert np.frombuffer(body[length:], "<f4").tolist() == values
    assert headers["Content-Type"] == "application/octet-stream"


@pytest.mark.parametrize("datatype", sorted(bt.FIXED))
def test_every_fixed_type_round_trips_little_endian(datatype: str) -> None:
    """ "little-endian byte order, row major ... in the native size of the data type"."""
    values = [True, False] if datatype == "BOOL" else [0, 1, 2, 3]
    raw = bt.encode(datatype, values)
    assert len(raw) == len(values) * bt.FIXED[datatype].itemsize
    assert bt.decode(datatype, [len(values)], raw, "t") == values
    if datatype == "INT32":
        assert raw[:4] == b"\x00\x00\x00\x00" and raw[4:8] == b"\x01\x00\x00\x00"


def test_bytes_elements_are_length_prefixed() -> None:
    """ "For BYTES type an element is represented by a 4-byte unsigned integer giving the length
    followed by the actual bytes"; UTF-8 elements come back as str."""
    raw = _bytes_elements(b"L", b"MM", b"")
    assert bt.encode("BYTES", ["L", "MM", ""]) == raw
    assert bt.decode("BYTES", [3], raw, "t") == ["L", "MM", ""]
    assert bt.decode("BYTES", [1], _bytes_elements(b"\xff"), "t") == [b"\xff"]


def test_without_the_header_the_whole_body_is_json() -> None:
    doc = {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0]}]}
    assert bt.read_request(json.dumps(doc).encode(), None) == doc


def test_binary_inputs_follow_in_input_order_and_json_inputs_mix_in() -> None:
    doc = {
        "inputs": [
            {"name": "a", "shape": [2], "datatype": "INT64", "parameters": {"binary_data_size": 16}},
            {"name": "b", "shape": [1], "datatype": "FP32", "data": [9.0]},
            {"name": "c", "shape": [2], "datatype": "FP64", "parameters": {"binary_data_size": 16}},
        ]
    }
    body, header = _body(doc, np.array([7, 8], "<i8").tobytes(), np.array([0.25, 0.5], "<f8").tobytes())
    inputs = bt.read_request(body, header)["inputs"]
    assert [t["data"] for t in inputs] == [[7, 8], [9.0], [0.25, 0.5]]


OUTPUT_CHOICES = [
    # (request, {output: binary?}) — "binary_data" on an output overrides "binary_data_output"
    ({}, {"p": False}),
    ({"parameters": {"binary_data_output": True}}, {"p": True, "l": True}),
    ({"outputs": [{"name": "p", "parameters": {"binary_data": True}}]}, {"p": True, "l": False}),
    (
        {
            "parameters": {"binary_data_output": True},
            "outputs": [{"name": "p", "parameters": {"binary_data": False}}],
        },
        {"p": False, "l": True},
    ),
    ({"parameters": {"binary_data_output": True}, "outputs": [{"name": "p"}]}, {"p": True}),
]


@pytest.mark.parametrize(("request_doc", "expected"), OUTPUT_CHOICES)
def test_which_outputs_are_binary(request_doc: dict[str, Any], expected: dict[str, bool]) -> None:
    chosen = bt.binary_outputs(request_doc)
    assert {name: chosen.get(name, chosen["*"]) for name in expected} == expected


def test_a_response_with_no_binary_output_is_plain_json() -> None:
    doc = {"outputs": [{"name": "p", "shape": [1], "datatype": "FP32", "data": [0.5]}]}
    body, headers = bt.write_response(doc, {"*": False})
    assert json.loads(body) == doc and bt.HEADER not in headers


def test_binary_outputs_follow_in_output_order() -> None:
    doc = {
        "outputs": [
            {"name": "p", "shape": [2], "datatype": "FP32", "data": [0.25, 0.75]},
            {"name": "l", "shape": [2], "datatype": "INT64", "data": [0, 1]},
        ]
    }
    body, headers = bt.write_response(doc, {"*": True})
    length = int(headers[bt.HEADER])
    sizes = [o["parameters"]["binary_data_size"] for o in json.loads(body[:length])["outputs"]]
    assert sizes == [8, 16]
    assert np.frombuffer(body[length : length + 8], "<f4").tolist() == [0.25, 0.75]
    assert np.frombuffer(body[length + 8 :], "<i8").tolist() == [0, 1]


def _one(datatype: str, shape: list[int], size: int, **extra: Any) -> dict[str, Any]:
    params = {"binary_data_size": size}
    return {"inputs": [{"name": "x", "shape": shape, "datatype": datatype, "parameters": params, **extra}]}


BAD = [
    ("size does not fit the shape", _one("FP32", [2], 4), [b"\x00" * 4], "does not fit shape"),
    ("data and binary_data_size", _one("FP32", [1], 4, data=[1.0]), [b"\x00" * 4], "both 'data'"),
    ("size past the body", _one("FP32", [2], 8), [b"\x00" * 4], "runs past the body"),
    ("bytes that belong to no input", _one("FP32", [1], 4), [b"\x00" * 5], "belong to no input"),
    ("BOOL that is not 0 or 1", _one("BOOL", [1], 1), [b"\x02"], "BOOL"),
    ("BYTES with a truncated length", _one("BYTES", [1], 2), [b"\x01\x00"], "truncated"),
    ("BYTES length past its data", _one("BYTES", [1], 5), [b"\x09\x00\x00\x00a"], "remain"),
    ("BYTES count off the shape", _one("BYTES", [2], 5), [_bytes_elements(b"a")], "do not fill shape"),
    ("unknown datatype", _one("FP8", [1], 1), [b"\x00"], "not an Open Inference Protocol datatype"),
    ("negative size", _one("FP32", [1], -4), [], "byte count"),
    ("bad shape", _one("FP32", [-1], 4), [b"\x00" * 4], "shape"),
]


@pytest.mark.parametrize(("case", "doc", "blobs", "needle"), BAD, ids=[c[0] for c in BAD])
def test_malformed_binary_requests_are_400_naming_the_problem(
    case: str, doc: dict[str, Any], blobs: list[bytes], needle: str
) -> None:
    body, header = _body(doc, *blobs)
    with pytest.raises(BadInput) as error:
        bt.read_request(body, header)
    assert error.value.status == 400 and needle in str(error.value), case


@pytest.mark.parametrize(
    ("header", "needle"), [("abc", "byte count"), ("999999", "outside"), ("-1", "outside")]
)
def test_a_bad_header_length_is_400(header: str, needle: str) -> None:
    body, _ = _body(_one("FP32", [1], 4), b"\x00" * 4)
    with pytest.raises(BadInput, match=needle):
        bt.read_request(body, header)


def test_binary_data_without_the_header_says_so() -> None:
    body, _ = _body(_one("FP32", [1], 4), b"\x00" * 4)
    with pytest.raises(BadInput, match=bt.HEADER):
        bt.read_request(body, None)
