"""The ``streaming:`` section of a data contract, and the check of one streamed reading.

A reading is one entity's raw inputs at one time (``dev.faaspipe.sensor.reading.v1``). In a
stream the contract's entity key names the machine the reading comes from: each accepted
reading replaces the entity's latest values and enters its rolling window of the last
``window`` readings, over which the declared aggregates are computed::

    streaming:
      window: 10                         # the last N accepted readings of each entity
      aggregates:                        # field -> aggregates; feature <field>_<agg>_<N>
        torque_nm: [mean, max]
        tool_wear_min: [max]

Fields are numeric columns or derived features. Stdlib only (the serving image imports it).
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shared.contracts import Contract

__all__ = [
    "AGGREGATES",
    "Aggregate",
    "Reason",
    "StreamingSpec",
    "aggregate_window",
    "check_reading",
    "parse_streaming",
]

AGGREGATES: dict[str, Callable[[Sequence[float]], float]] = {
    "mean": statistics.fmean,
    "max": max,
    "min": min,
    "sum": math.fsum,
}
MAX_WINDOW = 10_000


@dataclass(frozen=True)
class Aggregate:
    field: str
    function: str  # a key of AGGREGATES
    window: int

    @property
    def name(self) -> str:
        """The feature's name: ``<field>_<function>_<window>``, e.g. ``torque_nm_mean_10``."""
        return f"{self.field}_{self.function}_{self.window}"


@dataclass(frozen=True)
class StreamingSpec:
    window: int
    aggregates: tuple[Aggregate, ...]

    @property
    def fields(self) -> tuple[str, ...]:
        """The fields a window keeps per reading, in declaration order."""
        out: list[str] = []
        for aggregate in self.aggregates:
            if aggregate.field not in out:
                out.append(aggregate.field)
        return tuple(out)

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.aggregates)


def parse_streaming(doc: Any, where: str, numeric: Sequence[str]) -> StreamingSpec | None:
    """The ``streaming:`` section (None when absent); ``numeric``: the fields it may aggregate.

    Raises ``ValueError`` naming the field that is wrong.
    """
    if doc is None:
        return None
    if not isinstance(doc, Mapping):
        raise ValueError(f"{where}: streaming must be a mapping with 'window' and 'aggregates'")
    unknown = sorted(set(doc) - {"window", "aggregates"})
    if unknown:
        raise ValueError(f"{where}: streaming has unknown field(s) {unknown}")
    window = doc.get("window")
    if isinstance(window, bool) or not isinstance(window, int) or not 1 <= window <= MAX_WINDOW:
        raise ValueError(
            f"{where}: streaming.window must be an integer from 1 to {MAX_WINDOW}, got {window!r}"
        )
    declared = doc.get("aggregates")
    if not isinstance(declared, Mapping) or not declared:
        raise ValueError(f"{where}: streaming.aggregates must map fields to lists of {sorted(AGGREGATES)}")
    aggregates: list[Aggregate] = []
    for field, functions in declared.items():
        if field not in numeric:
            raise ValueError(
                f"{where}: streaming.aggregates.{field}: not a numeric column or derived feature {sorted(numeric)}"
            )
        if isinstance(functions, str):
            functions = [functions]
        if not isinstance(functions, list) or not functions:
            raise ValueError(
                f"{where}: streaming.aggregates.{field}: expected a list of {sorted(AGGREGATES)}"
            )
        for function in functions:
            if function not in AGGREGATES:
                raise ValueError(
                    f"{where}: streaming.aggregates.{field}: {function!r} is not one of {sorted(AGGREGATES)}"
                )
            aggregate = Aggregate(field, function, window)
            if aggregate in aggregates:
                raise ValueError(f"{where}: streaming.aggregates.{field}: {function!r} declared twice")
            aggregates.append(aggregate)
    return StreamingSpec(window=window, aggregates=tuple(aggregates))


