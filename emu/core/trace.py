"""Human-readable traces, selected by category (`--trace insn,exits,io,msr,exc,mem`).

Only `insn` and `mem` cost anything on the hot path (per-instruction and per-access hooks,
installed only when asked; `mem` is emu/tools/memtrace.py, which the caller attaches); the other categories are written from
handlers that run anyway.
"""
from __future__ import annotations

from typing import TextIO

from emu.arch.decode import decoder

from emu.errors import OptionError

CATEGORIES = ("insn", "exits", "io", "msr", "exc", "mem")


def parse_categories(spec: str) -> frozenset[str]:
    cats = {c.strip() for c in spec.split(",") if c.strip()}
    if "all" in cats:
        return frozenset(CATEGORIES)
    bad = sorted(cats - set(CATEGORIES))
    if bad:
        raise OptionError(f"unknown trace categories: {', '.join(bad)} "
                          f"(choose from {', '.join(CATEGORIES)}, all)")
    return frozenset(cats)


class Tracer:
    def __init__(self, categories: frozenset[str], out: TextIO) -> None:
        self.categories = categories
        self.out = out

    def on(self, category: str) -> bool:
        return category in self.categories

    def line(self, category: str, prefix: str, text: str) -> None:
        self.out.write(f"{category:5} {prefix} {text}\n")

    def insn(self, prefix: str, bits: int, address: int, code: bytes) -> None:
        for ins in decoder(bits).disasm(code, address, 1):
            self.out.write(f"insn  {prefix} {address:#018x}: {ins.mnemonic} {ins.op_str}\n")
            return
        self.out.write(f"insn  {prefix} {address:#018x}: (undecodable) {code.hex()}\n")

    def close(self) -> None:
        self.out.flush()
