"""The engine's entry points: compile once, evaluate per event, and the filter predicate
(CESQL v1 spec, sections 1 "Introduction" (outputs), 1.2 "Relation to the Subscriptions API",
and 3.3 "Errors").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from shared.cesql.casting import Value
from shared.cesql.errors import CesqlError
from shared.cesql.evaluate import evaluate
from shared.cesql.nodes import Node
from shared.cesql.parser import parse


class Expression:
    """A compiled CESQL expression; immutable and safe to share between threads."""

    __slots__ = ("_root", "text")

    def __init__(self, text: str, root: Node) -> None:
        self.text = text
        self._root = root

    def evaluate(self, attributes: Mapping[str, Any]) -> tuple[Value, list[CesqlError]]:
        """Evaluate against an event's context attributes (name → value, extensions included).

        Returns the value (``bool``, ``int`` or ``str``) and the evaluation errors, an empty list
        when there were none. An expression is total: there is always a value, the zero value of
        the failing subexpression's type when an error occurred.
        """
        return evaluate(self._root, attributes)

    def __repr__(self) -> str:
        return f"Expression({self.text!r})"


def compile_expression(text: str) -> Expression:
    """Parse ``text``; raise :class:`CesqlParseError` (a ``ValueError``) on a syntax error.

    Unknown functions and wrong argument counts are not syntax errors: such a call evaluates
    to ``false`` with a MissingFunctionError, as the spec prescribes.
    """
    if not isinstance(text, str):
        raise TypeError(f"a CESQL expression is a str, not {type(text).__name__}")
    return Expression(text, parse(text))


def matches(expression: Expression, attributes: Mapping[str, Any]) -> bool:
    """The Subscriptions API / Knative Trigger ``cesql`` filter: does the event pass?

    It passes only when the expression evaluates to Boolean ``true`` without any error. A
    result that is not a Boolean does not pass (section 1.2: "If the output value is not a
    Boolean, or any errors are returned, the event MUST NOT pass the filter").
    """
    value, errors = expression.evaluate(attributes)
    return not errors and value is True
