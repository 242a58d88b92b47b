"""CESQL error types (CESQL v1 spec, section 3.3 "Errors").

Every engine must report seven kinds of error. Evaluation errors are *returned* next to a
value (an expression is total: it always yields a value), so they are exception classes only
so that a caller may raise them; :class:`CesqlParseError` is raised by
:func:`~shared.cesql.compile_expression`. ``kind`` is the name the CESQL TCK uses for
the error (``parse``, ``math``, ``cast``, ``missingFunction``, ``functionEvaluation``,
``missingAttribute``, ``generic``).
"""

from __future__ import annotations

from typing import ClassVar


class CesqlError(Exception):
    """Base of every CESQL error; ``kind`` names the spec's error type as the TCK spells it."""

    kind: ClassVar[str] = "generic"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"


class GenericError(CesqlError):
    """Any error the spec names no other type for."""

    kind = "generic"


class MathError(CesqlError):
    """Division or modulo by zero, or an Integer result outside the signed 32-bit range."""

    kind = "math"


class CastError(CesqlError):
    """An implicit or explicit cast that is undefined for the value (e.g. ``'abc'`` to Integer)."""

    kind = "cast"


class MissingAttributeError(CesqlError):
    """The expression addresses an attribute the event does not have."""

    kind = "missingAttribute"

    def __init__(self, attribute: str) -> None:
        super().__init__(f"missing attribute {attribute!r}")
        self.attribute = attribute


class MissingFunctionError(CesqlError):
    """No function of this name takes this number of arguments."""

    kind = "missingFunction"

    def __init__(self, name: str, arity: int) -> None:
        super().__init__(f"no function {name} taking {arity} argument{'' if arity == 1 else 's'}")
        self.name = name
        self.arity = arity


class FunctionEvaluationError(CesqlError):
    """A function rejected its (well-typed) arguments, e.g. ``LEFT('abc', -1)``."""

    kind = "functionEvaluation"


class CesqlParseError(CesqlError, ValueError):
    """A syntax error; ``position`` is the 0-based offset into ``expression`` where it was found."""

    kind = "parse"

    def __init__(self, message: str, expression: str, position: int) -> None:
        line = expression.count("\n", 0, position) + 1
        column = position - (expression.rfind("\n", 0, position) + 1) + 1
        where = f"column {column}" if line == 1 else f"line {line}, column {column}"
        super().__init__(f"CESQL syntax error at {where}: {message}")
        self.reason = message
        self.expression = expression
        self.position = position