def aggregate_window(spec: StreamingSpec, window: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """The declared aggregates over ``window`` (the entity's last readings, oldest first)."""
    if not window:
        raise ValueError("an empty window has no aggregates")
    return {
        a.name: float(AGGREGATES[a.function]([float(r[a.field]) for r in window])) for a in spec.aggregates
    }


# --- one reading ------------------------------------------------------------------------


@dataclass(frozen=True)
class Reason:
    """Why a reading was rejected: the field (None for the reading as a whole), the rule, a message."""

    field: str | None
    rule: str
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {"field": self.field, "rule": self.rule, "message": self.message}


def reading_fields(contract: Contract) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(required, optional) fields of a reading: the entity key and the raw inputs are required;
    the other non-label columns of the feature view (string identifiers) may be sent."""
    required = (contract.entity_key, *contract.raw_inputs)
    optional = tuple(
        c.name for c in contract.columns if c.name not in required and c.type in ("string", "category")
    )
    return required, optional


_SHAPES: dict[int, tuple[Contract, tuple[str, ...], tuple[str, ...], frozenset[str], dict[str, Any]]] = {}


def _shape(contract: Contract) -> tuple[tuple[str, ...], tuple[str, ...], frozenset[str], dict[str, Any]]:
    """(required, optional, both as a set, columns by name) of a contract, worked out once per
    contract object (a contract is immutable; each reading's check needs them)."""
    cached = _SHAPES.get(id(contract))
    if cached is None or cached[0] is not contract:
        if len(_SHAPES) > 64:  # contracts made on the fly (tests): keep the cache small
            _SHAPES.clear()
        required, optional = reading_fields(contract)
        columns = {c.name: c for c in reversed(contract.columns)}  # the first of a name, as column()
        cached = _SHAPES[id(contract)] = (
            contract,
            required,
            optional,
            frozenset((*required, *optional)),
            columns,
        )
    return cached[1:]


def _check_value(contract: Contract, name: str, value: Any) -> tuple[Any, Reason | None]:
    column = _shape(contract)[3][name]
    if value is None:
        return None, Reason(name, "not_null", f"{name} is null")
    if column.type == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            return None, Reason(
                name, "type", f"{name}: expected an integer, got {type(value).__name__} {value!r}"
            )
        number: float = value
    elif column.type == "float":
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None, Reason(
                name, "type", f"{name}: expected a number, got {type(value).__name__} {value!r}"
            )
        if not math.isfinite(value):
            return None, Reason(name, "finite", f"{name}: {value!r} is not a finite number")
        number = float(value)
    else:
        if not isinstance(value, str):
            return None, Reason(
                name, "type", f"{name}: expected a string, got {type(value).__name__} {value!r}"
            )
        if column.values is not None and value not in column.values:
            return None, Reason(
                name, "allowed_values", f"{name}: {value!r} is not one of {list(column.values)}"
            )
        if column.pattern is not None and not re.fullmatch(column.pattern, value):
            return None, Reason(name, "pattern", f"{name}: {value!r} does not match {column.pattern!r}")
        return value, None
    if column.values is not None and number not in column.values:
        return None, Reason(name, "allowed_values", f"{name}: {value!r} is not one of {list(column.values)}")
    if column.min is not None and number < column.min:
        return None, Reason(name, "min", f"{name}: {value} is below the contract minimum {column.min}")
    if column.max is not None and number > column.max:
        return None, Reason(name, "max", f"{name}: {value} is above the contract maximum {column.max}")
    return number, None


def check_reading(contract: Contract, reading: Any) -> tuple[dict[str, Any] | None, list[Reason]]:
    """``(row, [])`` for a valid reading: its canonical values plus the derived features; else
    ``(None, reasons)`` with one reason per offending field (every field is checked)."""
    if not isinstance(reading, Mapping):
        return None, [Reason(None, "schema", f"a reading must be an object, got {type(reading).__name__}")]
    required, optional, known, _ = _shape(contract)
    reasons: list[Reason] = []
    row: dict[str, Any] = {}
    for name in sorted(set(reading) - known):
        reasons.append(
            Reason(
                name, "unknown_field", f"{name} is not a field of a {contract.name} reading {list(required)}"
            )
        )
    for name in (*required, *optional):
        if name not in reading:
            if name in required:
                reasons.append(Reason(name, "required", f"{name} is missing"))
            continue
        value, reason = _check_value(contract, name, reading[name])
        if reason is not None:
            reasons.append(reason)
        else:
            row[name] = value
    if reasons:
        return None, reasons
    return contract.derive(row), []
