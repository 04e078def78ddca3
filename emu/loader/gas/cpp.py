"""The C preprocessor in front of a ``.S`` source, as GNU's toolchain runs it (``gcc -c x.S``
is ``cpp -x assembler-with-cpp`` then ``as``). It runs only for a file that uses it (a
``#define``, ``#include``, ``#if``... line): elsewhere ``#`` lines are comments to GNU as, and a
machine without cpp can still assemble them. Line markers in cpp's output map every line back
to the file and line the user wrote, includes included."""
from __future__ import annotations

import re
import shutil
import subprocess

from emu.errors import AsmError

_DIRECTIVE = re.compile(
    r"^[ \t]*#[ \t]*(define|undef|include|include_next|if|ifdef|ifndef|elif|else|endif|error|"
    r"warning|pragma|line)\b", re.M)
_MARKER = re.compile(r'^#\s*(\d+)\s+"((?:\\.|[^"\\])*)"')
CPP_TIMEOUT = 60


def uses_cpp(path: str, text: str) -> int:
    """The line of the first preprocessor directive in a .S/.sx file, or 0."""
    if not path.endswith((".S", ".sx")):
        return 0
    m = _DIRECTIVE.search(text)
    return text.count("\n", 0, m.start()) + 1 if m else 0


def preprocess(path: str, text: str, include_dirs: list[str], first_line: int
               ) -> list[tuple[str, str, int]]:
    """(file, line, text) for every line cpp writes; AsmError when cpp is missing or fails."""
    cpp = shutil.which("cpp")
    if cpp is None:
        raise AsmError(path, first_line, "this file uses the C preprocessor (a # directive) "
                       "and no cpp is installed: install it (Debian: apt-get install cpp)")
    cmd = [cpp, "-x", "assembler-with-cpp", "-undef", "-D__ASSEMBLER__", "-D__x86_64__",
           *[f"-I{d}" for d in include_dirs], "-"]
    try:
        r = subprocess.run(cmd, input=text, capture_output=True, text=True,
                           timeout=CPP_TIMEOUT, cwd=None)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise AsmError(path, first_line, f"the C preprocessor failed: {e}") from None
    if r.returncode:
        # cpp names the line: "<stdin>:3:2: error: #error bad" (stdin is the file itself)
        for line in r.stderr.splitlines():
            m = re.match(r"(.*?):(\d+):(?:\d+:)?\s*(?:fatal )?error:\s*(.*)", line)
            if m:
                file = path if m.group(1) == "<stdin>" else m.group(1)
                raise AsmError(file, int(m.group(2)), m.group(3).strip())
        raise AsmError(path, first_line, "the C preprocessor failed: "
                       + (r.stderr.strip().splitlines() or ["no message"])[0])
    out: list[tuple[str, str, int]] = []
    file, line = path, 1
    for raw in r.stdout.splitlines():
        m = _MARKER.match(raw)
        if m:
            line = int(m.group(1))
            name = m.group(2)
            file = path if name == "<stdin>" else name
            continue
        out.append((file, line, raw))
        line += 1
    return out
