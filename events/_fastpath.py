"""A conservative compiled pre-check for the hot path of :func:`events.validate_data`.

``compile_check(schema)`` turns a schema that uses only the keywords below into a closure that
returns ``True`` only when jsonschema would surely accept the instance. ``False`` means "not sure":
the caller then runs jsonschema, which stays the authority (and produces the error). Schemas with
any other keyword are not compiled (``None``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["Check", "compile_check"]

Check = Callable[[object], bool]

_ANNOTATIONS = frozenset({"$schema", "$id", "$comment", "title", "description", "default", "examples"})
_KEYWORDS = frozenset(
    {
        "type",
        "enum",
        "minimum",
        "maximum",
        "minLength",
        "maxLength",
        "pattern",
        "format",
        "required",
        "properties",
        "additionalProperties",
        "minProperties",
        "items",
        "minItems",
        "maxItems",
        "uniqueItems",
    }
)


class _Unsupported(Exception):
    pass


_PLAIN = frozenset({str, int, float, bool, type(None), dict, list})

# Exact types only: subclasses, Decimal, NaN and the like are left to jsonschema.
_TYPES: dict[str, Check] = {
    "string": lambda x: type(x) is str,
    "integer": lambda x: type(x) is int,
    "number": lambda x: type(x) is int or (type(x) is float and math.isfinite(x)),  # type: ignore[arg-type]
    "boolean": lambda x: type(x) is bool,
    "null": lambda x: x is None,
    "object": lambda x: type(x) is dict,
    "array": lambda x: type(x) is list,
}


def compile_check(schema: Mapping[str, Any] | bool, formats: Mapping[str, Check]) -> Check | None:
    """A sound-for-acceptance checker for ``schema``, or ``None`` if it uses unsupported keywords."""
    try:
        return _compile(schema, formats)
    except _Unsupported:
        return None


def _all(checks: list[Check]) -> Check:
    if len(checks) == 1:
        only = checks[0]
        return lambda x: type(x) in _PLAIN and only(x)
    return lambda x: type(x) in _PLAIN and all(check(x) for check in checks)


def _compile(schema: Mapping[str, Any] | bool, formats: Mapping[str, Check]) -> Check:
    if schema is True:
        return lambda x: type(x) in _PLAIN
    if schema is False:
        return lambda x: False
    if not isinstance(schema, Mapping) or set(schema) - _ANNOTATIONS - _KEYWORDS:
        raise _Unsupported
    checks: list[Check] = []
    if "type" in schema:
        names = [schema["type"]] if isinstance(schema["type"], str) else list(schema["type"])
        if any(name not in _TYPES for name in names):
            raise _Unsupported
        preds = [_TYPES[name] for name in names]
        checks.append(preds[0] if len(preds) == 1 else lambda x: any(p(x) for p in preds))
    if "enum" in schema:
        checks.append(_enum(schema["enum"]))
    checks += _number_checks(schema) + _string_checks(schema, formats)
    checks += _object_checks(schema, formats) + _array_checks(schema, formats)
    return _all(checks)


def _enum(values: list[Any]) -> Check:
    if any(type(v) not in (str, int) and v is not None for v in values):
        raise _Unsupported
    allowed = frozenset(values)
    return lambda x: (x is None or type(x) in (str, int)) and x in allowed


def _number_checks(schema: Mapping[str, Any]) -> list[Check]:
    checks: list[Check] = []
    if "minimum" in schema:
        low = schema["minimum"]
        checks.append(lambda x: type(x) not in (int, float) or x >= low)  # type: ignore[operator]
    if "maximum" in schema:
        high = schema["maximum"]
        checks.append(lambda x: type(x) not in (int, float) or x <= high)  # type: ignore[operator]
    return checks


def _string_checks(schema: Mapping[str, Any], formats: Mapping[str, Check]) -> list[Check]:
    checks: list[Check] = []
    if "minLength" in schema:
        low = schema["minLength"]
        checks.append(lambda x: type(x) is not str or len(x) >= low)
    if "maxLength" in schema:
        high = schema["maxLength"]
        checks.append(lambda x: type(x) is not str or len(x) <= high)
    if "pattern" in schema:
        search = re.compile(schema["pattern"]).search
        checks.append(lambda x: type(x) is not str or search(x) is not None)
    fmt = formats.get(schema.get("format", ""))
    if fmt is not None:
        checks.append(lambda x: type(x) is not str or _safe(fmt, x))
    return checks


def _safe(check: Check, x: object) -> bool:
    try:
        return check(x)
    except ValueError:
        return False


def _object_checks(schema: Mapping[str, Any], formats: Mapping[str, Check]) -> list[Check]:
    if not ({"required", "properties", "additionalProperties", "minProperties"} & set(schema)):
        return []
    required = tuple(schema.get("required", ()))
    props = {name: _compile(sub, formats) for name, sub in schema.get("properties", {}).items()}
    extra = _compile(schema.get("additionalProperties", True), formats)
    min_props = schema.get("minProperties", 0)

    def check(x: object) -> bool:
        if type(x) is not dict:
            return True
        if len(x) < min_props:
            return False
        for name in required:
            if name not in x:
                return False
        return all(props.get(name, extra)(value) for name, value in x.items())

    return [check]


def _array_checks(schema: Mapping[str, Any], formats: Mapping[str, Check]) -> list[Check]:
    if not ({"items", "minItems", "maxItems", "uniqueItems"} & set(schema)):
        return []
    item = _compile(schema.get("items", True), formats)
    low, high = schema.get("minItems", 0), schema.get("maxItems", math.inf)
    unique = schema.get("uniqueItems", False)

    def check(x: object) -> bool:
        if type(x) is not list:
            return True
        if not low <= len(x) <= high:
            return False
        if unique and not (all(type(v) is str for v in x) and len(set(x)) == len(x)):
            return False  # only str items are checked here; anything else goes to jsonschema
        return all(item(v) for v in x)

    return [check]
