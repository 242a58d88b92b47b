"""The Open Inference Protocol's binary tensor data extension (REST), both ways.

Rules (Triton ``docs/protocol/extension_binary_data.md``, which KServe's v2 protocol adopts):

* tensor bytes are little-endian, row-major, no padding, each element in its type's native
  size; a ``BOOL`` is one byte (0 or 1); a ``BYTES`` element is a 4-byte unsigned
  little-endian length followed by that many bytes;
* an input sent as binary carries ``parameters.binary_data_size`` and no ``data``; the binary
  parts follow the JSON object in the order of the inputs that have them;
* ``Inference-Header-Content-Length`` gives the JSON object's length whenever binary data is
  present; without it the whole body is JSON;
* an output is answered as binary when its request entry says ``parameters.binary_data:
  true``, or when the request says ``parameters.binary_data_output: true`` and the output's
  own ``binary_data`` does not say otherwise; such an output has ``binary_data_size`` in
  place of ``data``, and the answer carries ``Inference-Header-Content-Length``.

Every malformed request raises :class:`BadInput` (400) naming the tensor and what is wrong.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from functions.predict.inputs import BadInput

HEADER = "Inference-Header-Content-Length"
EXTENSION = "binary_tensor_data"  # what the server metadata lists
CONTENT_TYPE = "application/octet-stream"

# the fixed-size datatypes: little-endian numpy dtypes of their native size
FIXED: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype("?"),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
_LENGTH = struct.Struct("<I")


def header_length(value: str | None, body_size: int) -> int | None:
    """The JSON object's length from ``Inference-Header-Content-Length`` (None when absent)."""
    if value is None:
        return None
    try:
        length = int(value.strip())
    except ValueError:
        raise BadInput(f"{HEADER}: expected a byte count, got {value!r}") from None
    if length < 0 or length > body_size:
        raise BadInput(f"{HEADER}: {length} is outside the body's {body_size} bytes")
    return length


def _elements(shape: Any, where: str) -> int:
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise BadInput(f"{where}.shape: expected a list of non-negative integers, got {shape!r}")
    return int(np.prod(shape, dtype=np.int64)) if shape else 1


def decode(datatype: Any, shape: Any, raw: bytes, where: str) -> list[Any]:
    """One tensor's binary data → its elements, flat, row-major (BYTES → str when UTF-8)."""
    count = _elements(shape, where)
    if datatype == "BYTES":
        values: list[Any] = []
        offset = 0
        while offset < len(raw):
            if offset + _LENGTH.size > len(raw):
                raise BadInput(f"{where}: BYTES element {len(values)} has a truncated 4-byte length")
            (size,) = _LENGTH.unpack_from(raw, offset)
            offset += _LENGTH.size
            if offset + size > len(raw):
                raise BadInput(
                    f"{where}: BYTES element {len(values)} says {size} bytes, {len(raw) - offset} remain"
                )
            item = raw[offset : offset + size]
            offset += size
            try:
                values.append(item.decode())
            except UnicodeDecodeError:
                values.append(item)
        if len(values) != count:
            raise BadInput(f"{where}: {len(values)} BYTES elements do not fill shape {shape}")
        return values
    dtype = FIXED.get(datatype) if isinstance(datatype, str) else None
    if dtype is None:
        raise BadInput(f"{where}.datatype: {datatype!r} is not an Open Inference Protocol datatype")
    if len(raw) != count * dtype.itemsize:
        raise BadInput(
            f"{where}: binary_data_size {len(raw)} does not fit shape {shape} of {datatype} "
            f"({count} x {dtype.itemsize} = {count * dtype.itemsize} bytes)"
        )
    if datatype == "BOOL" and any(b not in (0, 1) for b in raw):
        raise BadInput(f"{where}: a BOOL element must be the byte 0 or 1")
    return np.frombuffer(raw, dtype=dtype).tolist()


def encode(datatype: str, values: Sequence[Any]) -> bytes:
    """Flat elements → the tensor's binary data."""
    if datatype == "BYTES":
        parts = []
        for value in values:
            item = value.encode() if isinstance(value, str) else bytes(value)
            parts.append(_LENGTH.pack(len(item)) + item)
        return b"".join(parts)
    return np.asarray(values, dtype=FIXED[datatype]).tobytes()


def read_request(body: bytes, header: str | None) -> dict[str, Any]:
    """An inference request body (JSON, or JSON + binary tensors) → the request object with
    every binary input's elements in ``data``, as if it had come as JSON."""
    length = header_length(header, len(body))
    head, binary = (body, b"") if length is None else (body[:length], body[length:])
    try:
        doc = json.loads(head)
    except ValueError as exc:
        hint = (
            "" if length is not None or b"binary_data_size" not in body else f" (binary inputs need {HEADER})"
        )
        raise BadInput(f"request body is not valid JSON: {exc}{hint}") from exc
    if not isinstance(doc, dict):
        raise BadInput("request body must be a JSON object")
    inputs = doc.get("inputs")
    offset = 0
    for index, tensor in enumerate(inputs if isinstance(inputs, list) else []):
        if not isinstance(tensor, Mapping):
            continue
        params = tensor.get("parameters")
        size = params.get("binary_data_size") if isinstance(params, Mapping) else None
        if size is None:
            continue
        where = f"inputs[{index}] ({tensor.get('name')})"
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise BadInput(f"{where}.parameters.binary_data_size: expected a byte count, got {size!r}")
        if "data" in tensor:
            raise BadInput(f"{where}: has both 'data' and binary_data_size; send one")
        if length is None:
            raise BadInput(f"{where}: binary_data_size without the {HEADER} header")
        if offset + size > len(binary):
            raise BadInput(
                f"{where}: binary_data_size {size} runs past the body ({len(binary) - offset} bytes remain)"
            )
        tensor["data"] = decode(
            tensor.get("datatype"), tensor.get("shape"), binary[offset : offset + size], where
        )
        offset += size
    if offset != len(binary):
        raise BadInput(f"{len(binary) - offset} bytes after the JSON object belong to no input")
    return doc


def binary_outputs(request: Mapping[str, Any]) -> dict[str, bool]:
    """Per requested output name, whether it is answered as binary; ``"*"`` is the default for
    outputs the request does not list."""
    params = request.get("parameters")
    default = bool(params.get("binary_data_output")) if isinstance(params, Mapping) else False
    chosen: dict[str, bool] = {"*": default}
    for output in request.get("outputs") or []:
        if isinstance(output, Mapping) and isinstance(output.get("name"), str):
            own = output.get("parameters")
            flag = own.get("binary_data") if isinstance(own, Mapping) else None
            chosen[output["name"]] = default if flag is None else bool(flag)
    return chosen


def write_response(doc: dict[str, Any], binary: Mapping[str, bool]) -> tuple[bytes, dict[str, str]]:
    """A response object → (body, headers): outputs chosen as binary lose ``data`` for
    ``parameters.binary_data_size`` and their bytes follow the JSON object in output order."""
    blobs: list[bytes] = []
    outputs = []
    for output in doc.get("outputs", []):
        if binary.get(output["name"], binary.get("*", False)):
            blob = encode(output["datatype"], output["data"])
            blobs.append(blob)
            output = {k: v for k, v in output.items() if k != "data"}
            output["parameters"] = {**output.get("parameters", {}), "binary_data_size": len(blob)}
        outputs.append(output)
    head = json.dumps({**doc, "outputs": outputs}, separators=(",", ":")).encode()
    if not blobs:
        return head, {"Content-Type": "application/json"}
    return head + b"".join(blobs), {"Content-Type": CONTENT_TYPE, HEADER: str(len(head))}
