"""Macro arguments as GNU as splits them.

GNU as separates macro arguments by commas *or* by whitespace: ``check qword ptr [x], 1`` passes
four arguments, not two. Its input scrubber first drops whitespace around some operators
(``1 + 2`` is one argument ``1+2``) but keeps it around ``-`` and ``*`` (``1 - 2`` becomes the
two arguments ``1`` and ``-2``). An argument written as a quoted string loses its quotes. Brackets
and parentheses group. Where GNU as's split is surprising (a space beside ``-`` or ``*``) the
argument is refused rather than silently cut in two.
"""
from __future__ import annotations

# Operators around which GNU as's scrubber removes whitespace (measured with binutils 2.40).
_GLUE = set("+/|&^<>=!~%")
# Operators around which it keeps whitespace, so that the space splits the argument.
_SPLITTING = set("-*")


def split_macro_args(text: str) -> list[str]:
    """The arguments of a macro call; raises ValueError for a split GNU as would make
    surprisingly (the message says how to write it)."""
    args: list[str] = []
    cur = ""
    depth = 0
    i = 0
    n = len(text)
    pending_space = False
    while i < n:
        c = text[i]
        if c in "\"'" and depth == 0 and c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            if j >= n:
                raise ValueError("unterminated string in macro argument")
            literal = text[i + 1:j]
            if pending_space and cur:
                args.append(cur)
                cur = ""
            pending_space = False
            cur += literal if not cur else text[i:j + 1]
            i = j + 1
            continue
        if c == "'" and i + 1 < n:
            # a character literal ('a) stays as written
            if pending_space and cur:
                _space_between(cur, c)
                args.append(cur)
                cur = ""
            pending_space = False
            cur += text[i:i + 2]
            i += 2
            continue
        if c.isspace():
            if depth:
                cur += c
            else:
                pending_space = True
            i += 1
            continue
        if c == "," and depth == 0:
            args.append(cur)
            cur = ""
            pending_space = False
            i += 1
            continue
        if pending_space and cur:
            left = cur[-1]
            if left in _GLUE or c in _GLUE:
                pass
            elif left in _SPLITTING or c in _SPLITTING:
                raise ValueError(f"GNU as splits the macro argument '{cur} {text[i:].split(',')[0]}' "
                                 f"at the space beside '-' or '*': write it without spaces or "
                                 f"in quotes")
            else:
                args.append(cur)
                cur = ""
        pending_space = False
        if c in "[(":
            depth += 1
        elif c in "])":
            depth -= 1
        cur += c
        i += 1
    args.append(cur)
    return args


def _space_between(left: str, right: str) -> None:
    if left[-1] in _SPLITTING or right in _SPLITTING:
        raise ValueError("GNU as splits a macro argument at a space beside '-' or '*': write it "
                         "without spaces or in quotes")
