"""Tokenizer for CESQL (CESQL v1 spec, sections 2.2 "Value identifiers and literals" and 2.3 "Operators";
lexical rules as in the spec's ANTLR grammar ``CESQLLexer.g4``).

Only space, tab, CR and LF separate tokens. A *word* (``[A-Za-z0-9_]+``) is classified by the
parser: keyword, boolean literal, function name or attribute identifier. Integer literals are
unsigned here; the parser applies a leading ``+``/``-`` so that ``-2147483648`` is a literal.

String literals are delimited by ``'`` or ``"``. Inside one, ``\\`` followed by the delimiter
stands for the delimiter and a doubled delimiter (``''``, ``""``, the SQL way the grammar also
admits) stands for one; every other backslash is kept as written, so that a ``LIKE`` pattern
still sees ``\\%`` and ``\\_``.
"""

from __future__ import annotations

from typing import NamedTuple

from shared.cesql.errors import CesqlParseError

WHITESPACE = frozenset(" \t\r\n")
WORD_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")
DIGITS = frozenset("0123456789")
OPERATORS = ("!=", "<>", "<=", ">=", "=", "<", ">", "+", "-", "*", "/", "%")
PUNCTUATION = frozenset("(),")

# token kinds
WORD = "word"
INTEGER = "integer"
STRING = "string"
OPERATOR = "operator"
PUNCT = "punctuation"
END = "end of input"


class Token(NamedTuple):
    """One token: its kind, its source text, its 0-based offset, and for a string literal its value."""

    kind: str
    text: str
    pos: int
    value: str | None = None

    def describe(self) -> str:
        """How an error message names this token."""
        return END if self.kind == END else repr(self.text)


def tokenize(source: str) -> list[Token]:
    """Split ``source`` into tokens ending with an END token; raise CesqlParseError on bad input."""
    tokens: list[Token] = []
    i, n = 0, len(source)
    while i < n:
        char = source[i]
        if char in WHITESPACE:
            i += 1
        elif char in WORD_CHARS:
            start = i
            while i < n and source[i] in WORD_CHARS:
                i += 1
            text = source[start:i]
            if all(c in DIGITS for c in text):
                tokens.append(Token(INTEGER, text, start))
            else:
                tokens.append(Token(WORD, text, start))
        elif char in "'\"":
            token = _string(source, i)
            tokens.append(token)
            i += len(token.text)
        elif char in PUNCTUATION:
            tokens.append(Token(PUNCT, char, i))
            i += 1
        else:
            op = next((op for op in OPERATORS if source.startswith(op, i)), None)
            if op is None:
                raise CesqlParseError(f"unexpected character {char!r}", source, i)
            tokens.append(Token(OPERATOR, op, i))
            i += len(op)
    tokens.append(Token(END, "", n))
    return tokens


def _string(source: str, start: int) -> Token:
    quote = source[start]
    chars: list[str] = []
    i, n = start + 1, len(source)
    while i < n:
        char = source[i]
        if char == "\\" and i + 1 < n:
            following = source[i + 1]
            chars.append(following if following == quote else char + following)
            i += 2
        elif char == quote:
            if i + 1 < n and source[i + 1] == quote:
                chars.append(quote)
                i += 2
            else:
                return Token(STRING, source[start : i + 1], start, "".join(chars))
        else:
            chars.append(char)
            i += 1
    raise CesqlParseError(f"unterminated string literal (opened with {quote})", source, start)
