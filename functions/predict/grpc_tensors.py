"""Open Inference Protocol gRPC tensors ↔ the data plane's tensor dicts (no model code here).

``raw_input_contents`` (what ``tritonclient.grpc`` sends) use the binary tensor encoding of
``functions/predict/binary_tensors.py``; typed ``contents`` use the field of the datatype.
Every malformed tensor raises :class:`BadInput` naming it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from functions.predict import binary_tensors
from functions.predict.inputs import BadInput
from functions.predict.oip import inference_pb2 as pb

# datatype → the InferTensorContents field that carries it (FP16/BF16 only travel raw)
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def tensors_from_request(request: pb.ModelInferRequest) -> list[dict[str, Any]]:
    """The request's input tensors as the data plane takes them (``{"name", "datatype",
    "shape", "data"}`` with flat data), from typed contents or raw bytes."""
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise BadInput(
            f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs: "
            "one per input, in order, or none"
        )
    tensors = []
    for i, tensor in enumerate(request.inputs):
        where = f"inputs[{i}] ({tensor.name})"
        shape = list(tensor.shape)
        if raw:
            if tensor.HasField("contents"):
                raise BadInput(f"{where}: contents must be empty when raw_input_contents is used")
            data = binary_tensors.decode(tensor.datatype, shape, raw[i], where)
        else:
            field = CONTENTS_FIELD.get(tensor.datatype)
            if field is None:
                raise BadInput(
                    f"{where}.datatype: {tensor.datatype!r} needs raw_input_contents "
                    f"(typed contents carry {sorted(CONTENTS_FIELD)})"
                )
            data = list(getattr(tensor.contents, field))
            if tensor.datatype == "BYTES":
                data = [_text(item) for item in data]
        tensors.append({"name": tensor.name, "datatype": tensor.datatype, "shape": shape, "data": data})
    return tensors


def _text(item: bytes) -> str | bytes:
    try:
        return item.decode()
    except UnicodeDecodeError:
        return item


def infer_response(
    model_name: str,
    model_version: str,
    request_id: str,
    outputs: Sequence[tuple[str, str, Sequence[Any]]],
    *,
    raw: bool,
) -> pb.ModelInferResponse:
    """The answer with ``outputs`` (name, datatype, flat values), raw when the request's inputs
    were raw, typed contents otherwise."""
    response = pb.ModelInferResponse(model_name=model_name, model_version=model_version, id=request_id)
    for name, datatype, values in outputs:
        output = response.outputs.add(name=name, datatype=datatype, shape=[len(values)])
        if raw:
            response.raw_output_contents.append(binary_tensors.encode(datatype, values))
        else:
            getattr(output.contents, CONTENTS_FIELD[datatype]).extend(values)
    return response
