"""Knative Trigger filters on CloudEvent attributes.

Dialects (Knative ``spec.filters``, all entries must match): ``exact``, ``prefix``, ``suffix``
(each a map attribute → value, all pairs must hold), ``all``, ``any``, ``not`` combining
nested filters, and ``cesql`` (a CloudEvents SQL expression; ``shared/cesql``). The
legacy ``spec.filter.attributes`` exact map is accepted as ``{"attributes": {...}}``; there an
empty value matches any value, even a missing attribute (Knative's ``TriggerAnyFilter``).
Otherwise a missing attribute never matches. Attribute names must match ``^[a-z][a-z0-9]*$``,
as Knative's webhook requires.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from typing import Any

_LEAF = ("exact", "prefix", "suffix", "attributes")
_NESTED = ("all", "any")
DIALECTS = _LEAF + _NESTED + ("not", "cesql")
ATTRIBUTE_NAME = re.compile(r"^[a-z][a-z0-9]*$")


@functools.lru_cache(maxsize=1024)
def _cesql(expression: str) -> Any:
    from shared.cesql import compile_expression  # the parser loads only when used

    return compile_expression(expression)


def check_filters(filters: Sequence[Mapping[str, Any]], *, top: bool = True) -> None:
    """Raise ``ValueError`` naming the first malformed filter (Knative's webhook rules)."""
    for i, flt in enumerate(filters):
        if not isinstance(flt, Mapping) or len(flt) != 1:
            raise ValueError(f"filter {i} must be a map with exactly one of {DIALECTS}")
        ((dialect, arg),) = flt.items()
        if dialect not in DIALECTS:
            raise ValueError(f"filter {i}: unknown dialect {dialect!r}; known: {DIALECTS}")
        if dialect == "attributes" and not top:
            raise ValueError(f"filter {i}: the legacy attributes filter is top-level only")
        if dialect in _LEAF:
            if not isinstance(arg, Mapping) or not arg:
                raise ValueError(f"filter {i}: {dialect} takes a non-empty map attribute → value")
            for attr, value in arg.items():
                if not isinstance(attr, str) or not ATTRIBUTE_NAME.match(attr):
                    raise ValueError(
                        f"filter {i}: {dialect}: attribute name {attr!r} must match {ATTRIBUTE_NAME.pattern}"
                    )
                if not isinstance(value, str):
                    raise ValueError(f"filter {i}: {dialect}.{attr} must be a string")
                if dialect in ("prefix", "suffix") and not value:
                    raise ValueError(f"filter {i}: {dialect}.{attr} must not be empty")
        elif dialect == "cesql":
            if not isinstance(arg, str) or not arg.strip():
                raise ValueError(f"filter {i}: cesql takes a CESQL expression string")
            try:
                _cesql(arg)
            except ValueError as exc:
                raise ValueError(f"filter {i}: cesql: {exc}") from exc
        elif dialect == "not":
            check_filters([arg], top=False)
        else:
            if not isinstance(arg, Sequence) or isinstance(arg, str | bytes) or not arg:
                raise ValueError(f"filter {i}: {dialect} takes a non-empty list of filters")
            check_filters(arg, top=False)


def _attribute(attributes: Mapping[str, Any], name: str) -> str | None:
    value = attributes.get(name)
    if value is None:
        return None
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


def _leaf(dialect: str, arg: Mapping[str, str], attributes: Mapping[str, Any]) -> bool:
    for name, expected in arg.items():
        if dialect == "attributes" and expected == "":
            continue  # the legacy filter's "any value"
        actual = _attribute(attributes, name)
        if actual is None:
            return False
        if dialect in ("exact", "attributes"):
            if actual != expected:
                return False
        elif dialect == "prefix":
            if not actual.startswith(expected):
                return False
        elif not actual.endswith(expected):
            return False
    return True


def matches(filters: Sequence[Mapping[str, Any]], attributes: Mapping[str, Any]) -> bool:
    """True when every filter matches the event's attributes (an empty list matches all)."""
    for flt in filters:
        ((dialect, arg),) = flt.items()
        if dialect in _LEAF:
            ok = _leaf(dialect, arg, attributes)
        elif dialect == "all":
            ok = matches(arg, attributes)
        elif dialect == "any":
            ok = any(matches([sub], attributes) for sub in arg)
        elif dialect == "cesql":
            from shared.cesql import matches as cesql_matches

            ok = cesql_matches(_cesql(arg), attributes)
        else:
            ok = not matches([arg], attributes)
        if not ok:
            return False
    return True
