"""Recursive-descent parser for CESQL (CESQL v1 spec, section 2 "Language syntax" and the
precedence of section 3.6 "Evaluation of the expression").

From loosest to tightest binding::

    AND OR XOR                      (one level, left to right)
    = != <> >= <= > <
    + -
    * / %
    [NOT] LIKE 'pattern', [NOT] IN (set)    (postfix)
    NOT x, -x                       (prefix)
    f(args), EXISTS name, (expression), literal, attribute

Operators of equal precedence associate to the left, as section 3.6 requires ("evaluated left
to right when the precedence is equal"); so ``a AND b OR c`` is ``(a AND b) OR c``. (The spec's
ANTLR grammar, and the Go SDK built from it, group the logic operators to the right.)
Keywords, boolean literals and function names are case-insensitive; attribute names are
lower-cased, as CloudEvents attribute names are lower case.
"""

from __future__ import annotations

import re

from shared.cesql import functions
from shared.cesql.casting import in_int32
from shared.cesql.errors import CesqlParseError
from shared.cesql.lexer import END, INTEGER, OPERATOR, PUNCT, STRING, WORD, Token, tokenize
from shared.cesql.like import compile_pattern
from shared.cesql.nodes import (
    EQUALITY,
    ORDERING,
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

KEYWORDS = frozenset({"AND", "OR", "XOR", "NOT", "LIKE", "IN", "EXISTS", "TRUE", "FALSE"})
FUNCTION_NAME = re.compile(r"[A-Za-z][A-Za-z_]*")
ATTRIBUTE_NAME = re.compile(r"[A-Za-z0-9]+")
MAX_NESTING = 32  # parentheses, argument lists and prefix operators inside one another
MAX_DEPTH = 128  # levels of the syntax tree (evaluation takes about 3 stack frames per level)


def parse(source: str) -> Node:
    """Parse a whole expression into its syntax tree; raise CesqlParseError on a syntax error."""
    parser = _Parser(source)
    node = parser.expression()
    parser.expect_end()
    if _depth(node) > MAX_DEPTH:
        raise CesqlParseError(f"expression is nested more than {MAX_DEPTH} levels deep", source, 0)
    return node


class _Parser:
    def __init__(self, source: str) -> None:
        self.source = source
        self.tokens = tokenize(source)
        self.i = 0
        self.nesting = 0

    # token helpers

    def peek(self, ahead: int = 0) -> Token:
        return self.tokens[min(self.i + ahead, len(self.tokens) - 1)]

    def advance(self) -> Token:
        token = self.peek()
        self.i += 1
        return token

    def is_keyword(self, word: str, ahead: int = 0) -> bool:
        token = self.peek(ahead)
        return token.kind == WORD and token.text.upper() == word

    def is_op(self, text: str, ahead: int = 0) -> bool:
        token = self.peek(ahead)
        return token.kind in (OPERATOR, PUNCT) and token.text == text

    def error(self, message: str, token: Token | None = None) -> CesqlParseError:
        return CesqlParseError(message, self.source, (token or self.peek()).pos)

    def expect(self, text: str, context: str) -> Token:
        if not self.is_op(text):
            raise self.error(f"expected {text!r} {context}, found {self.peek().describe()}")
        return self.advance()

    def expect_end(self) -> None:
        if self.peek().kind != END:
            raise self.error(f"unexpected {self.peek().describe()} after a complete expression")

    def enter(self, opener: Token) -> None:
        self.nesting += 1
        if self.nesting > MAX_NESTING:
            raise self.error(f"expression is nested more than {MAX_NESTING} levels deep", opener)

    # grammar, loosest binding first

    def expression(self) -> Node:
        node = self.comparison()
        while self.peek().kind == WORD and self.peek().text.upper() in ("AND", "OR", "XOR"):
            op = self.advance().text.upper()
            node = Binary(op, node, self.comparison())
        return node

    def comparison(self) -> Node:
        node = self.additive()
        while self.peek().kind == OPERATOR and self.peek().text in EQUALITY | ORDERING:
            op = self.advance().text
            node = Binary(op, node, self.additive())
        return node

    def additive(self) -> Node:
        node = self.multiplicative()
        while self.is_op("+") or self.is_op("-"):
            op = self.advance().text
            node = Binary(op, node, self.multiplicative())
        return node

    def multiplicative(self) -> Node:
        node = self.postfix()
        while self.is_op("*") or self.is_op("/") or self.is_op("%"):
            op = self.advance().text
            node = Binary(op, node, self.postfix())
        return node

    def postfix(self) -> Node:
        node = self.unary()
        while True:
            negated = self.is_keyword("NOT") and (self.is_keyword("LIKE", 1) or self.is_keyword("IN", 1))
            if negated:
                self.advance()
            if self.is_keyword("LIKE"):
                self.advance()
                pattern = self.peek()
                if pattern.kind != STRING:
                    raise self.error(f"LIKE takes a string literal pattern, found {pattern.describe()}")
                self.advance()
                node = Like(node, compile_pattern(str(pattern.value)), negated)
            elif self.is_keyword("IN"):
                self.advance()
                node = In(node, self.arguments("IN", allow_empty=False), negated)
            else:
                return node

    def unary(self) -> Node:
        token = self.peek()
        if self.is_keyword("NOT") or self.is_op("-") or self.is_op("+"):
            after = self.peek(1)
            if token.text in ("+", "-") and after.kind == INTEGER and after.pos == token.pos + 1:
                self.i += 2  # a signed integer literal, e.g. -2147483648
                return self.integer(token, -int(after.text) if token.text == "-" else int(after.text))
            if token.text == "+":
                raise self.error("'+' is only allowed as the sign of an integer literal")
            self.enter(self.advance())
            operand = self.unary()
            self.nesting -= 1
            return Not(operand) if token.kind == WORD else Negate(operand)
        return self.primary()

    def primary(self) -> Node:
        token = self.advance()
        if token.kind == INTEGER:
            return self.integer(token, int(token.text))
        if token.kind == STRING:
            return Literal(str(token.value))
        if token.kind == PUNCT and token.text == "(":
            self.enter(token)
            node = self.expression()
            self.expect(")", "to close '('")
            self.nesting -= 1
            return node
        if token.kind != WORD:
            raise self.error(f"expected a value, found {token.describe()}", token)
        word = token.text.upper()
        if word in ("TRUE", "FALSE"):
            return Literal(word == "TRUE")
        if word == "EXISTS":
            name = self.advance()
            return Exists(self.attribute_name(name, "EXISTS takes an attribute name"))
        if word in KEYWORDS:
            raise self.error(f"expected a value, found the keyword {token.text!r}", token)
        if self.is_op("("):
            if not FUNCTION_NAME.fullmatch(token.text):
                raise self.error(f"{token.text!r} is not a valid function name", token)
            args = self.arguments(word, allow_empty=True)
            return Call(word, args, functions.resolve(word, len(args)))
        return Attribute(self.attribute_name(token, "expected a value"))

    # pieces

    def integer(self, token: Token, value: int) -> Literal:
        if not in_int32(value):
            raise self.error(f"integer literal {value} is outside the signed 32-bit range", token)
        return Literal(value)

    def attribute_name(self, token: Token, context: str) -> str:
        if token.kind != WORD or token.text.upper() in KEYWORDS or not ATTRIBUTE_NAME.fullmatch(token.text):
            raise self.error(f"{context}: {token.describe()} is not an attribute name", token)
        return token.text.lower()

    def arguments(self, owner: str, *, allow_empty: bool) -> tuple[Node, ...]:
        self.enter(self.expect("(", f"after {owner}"))
        items: list[Node] = []
        if not (allow_empty and self.is_op(")")):
            items.append(self.expression())
            while self.is_op(","):
                self.advance()
                items.append(self.expression())
        self.expect(")", f"to close the list after {owner}")
        self.nesting -= 1
        return tuple(items)


def _depth(root: Node) -> int:
    """The number of levels of the tree, found without recursion."""
    deepest, stack = 0, [(root, 1)]
    while stack:
        node, level = stack.pop()
        deepest = max(deepest, level)
        children: tuple[Node, ...] = ()
        if isinstance(node, Not | Negate | Like):
            children = (node.operand,)
        elif isinstance(node, Binary):
            children = (node.left, node.right)
        elif isinstance(node, In):
            children = (node.operand, *node.items)
        elif isinstance(node, Call):
            children = node.args
        stack.extend((child, level + 1) for child in children)
    return deepest
