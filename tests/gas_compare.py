"""Running the statement corpus through svmemu's assembler and GNU as and comparing, slot by
slot (tests/gas_corpus.py puts each statement in its own 16-byte slot)."""
from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from emu.errors import AsmError
from emu.loader.asm import assemble_text
from tests.gas_corpus import PREAMBLE, source
from tests.gnu_as import GnuAsError, gnu_image


@dataclass
class Outcome:
    same: list[str] = field(default_factory=list)
    different: list[tuple[str, str, str]] = field(default_factory=list)   # stmt, ours, theirs
    refused_by_us: list[tuple[str, str]] = field(default_factory=list)    # stmt, message
    refused_by_gnu: list[str] = field(default_factory=list)
    accepted_only_by_us: list[str] = field(default_factory=list)


def _gnu_rejects(statements: list[str], bits: int, workdir: Path) -> set[int]:
    """Indexes of the statements GNU as refuses (it names each by line)."""
    src = source(statements, bits)
    (workdir / "probe.S").write_text(src)
    r = subprocess.run(["as", f"--{bits}" if bits == 64 else "--64", "-o", str(workdir / "probe.o"),
                        str(workdir / "probe.S")], capture_output=True, text=True, timeout=300)
    first = PREAMBLE.count("\n") + (1 if bits == 32 else 0) + 1
    bad = set()
    for m in re.finditer(r"probe\.S:(\d+): Error", r.stderr):
        line = int(m.group(1))
        k = (line - first) // 2
        if (line - first) % 2 == 1 and 0 <= k < len(statements):
            bad.add(k)
    return bad


def compare(statements: list[str], bits: int, workdir: Path) -> Outcome:
    out = Outcome()
    ours_ok = []
    for st in statements:
        try:
            assemble_text(source([st], bits), "corpus.S", [])
        except AsmError as e:
            out.refused_by_us.append((st, str(e)))
            continue
        ours_ok.append(st)
    rejected = _gnu_rejects(ours_ok, bits, workdir)
    out.accepted_only_by_us = [s for k, s in enumerate(ours_ok) if k in rejected]
    both = [s for k, s in enumerate(ours_ok) if k not in rejected]
    refused_ours = {s for s, _ in out.refused_by_us}
    gnu_bad = _gnu_rejects(sorted(refused_ours), bits, workdir)
    out.refused_by_gnu = [s for k, s in enumerate(sorted(refused_ours)) if k in gnu_bad]
    src = source(both, bits)
    ours = assemble_text(src, "corpus.S", []).image
    try:
        theirs = gnu_image(src, workdir, [])
    except GnuAsError as e:
        raise AssertionError(f"GNU as refused the joint corpus: {e}") from None
    for k, st in enumerate(both):
        a, b = ours[16 * k: 16 * k + 16], theirs[16 * k: 16 * k + 16]
        if a == b:
            out.same.append(st)
        else:
            out.different.append((st, a.hex(), b.hex()))
    return out
