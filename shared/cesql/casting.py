"""The CESQL type system and its casts (CESQL v1 spec, sections 3.1 "Type system" and 3.7 "Type casting").

Values are plain Python objects: ``bool`` is Boolean, ``int`` (within the signed 32-bit range)
is Integer, ``str`` is String. Because ``bool`` is a subclass of ``int`` in Python, the type of
a value is always asked of :func:`type_of`, never with ``isinstance(value, int)``.
"""

from __future__ import annotations

import enum
import re

from shared.cesql.errors import CastError

Value = bool | int | str

INT_MIN = -(2**31)
INT_MAX = 2**31 - 1
_DECIMAL = re.compile(r"[+-]?[0-9]+", re.ASCII)


class CesqlType(enum.Enum):
    """The three primitive types (section 3.1)."""

    BOOLEAN = "Boolean"
    INTEGER = "Integer"
    STRING = "String"

    @property
    def zero(self) -> Value:
        """The type's zero value: ``false``, ``0`` or ``""``."""
        return _ZERO[self]


_ZERO: dict[CesqlType, Value] = {CesqlType.BOOLEAN: False, CesqlType.INTEGER: 0, CesqlType.STRING: ""}


def type_of(value: Value) -> CesqlType:
    """The CESQL type of a value produced by the evaluator."""
    if type(value) is bool:
        return CesqlType.BOOLEAN
    if type(value) is int:
        return CesqlType.INTEGER
    return CesqlType.STRING


def in_int32(number: int) -> bool:
    """True when ``number`` is a valid CESQL Integer."""
    return INT_MIN <= number <= INT_MAX


def to_string(value: Value) -> str:
    """Boolean and Integer to String; always defined."""
    if type(value) is bool:
        return "true" if value else "false"
    return str(value)


def cast(value: Value, target: CesqlType) -> tuple[Value, CastError | None]:
    """Cast ``value`` to ``target`` (section 3.7): the result, or the zero value and a CastError."""
    source = type_of(value)
    if source is target:
        return value, None
    if target is CesqlType.STRING:
        return to_string(value), None
    if target is CesqlType.INTEGER:
        if source is CesqlType.BOOLEAN:
            return (1 if value else 0), None
        text = str(value)
        if not _DECIMAL.fullmatch(text):
            return 0, CastError(f"cannot cast String {text!r} to Integer: not a base-10 integer")
        number = int(text)
        if not in_int32(number):
            return 0, CastError(f"cannot cast String {text!r} to Integer: outside the 32-bit range")
        return number, None
    # target is Boolean
    if source is CesqlType.INTEGER:
        return value != 0, None
    lowered = str(value).lower()
    if lowered in ("true", "false"):
        return lowered == "true", None
    return False, CastError(f"cannot cast String {value!r} to Boolean: not 'true' or 'false'")
