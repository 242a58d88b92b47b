"""The syntax tree of a compiled expression (CESQL v1 spec, section 2 "Language syntax").

Nodes are immutable. Each knows its static return type (``type``): the spec returns the zero
value of that type from a subexpression that meets an error in an operand (sections 3.2 and
3.3), and assumes Boolean where the type cannot be known (a bare attribute reference, a call
of an unknown function).
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.cesql.casting import CesqlType, Value, type_of
from shared.cesql.functions import Function
from shared.cesql.like import Pattern

ARITHMETIC = frozenset({"+", "-", "*", "/", "%"})
ORDERING = frozenset({"<", "<=", ">", ">="})
EQUALITY = frozenset({"=", "!=", "<>"})
LOGIC = frozenset({"AND", "OR", "XOR"})


@dataclass(frozen=True)
class Literal:
    value: Value

    @property
    def type(self) -> CesqlType:
        return type_of(self.value)


@dataclass(frozen=True)
class Attribute:
    name: str  # lower case
    type = CesqlType.BOOLEAN


@dataclass(frozen=True)
class Exists:
    name: str  # lower case
    type = CesqlType.BOOLEAN


@dataclass(frozen=True)
class Not:
    operand: Node
    type = CesqlType.BOOLEAN


@dataclass(frozen=True)
class Negate:
    operand: Node
    type = CesqlType.INTEGER


@dataclass(frozen=True)
class Binary:
    """An arithmetic, comparison or logic operator; ``op`` as in the sets above (upper case)."""

    op: str
    left: Node
    right: Node

    @property
    def type(self) -> CesqlType:
        return CesqlType.INTEGER if self.op in ARITHMETIC else CesqlType.BOOLEAN


@dataclass(frozen=True)
class Like:
    operand: Node
    pattern: Pattern
    negated: bool
    type = CesqlType.BOOLEAN


@dataclass(frozen=True)
class In:
    operand: Node
    items: tuple[Node, ...]
    negated: bool
    type = CesqlType.BOOLEAN


@dataclass(frozen=True)
class Call:
    """A function invocation; ``function`` is None when no definition takes this many arguments."""

    name: str  # upper case
    args: tuple[Node, ...]
    function: Function | None

    @property
    def type(self) -> CesqlType:
        return CesqlType.BOOLEAN if self.function is None else self.function.returns


Node = Literal | Attribute | Exists | Not | Negate | Binary | Like | In | Call
