"""Evaluation of a syntax tree against an event (CESQL v1 spec, sections 3.2 "context
identifiers", 3.3 "Errors", 3.4 "Operators", 3.6 "Evaluation" and 3.7 implicit casting).

Errors follow the spec's fail-fast mode (section 4.1), applied at each node, which is what the
TCK expects:

* an operator or function whose operand or argument yields an error is not computed: it
  returns the zero value of its own return type with that error (so ``1 / missing`` is ``0``
  with a MissingAttributeError, not a MathError), and later operands are not evaluated;
* a failed implicit cast of an operand does the same, with the CastError;
* a node's own error (division by zero, ``ABS`` overflow, ``LEFT`` with a negative length)
  comes with the value the spec gives for it.

So the error list holds at most one error. AND and OR short-circuit (section 3.4.2); ``IN``
stops at the first element equal to its left operand, as an OR of ``=`` would. Integer results
outside the 32-bit range are clamped to it and come with a MathError, as ``ABS`` does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from shared.cesql import attributes
from shared.cesql.casting import INT_MAX, INT_MIN, CesqlType, Value, cast, to_string, type_of
from shared.cesql.errors import CesqlError, MathError, MissingAttributeError, MissingFunctionError
from shared.cesql.like import like
from shared.cesql.nodes import (
    ARITHMETIC,
    EQUALITY,
    Attribute,
    Binary,
    Call,
    Exists,
    In,
    Like,
    Literal,
    Negate,
    Node,
    Not,
)

Outcome = tuple[Value, list[CesqlError]]
BOOLEAN, INTEGER = CesqlType.BOOLEAN, CesqlType.INTEGER


def evaluate(node: Node, event: Mapping[str, Any]) -> Outcome:
    """The value of ``node`` for the event's attributes, and the errors met (empty or one)."""
    match node:
        case Literal(value=value):
            return value, []
        case Attribute(name=name):
            found = attributes.lookup(event, name)
            return (False, [MissingAttributeError(name)]) if found is None else (found, [])
        case Exists(name=name):
            return attributes.exists(event, name), []
        case Not(operand=operand):
            values, errors = _operands([(operand, BOOLEAN)], event)
            return (False, errors) if errors else (not values[0], [])
        case Negate(operand=operand):
            values, errors = _operands([(operand, INTEGER)], event)
            return (0, errors) if errors else _integer(-int(values[0]))
        case Binary():
            return _binary(node, event)
        case Like(operand=operand, pattern=pattern, negated=negated):
            value, errors = evaluate(operand, event)
            if errors:
                return False, errors
            return like(to_string(value), pattern) != negated, []
        case In():
            return _in(node, event)
        case Call():
            return _call(node, event)
    raise TypeError(f"not a CESQL syntax tree node: {node!r}")


def _operands(
    operands: list[tuple[Node, CesqlType | None]], event: Mapping[str, Any]
) -> tuple[list[Value], list[CesqlError]]:
    """Evaluate operands in order, casting each to its type (None: no cast); stop at the first error."""
    values: list[Value] = []
    for operand, target in operands:
        value, errors = evaluate(operand, event)
        if errors:
            return [], errors
        if target is not None:
            value, cast_error = cast(value, target)
            if cast_error is not None:
                return [], [cast_error]
        values.append(value)
    return values, []


def _binary(node: Binary, event: Mapping[str, Any]) -> Outcome:
    zero = node.type.zero
    if node.op in ("AND", "OR", "XOR"):
        values, errors = _operands([(node.left, BOOLEAN)], event)
        if errors:
            return zero, errors
        if (node.op == "AND" and not values[0]) or (node.op == "OR" and values[0]):
            return values[0], []  # short circuit: the right operand is not evaluated
        right, errors = _operands([(node.right, BOOLEAN)], event)
        if errors:
            return zero, errors
        return (values[0] != right[0]) if node.op == "XOR" else right[0], []
    if node.op in EQUALITY:
        # ambiguous operator: the right operand's type decides, the left one is cast to it
        values, errors = _operands([(node.left, None), (node.right, None)], event)
        if errors:
            return zero, errors
        left, cast_error = cast(values[0], type_of(values[1]))
        if cast_error is not None:
            return zero, [cast_error]
        return (left == values[1]) == (node.op == "="), []
    values, errors = _operands([(node.left, INTEGER), (node.right, INTEGER)], event)
    if errors:
        return zero, errors
    x, y = int(values[0]), int(values[1])
    if node.op in ARITHMETIC:
        return _arithmetic(node.op, x, y)
    return {"<": x < y, "<=": x <= y, ">": x > y, ">=": x >= y}[node.op], []


def _arithmetic(op: str, x: int, y: int) -> Outcome:
    if op in "/%" and y == 0:
        return 0, [MathError(f"{'division' if op == '/' else 'modulo'} by zero")]
    if op == "+":
        return _integer(x + y)
    if op == "-":
        return _integer(x - y)
    if op == "*":
        return _integer(x * y)
    quotient = abs(x) // abs(y) * (1 if (x < 0) == (y < 0) else -1)  # rounded towards 0
    return _integer(quotient) if op == "/" else _integer(x - y * quotient)  # remainder has x's sign


def _integer(number: int) -> Outcome:
    if number > INT_MAX:
        return INT_MAX, [MathError(f"integer overflow: {number} is above {INT_MAX}")]
    if number < INT_MIN:
        return INT_MIN, [MathError(f"integer overflow: {number} is below {INT_MIN}")]
    return number, []


def _in(node: In, event: Mapping[str, Any]) -> Outcome:
    left, errors = evaluate(node.operand, event)
    if errors:
        return False, errors
    target = type_of(left)  # the left operand's type is the target of every element's cast
    for item in node.items:
        values, errors = _operands([(item, target)], event)
        if errors:
            return False, errors
        if values[0] == left:
            return not node.negated, []
    return node.negated, []


def _call(node: Call, event: Mapping[str, Any]) -> Outcome:
    function = node.function
    if function is None:
        return False, [MissingFunctionError(node.name, len(node.args))]
    operands = [(arg, function.param_type(i)) for i, arg in enumerate(node.args)]
    values, errors = _operands(operands, event)
    if errors:
        return function.returns.zero, errors
    value, error = function.impl(values)
    return value, ([] if error is None else [error])
