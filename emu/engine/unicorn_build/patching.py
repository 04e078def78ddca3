"""Applies a unified diff (git diff output) to a source tree, exactly: every hunk's context and
removed lines must match the file, else the patch does not apply and the build stops. Written
here so that building the engine needs no `patch` or `git` program.

Text before the first `diff --git`/`---` line is the patch's description and is skipped.
"""
from __future__ import annotations

import re
from pathlib import Path

_HUNK = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")


class PatchError(Exception):
    """The patch does not apply to this tree; the message says where."""


def _files(text: str) -> list[tuple[str, list[list[str]]]]:
    """[(path, [hunk lines...])...]: each hunk is its body lines with their ' ', '-', '+' marks."""
    out: list[tuple[str, list[list[str]]]] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].startswith("--- ") and i + 1 < len(lines) and lines[i + 1].startswith("+++ "):
            target = lines[i + 1][4:].split("\t")[0]
            if not target.startswith("b/"):
                raise PatchError(f"unexpected target {target!r} (want git's b/ prefix)")
            out.append((target[2:], []))
            i += 2
            continue
        m = _HUNK.match(lines[i])
        if m:
            if not out:
                raise PatchError("hunk before any file header")
            old_n = int(m.group(2) or 1)
            new_n = int(m.group(4) or 1)
            body = []
            i += 1
            while (old_n > 0 or new_n > 0) and i < len(lines):
                ln = lines[i]
                if ln.startswith("\\"):     # "\ No newline at end of file"
                    i += 1
                    continue
                mark = ln[:1] or " "
                if mark not in " -+":
                    raise PatchError(f"bad hunk line {ln!r}")
                if mark in " -":
                    old_n -= 1
                if mark in " +":
                    new_n -= 1
                body.append(mark + ln[1:])
                i += 1
            out[-1][1].append(body)
            continue
        i += 1
    if not out:
        raise PatchError("no file in the patch")
    return out


def apply_patch(text: str, root: Path) -> None:
    """Applies `text` under `root`. Hunks apply in order, each at the first exact match of its
    old lines at or after the end of the previous one."""
    for rel, hunks in _files(text):
        path = root / rel
        if not path.is_file():
            raise PatchError(f"{rel}: no such file")
        src = path.read_text(encoding="utf-8", errors="surrogateescape")
        had_newline = src.endswith("\n")
        lines = src.split("\n")
        if had_newline:
            lines.pop()
        pos = 0
        for n, body in enumerate(hunks, 1):
            old = [ln[1:] for ln in body if ln[0] in " -"]
            new = [ln[1:] for ln in body if ln[0] in " +"]
            at = next((k for k in range(pos, len(lines) - len(old) + 1)
                       if lines[k:k + len(old)] == old), None)
            if at is None:
                raise PatchError(f"{rel}: hunk {n} does not apply")
            lines[at:at + len(old)] = new
            pos = at + len(new)
        path.write_text("\n".join(lines) + ("\n" if had_newline else ""), encoding="utf-8",
                        errors="surrogateescape")
