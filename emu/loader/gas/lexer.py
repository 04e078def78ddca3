"""Source text into statements as GNU as splits it: ``#`` starts a comment to the end of the
line, ``/* ... */`` comments may span lines, ``;`` separates statements on one line (it is not
a comment in GNU as: ``nop; nop`` is two instructions). String and character literals keep
all three. Every statement keeps the line it starts on."""
from __future__ import annotations


class LexError(ValueError):
    """An unterminated literal or comment; ``line`` is where it starts."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line


def statements(text: str) -> list[tuple[int, str]]:
    """(line number, statement) pairs, comments removed, empty statements dropped."""
    out: list[tuple[int, str]] = []
    in_comment = 0          # line where an open /* started, or 0
    for number, line in enumerate(text.splitlines(), 1):
        cur = ""
        quote = ""
        i = 0
        n = len(line)
        while i < n:
            c = line[i]
            if in_comment:
                end = line.find("*/", i)
                if end < 0:
                    i = n
                    break
                in_comment = 0
                cur += " "
                i = end + 2
                continue
            if quote:
                cur += c
                if c == "\\" and i + 1 < n:
                    cur += line[i + 1]
                    i += 2
                    continue
                if c == quote:
                    quote = ""
                i += 1
                continue
            if c == '"':
                quote = c
            elif c == "'":
                # a character literal: 'a' (Intel style) or GNU as's 'a
                close = i + 2 if i + 1 < n and line[i + 1] != "\\" else i + 3
                if close < n and line[close] == "'":
                    cur += line[i:close + 1]
                    i = close + 1
                    continue
                if i + 1 < n:
                    cur += line[i:i + 2]
                    i += 2
                    continue
                raise LexError(number, "unterminated string or character literal")
            elif c == "/" and i + 1 < n and line[i + 1] == "*":
                in_comment = number
                i += 2
                continue
            elif c == "#":
                break
            elif c == ";":
                if cur.strip():
                    out.append((number, cur.strip()))
                cur = ""
                i += 1
                continue
            cur += c
            i += 1
        if quote:
            raise LexError(number, "unterminated string or character literal")
        if cur.strip():
            out.append((number, cur.strip()))
    if in_comment:
        raise LexError(in_comment, "unterminated /* comment")
    return out
