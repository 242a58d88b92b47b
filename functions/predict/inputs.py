"""Request bodies → validated raw rows → the model's input matrix (numpy only, no pandas).

Every caller-facing problem raises :class:`BadInput` with the HTTP status and a message that
names the offending field (``instances[2].torque_nm: NaN is not a finite number``).
Values are checked against the data contract: numeric columns must be finite numbers inside
the contract's ``min``/``max``; categoricals must be one of the contract's values.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from shared.contracts import Contract

MAX_ROWS = 10_000
V2_NUMERIC_TYPES = frozenset(
    {"FP16", "FP32", "FP64", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"}
)
SINGLE_TENSOR = "input"

RawRow = dict[str, float | str]


class BadInput(ValueError):
    """A request the caller must fix; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def _number(value: Any, where: str, contract: Contract, column: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadInput(f"{where}: expected a number, got {type(value).__name__} {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise BadInput(f"{where}: {value!r} is not a finite number")
    spec = contract.column(column)
    if spec.min is not None and number < spec.min:
        raise BadInput(f"{where}: {number} is below the contract minimum {spec.min}")
    if spec.max is not None and number > spec.max:
        raise BadInput(f"{where}: {number} is above the contract maximum {spec.max}")
    return number


def _category(value: Any, where: str, allowed: Sequence[Any]) -> str:
    if value not in allowed or isinstance(value, bool):
        raise BadInput(f"{where}: {value!r} is not one of {list(allowed)}")
    return str(value)


def check_row(contract: Contract, row: Mapping[str, Any], where: str) -> RawRow:
    """The contract's raw inputs of ``row``, validated (extra keys are ignored)."""
    if not isinstance(row, Mapping):
        raise BadInput(f"{where}: expected an object of raw feature values, got {type(row).__name__}")
    missing = [name for name in contract.raw_inputs if name not in row]
    if missing:
        raise BadInput(f"{where}: missing feature(s) {missing}; required: {list(contract.raw_inputs)}")
    checked: RawRow = {}
    for name in contract.raw_inputs:
        value = row[name]
        if name in contract.categoricals:
            checked[name] = _category(value, f"{where}.{name}", contract.categoricals[name])
        else:
            checked[name] = _number(value, f"{where}.{name}", contract, name)
    return checked


def _check_count(count: int, what: str) -> None:
    if count == 0:
        raise BadInput(f"{what} is empty: send at least one row")
    if count > MAX_ROWS:
        raise BadInput(f"{what} has {count} rows; at most {MAX_ROWS} per request", status=413)


def rows_from_instances(contract: Contract, instances: Any) -> list[RawRow]:
    """``{"instances": [{raw feature: value}, ...]}`` of the simple JSON route."""
    if not isinstance(instances, list):
        raise BadInput("instances: expected a list of objects")
    _check_count(len(instances), "instances")
    return [check_row(contract, row, f"instances[{i}]") for i, row in enumerate(instances)]


def parse_entities(entities: Any) -> list[int]:
    """``{"entities": [udi, ...]}``: positive integers."""
    if not isinstance(entities, list):
        raise BadInput("entities: expected a list of entity ids (integers)")
    _check_count(len(entities), "entities")
    for i, entity in enumerate(entities):
        if isinstance(entity, bool) or not isinstance(entity, int) or entity < 1:
            raise BadInput(f"entities[{i}]: {entity!r} is not an entity id (a positive integer)")
    return list(entities)


# --------------------------------------------------------------------------- Open Inference v2


def _flatten(data: Any, where: str) -> list[Any]:
    if not isinstance(data, list):
        raise BadInput(f"{where}.data: expected a list")
    flat: list[Any] = []
    stack: list[Any] = [iter(data)]
    while stack:
        item = next(stack[-1], StopIteration)
        if item is StopIteration:
            stack.pop()
        elif isinstance(item, list):
            stack.append(iter(item))
        else:
            flat.append(item)
    return flat


def _shape(tensor: Mapping[str, Any], where: str) -> list[int]:
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise BadInput(f"{where}.shape: expected a list of non-negative integers, got {shape!r}")
    return shape


def _tensor(raw: Any, index: int) -> tuple[str, Mapping[str, Any], str]:
    where = f"inputs[{index}]"
    if not isinstance(raw, Mapping):
        raise BadInput(f"{where}: expected a tensor object with name, shape, datatype, data")
    for key in ("name", "shape", "datatype", "data"):
        if key not in raw:
            raise BadInput(f"{where}: missing '{key}'")
    name = raw["name"]
    if not isinstance(name, str) or not name:
        raise BadInput(f"{where}.name: expected a non-empty string")
    return name, raw, f"{where} ({name})"


def _single_tensor_rows(contract: Contract, tensor: Mapping[str, Any], where: str) -> list[RawRow]:
    width = len(contract.raw_inputs)
    shape = _shape(tensor, where)
    if len(shape) != 2 or shape[1] != width:
        raise BadInput(
            f"{where}.shape: expected [N, {width}] (columns {list(contract.raw_inputs)}), got {shape}"
        )
    if tensor["datatype"] not in V2_NUMERIC_TYPES:
        raise BadInput(f"{where}.datatype: expected a numeric type such as FP32, got {tensor['datatype']!r}")
    flat = _flatten(tensor["data"], where)
    if len(flat) != shape[0] * width:
        raise BadInput(f"{where}.data: {len(flat)} values do not fill shape {shape}")
    _check_count(shape[0], where)
    rows: list[RawRow] = []
    for r in range(shape[0]):
        row: dict[str, Any] = {}
        for c, name in enumerate(contract.raw_inputs):
            value = flat[r * width + c]
            if name in contract.categoricals:
                codes = contract.categoricals[name]
                if (
                    isinstance(value, bool)
                    or not isinstance(value, int | float)
                    or value not in range(len(codes))
                ):
                    raise BadInput(
                        f"{where}.data[{r}][{c}] ({name}): {value!r} is not a category code "
                        f"0..{len(codes) - 1} (for {list(codes)})"
                    )
                value = codes[int(value)]
            row[name] = value
        rows.append(check_row(contract, row, f"{where}.data[{r}]"))
    return rows


def rows_from_v2_inputs(contract: Contract, inputs: Any) -> list[RawRow]:
    """Open Inference Protocol ``inputs`` → raw rows.

    Accepted forms: one tensor per raw input (numeric ones any numeric datatype, shape
    ``[N]`` or ``[N, 1]``; categoricals ``BYTES`` holding the category strings), or one
    ``input`` tensor ``[N, len(raw_inputs)]`` in ``raw_inputs`` order with categoricals as
    their index in the contract's value list.
    """
    if not isinstance(inputs, list) or not inputs:
        raise BadInput("inputs: expected a non-empty list of tensors")
    tensors = [_tensor(raw, i) for i, raw in enumerate(inputs)]
    names = [name for name, _, _ in tensors]
    if names == [SINGLE_TENSOR]:
        return _single_tensor_rows(contract, tensors[0][1], tensors[0][2])
    duplicates = sorted({n for n in names if names.count(n) > 1})
    unknown = [n for n in names if n not in contract.raw_inputs]
    missing = [n for n in contract.raw_inputs if n not in names]
    if duplicates or unknown or missing:
        problems = []
        if missing:
            problems.append(f"missing input tensor(s) {missing}")
        if unknown:
            problems.append(f"unknown input tensor(s) {unknown}")
        if duplicates:
            problems.append(f"duplicate input tensor(s) {duplicates}")
        raise BadInput(
            "inputs: " + "; ".join(problems) + f". Send one tensor per raw input {list(contract.raw_inputs)} "
            f"or a single '{SINGLE_TENSOR}' tensor [N, {len(contract.raw_inputs)}]"
        )
    columns: dict[str, list[Any]] = {}
    count: int | None = None
    for name, tensor, where in tensors:
        shape = _shape(tensor, where)
        if len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1):
            raise BadInput(f"{where}.shape: expected [N] or [N, 1], got {shape}")
        expected_type = "BYTES" if name in contract.categoricals else "numeric"
        datatype = tensor["datatype"]
        if (expected_type == "BYTES" and datatype != "BYTES") or (
            expected_type == "numeric" and datatype not in V2_NUMERIC_TYPES
        ):
            raise BadInput(
                f"{where}.datatype: expected {'BYTES' if expected_type == 'BYTES' else 'FP32'}, got {datatype!r}"
            )
        flat = _flatten(tensor["data"], where)
        if len(flat) != shape[0]:
            raise BadInput(f"{where}.data: {len(flat)} values do not fill shape {shape}")
        if count is not None and shape[0] != count:
            raise BadInput(f"{where}.shape: {shape[0]} rows, but other inputs have {count}")
        count = shape[0]
        columns[name] = flat
    assert count is not None
    _check_count(count, "inputs")
    return [
        check_row(contract, {name: columns[name][r] for name in contract.raw_inputs}, f"inputs[row {r}]")
        for r in range(count)
    ]


# --------------------------------------------------------------------------- model matrix


def encode_rows(contract: Contract, rows: Sequence[RawRow], aggregates: Sequence[str] = ()) -> np.ndarray:
    """Validated raw rows → float32 matrix [N, len(encoded_features) + len(aggregates)] (derived
    features added; then the model's streamed ``aggregates``, which the rows must carry:
    ``functions.predict.aggregates`` puts them there, a row without them is a 422).

    Column-wise: ``contract.derive`` runs once on numpy arrays (float64, as training does on
    pandas columns), then the matrix is cast to float32, XGBoost's own precision.
    """
    columns: dict[str, Any] = {}
    for name in contract.raw_inputs:
        values = [row[name] for row in rows]
        columns[name] = np.asarray(values, dtype=object if name in contract.categoricals else np.float64)
    derived = contract.derive(columns)
    blocks: list[np.ndarray] = []
    for feature in contract.model_features:
        if feature in contract.categoricals:
            blocks.extend(
                (derived[feature] == value).astype(np.float64) for value in contract.categoricals[feature]
            )
        else:
            blocks.append(np.asarray(derived[feature], dtype=np.float64))
    for name in aggregates:
        missing = [i for i, row in enumerate(rows) if row.get(name) is None]
        if missing:
            raise BadInput(
                f"rows {missing[:10]}: no rolling aggregate {name!r}; this model scores the streamed "
                "window (predict by entity after sending sensor readings)",
                status=422,
            )
        blocks.append(np.asarray([row[name] for row in rows], dtype=np.float64))
    return np.column_stack(blocks).astype(np.float32)
