"""Knative Trigger filters on CloudEvent attributes.

Dialects (Knative ``spec.filters``, all entries must match): ``exact``, ``prefix``, ``suffix``
(each a map attribute → value, all pairs must hold), and ``all``, ``any``, ``not`` combining
nested filters. The legacy ``spec.filter.attributes`` exact map is accepted as
``{"attributes": {...}}``. A missing attribute never matches.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

_LEAF = ("exact", "prefix", "suffix", "attributes")
_NESTED = ("all", "any")
DIALECTS = _LEAF + _NESTED + ("not",)


def check_filters(filters: Sequence[Mapping[str, Any]]) -> None:
    """Raise ``ValueError`` naming the first malformed filter."""
    for i, flt in enumerate(filters):
        if not isinstance(flt, Mapping) or len(flt) != 1:
            raise ValueError(f"filter {i} must be a map with exactly one of {DIALECTS}")
        ((dialect, arg),) = flt.items()
        if dialect not in DIALECTS:
            raise ValueError(f"filter {i}: unknown dialect {dialect!r}; known: {DIALECTS}")
        if dialect in _LEAF:
            if not isinstance(arg, Mapping) or not arg:
                raise ValueError(f"filter {i}: {dialect} takes a non-empty map attribute → value")
            for attr, value in arg.items():
                if not isinstance(value, str):
                    raise ValueError(f"filter {i}: {dialect}.{attr} must be a string")
        elif dialect == "not":
            check_filters([arg])
        else:
            if not isinstance(arg, Sequence) or isinstance(arg, str | bytes) or not arg:
                raise ValueError(f"filter {i}: {dialect} takes a non-empty list of filters")
            check_filters(arg)


def _attribute(attributes: Mapping[str, Any], name: str) -> str | None:
    value = attributes.get(name)
    if value is None:
        return None
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


def _leaf(dialect: str, arg: Mapping[str, str], attributes: Mapping[str, Any]) -> bool:
    for name, expected in arg.items():
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
        else:
            ok = not matches([arg], attributes)
        if not ok:
            return False
    return True
