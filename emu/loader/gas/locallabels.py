"""GNU as numeric local labels: ``1:`` may be defined any number of times; ``1b`` names the
nearest definition before the reference and ``1f`` the nearest after it. Each definition gets
a unique name and each reference is resolved to one, in statement order."""
from __future__ import annotations

import re

PREFIX = "__svmemu_num"
_REF = re.compile(r"(?<![\w.$])(\d+)([bfBF])(?![\w.$])")
_LITERAL = re.compile(r"\"(\\.|[^\"\\])*\"|'(\\.|[^'\\])")


def definition_name(number: str, ordinal: int) -> str:
    return f"{PREFIX}{int(number)}_{ordinal}"


def is_internal(name: str) -> bool:
    return name.startswith(PREFIX)


def shown(name: str) -> str:
    """The name as the user wrote it (for symbol tables and messages)."""
    if not name.startswith(PREFIX):
        return name
    return name[len(PREFIX):].split("_")[0]


class LocalLabels:
    """Counts definitions of each number while statements stream by."""

    def __init__(self, total: dict[str, int]) -> None:
        self.total = total           # definitions of each number in the whole source
        self.seen: dict[str, int] = {}

    def define(self, number: str) -> str:
        key = str(int(number))
        k = self.seen.get(key, 0)
        self.seen[key] = k + 1
        return definition_name(key, k)

    def rewrite(self, text: str) -> tuple[str, str | None]:
        """The text with ``Nb``/``Nf`` replaced (outside string literals); the second value is
        an error message for a reference that has no definition in that direction."""
        problem: list[str] = []

        def sub(m: re.Match[str]) -> str:
            key = str(int(m.group(1)))
            seen = self.seen.get(key, 0)
            if m.group(2).lower() == "b":
                if seen == 0:
                    problem.append(f"no local label {key}: before {m.group(0)}")
                    return m.group(0)
                return definition_name(key, seen - 1)
            if seen >= self.total.get(key, 0):
                problem.append(f"no local label {key}: after {m.group(0)}")
                return m.group(0)
            return definition_name(key, seen)

        out = []
        pos = 0
        for lit in _LITERAL.finditer(text):
            out.append(_REF.sub(sub, text[pos:lit.start()]))
            out.append(lit.group(0))
            pos = lit.end()
        out.append(_REF.sub(sub, text[pos:]))
        return "".join(out), (problem[0] if problem else None)
