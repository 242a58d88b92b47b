"""Built-in functions (CESQL v1 spec, section 3.5 "Functions": 3.5.1 string manipulation,
3.5.2 math, 3.5.3 function errors).

A function is looked up by upper-cased name and arity; a name may have one definition per
arity plus one variadic definition whose fixed parameters outnumber every other arity. Each
implementation gets arguments already cast to its parameter types and returns a value of its
return type plus, when it rejects its input, the error the spec gives it.

Besides the spec's tables this registers the casting functions ``INT``, ``BOOL`` and
``STRING`` (the spec's own examples and the TCK's ``casting_functions.yaml`` use them) and the
predicates ``IS_INT`` and ``IS_BOOL`` (from the pre-v1 drafts): their parameter takes any type
and they apply the casts of section 3.7 explicitly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from shared.cesql.casting import INT_MAX, INT_MIN, CesqlType, Value, cast
from shared.cesql.errors import CesqlError, FunctionEvaluationError, MathError

BOOLEAN, INTEGER, STRING = CesqlType.BOOLEAN, CesqlType.INTEGER, CesqlType.STRING
Outcome = tuple[Value, CesqlError | None]
# Unicode White_Space characters (TRIM removes these and nothing else, not e.g. control characters)
UNICODE_WHITESPACE = "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"


@dataclass(frozen=True)
class Function:
    """A definition: ``params`` are the fixed parameter types (None: any type, not cast), and
    ``variadic`` the type of any further arguments (None: the arity is fixed)."""

    name: str
    params: tuple[CesqlType | None, ...]
    returns: CesqlType
    impl: Callable[[list[Value]], Outcome]
    variadic: CesqlType | None = None

    def param_type(self, index: int) -> CesqlType | None:
        """The type argument ``index`` is cast to (None: left as it is)."""
        return self.params[index] if index < len(self.params) else self.variadic


def _ok(value: Value) -> Outcome:
    return value, None


def _left(args: list[Value]) -> Outcome:
    text, count = str(args[0]), int(args[1])
    if count < 0:
        return text, FunctionEvaluationError(f"LEFT: length {count} is negative")
    return text[:count], None


def _right(args: list[Value]) -> Outcome:
    text, count = str(args[0]), int(args[1])
    if count < 0:
        return text, FunctionEvaluationError(f"RIGHT: length {count} is negative")
    return (text if count >= len(text) else text[len(text) - count :]), None


def _substring(args: list[Value]) -> Outcome:
    text, pos = str(args[0]), int(args[1])
    length = int(args[2]) if len(args) > 2 else None
    if pos > len(text) or pos < -len(text):
        return "", FunctionEvaluationError(f"SUBSTRING: position {pos} is outside a string of {len(text)}")
    if length is not None and length < 0:
        return "", FunctionEvaluationError(f"SUBSTRING: length {length} is negative")
    if pos == 0:
        return "", None
    start = pos - 1 if pos > 0 else len(text) + pos
    return (text[start:] if length is None else text[start : start + length]), None


def _abs(args: list[Value]) -> Outcome:
    number = int(args[0])
    if number == INT_MIN:
        return INT_MAX, MathError(f"ABS({INT_MIN}) overflows a 32-bit integer")
    return abs(number), None


def _concat_ws(args: list[Value]) -> Outcome:
    return str(args[0]).join(str(a) for a in args[1:]), None


def _cast_to(target: CesqlType) -> Callable[[list[Value]], Outcome]:
    def impl(args: list[Value]) -> Outcome:
        return cast(args[0], target)

    return impl


def _can_cast_to(target: CesqlType) -> Callable[[list[Value]], Outcome]:
    def impl(args: list[Value]) -> Outcome:
        return cast(args[0], target)[1] is None, None

    return impl


BUILTINS: tuple[Function, ...] = (
    Function("LENGTH", (STRING,), INTEGER, lambda a: _ok(len(str(a[0])))),
    Function("CONCAT", (), STRING, lambda a: _ok("".join(str(x) for x in a)), variadic=STRING),
    Function("CONCAT_WS", (STRING,), STRING, _concat_ws, variadic=STRING),
    Function("LOWER", (STRING,), STRING, lambda a: _ok(str(a[0]).lower())),
    Function("UPPER", (STRING,), STRING, lambda a: _ok(str(a[0]).upper())),
    Function("TRIM", (STRING,), STRING, lambda a: _ok(str(a[0]).strip(UNICODE_WHITESPACE))),
    Function("LEFT", (STRING, INTEGER), STRING, _left),
    Function("RIGHT", (STRING, INTEGER), STRING, _right),
    Function("SUBSTRING", (STRING, INTEGER), STRING, _substring),
    Function("SUBSTRING", (STRING, INTEGER, INTEGER), STRING, _substring),
    Function("ABS", (INTEGER,), INTEGER, _abs),
    Function("INT", (None,), INTEGER, _cast_to(INTEGER)),
    Function("BOOL", (None,), BOOLEAN, _cast_to(BOOLEAN)),
    Function("STRING", (None,), STRING, _cast_to(STRING)),
    Function("IS_INT", (None,), BOOLEAN, _can_cast_to(INTEGER)),
    Function("IS_BOOL", (None,), BOOLEAN, _can_cast_to(BOOLEAN)),
)
_FIXED = {(f.name, len(f.params)): f for f in BUILTINS if f.variadic is None}
_VARIADIC = {f.name: f for f in BUILTINS if f.variadic is not None}


def resolve(name: str, arity: int) -> Function | None:
    """The definition of ``name`` (any case) that takes ``arity`` arguments, if there is one."""
    key = name.upper()
    fixed = _FIXED.get((key, arity))
    if fixed is not None:
        return fixed
    variadic = _VARIADIC.get(key)
    if variadic is not None and arity >= len(variadic.params):
        return variadic
    return None
