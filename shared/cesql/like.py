"""``LIKE`` patterns (CESQL v1 spec, section 3.4.3 "Like operator").

``%`` matches any run of characters (also none), ``_`` exactly one character, and ``\\%`` or
``\\_`` the literal ``%`` or ``_``. Every other character, a backslash before anything else
included, matches itself, case-sensitively. A pattern is compiled once, when the expression
is; matching backtracks only to the last ``%``, so it takes at most len(value) x len(pattern)
steps whatever the pattern (no regular expression, hence no catastrophic backtracking).
"""

from __future__ import annotations

ANY_RUN = 0  # %
ANY_ONE = 1  # _
Pattern = tuple[str | int, ...]  # a literal character (str), ANY_RUN or ANY_ONE (int: never equal to a str)


def compile_pattern(pattern: str) -> Pattern:
    """Split a LIKE pattern into literal characters and wildcards."""
    items: list[str | int] = []
    i, n = 0, len(pattern)
    while i < n:
        char = pattern[i]
        if char == "\\" and i + 1 < n and pattern[i + 1] in "%_":
            items.append(pattern[i + 1])
            i += 2
            continue
        items.append(ANY_RUN if char == "%" else ANY_ONE if char == "_" else char)
        i += 1
    return tuple(items)


def like(value: str, pattern: Pattern) -> bool:
    """True when the whole of ``value`` matches the compiled pattern."""
    v = p = 0
    star = -1  # index in pattern of the last % seen
    resume = 0  # index in value that % is currently taken to end at
    while v < len(value):
        item = pattern[p] if p < len(pattern) else None
        if item == ANY_RUN:
            star, resume = p, v
            p += 1
        elif item == ANY_ONE or item == value[v]:
            v += 1
            p += 1
        elif star >= 0:
            resume += 1
            v, p = resume, star + 1
        else:
            return False
    return all(item == ANY_RUN for item in pattern[p:])
