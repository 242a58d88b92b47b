"""CloudEvents SQL Expression Language (CESQL) v1, pure Python: the ``cesql`` Trigger filter.

Implements https://github.com/cloudevents/spec/blob/cesql/v1.0.0/cesql/spec.md and passes its
TCK (``tests/test_cesql.py``). Usage::

    expr = compile_expression("type LIKE 'com.example.%' AND INT(priority) > 2")  # CesqlParseError
    value, errors = expr.evaluate({"type": "com.example.created", "priority": "3", ...})
    matches(expr, attributes)  # True only for Boolean true without errors

Modules: ``lexer`` and ``parser`` (syntax, sections 2 and 3.6), ``nodes`` (syntax tree),
``evaluate`` (semantics, 3.2-3.4 and 3.7), ``casting`` (type system, 3.1 and 3.7),
``attributes`` (event attributes, 3.2), ``like`` (3.4.3), ``functions`` (3.5), ``errors`` (3.3),
``expression`` (entry points, 1.2).
"""

from __future__ import annotations

from shared.cesql.casting import CesqlType, Value
from shared.cesql.errors import (
    CastError,
    CesqlError,
    CesqlParseError,
    FunctionEvaluationError,
    GenericError,
    MathError,
    MissingAttributeError,
    MissingFunctionError,
)
from shared.cesql.expression import Expression, compile_expression, matches

__all__ = [
    "CastError",
    "CesqlError",
    "CesqlParseError",
    "CesqlType",
    "Expression",
    "FunctionEvaluationError",
    "GenericError",
    "MathError",
    "MissingAttributeError",
    "MissingFunctionError",
    "Value",
    "compile_expression",
    "matches",
]
