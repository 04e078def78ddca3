"""Physical addresses with nothing behind them, as a PC answers them: reads return all-ones
(the bus floats high; PCI master abort), writes are dropped.

Unicorn reports an access to an unmapped physical address to the machine's unmapped-memory hook;
there `OpenBus.cover` maps the hole around it (an aligned CHUNK, clipped to the gap between
mapped regions) as an MMIO region whose reads return all-ones, and the access is retried. So
only holes a guest touches cost anything, and RAM or devices mapped later (the local APIC page
moved) first take their range back with `release`. Accesses are shown by `--trace io` (and
`--trace mem` shows them as any data access). Instruction fetches from a hole are not covered:
the run stops (executing floating-bus bytes is never what a kernel meant). QEMU 7.2 differs:
its unassigned memory reads 0.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from unicorn import UcError

if TYPE_CHECKING:
    from emu.core.board import Board

CHUNK = 1 << 20
PAGE = 0x1000


class OpenBus:
    def __init__(self, machine: "Board") -> None:
        self.m = machine
        self.regions: dict[int, int] = {}       # base -> size of the holes mapped so far

    def cover(self, address: int) -> bool:
        """Map the hole around `address` (False: it cannot be mapped)."""
        lo, hi = 0, 1 << 52
        for begin, end, _perms in self.m.uc.mem_regions():
            if begin <= address <= end:
                return False
            if end < address:
                lo = max(lo, end + 1)
            elif begin > address:
                hi = min(hi, begin)
        base = max(lo, address & ~(CHUNK - 1))
        top = min(hi, (address & ~(CHUNK - 1)) + CHUNK)
        base = (base + PAGE - 1) & ~(PAGE - 1)
        top &= ~(PAGE - 1)
        if not base <= address < top:
            return False
        try:
            self.m.uc.mmio_map(base, top - base, self._read, base, self._write, base)
        except UcError:
            return False
        self.regions[base] = top - base
        return True

    def covers(self, address: int) -> bool:
        """Is `address` in a hole mapped so far?"""
        return any(b <= address < b + n for b, n in self.regions.items())

    def release(self, base: int, size: int) -> None:
        """Unmap the holes overlapping [base, base + size), for something real to go there."""
        for start, length in list(self.regions.items()):
            if start < base + size and base < start + length:
                self.m.uc.mem_unmap(start, length)
                del self.regions[start]

    def _trace(self, what: str) -> None:
        t = self.m.tracer
        if t is not None and t.on("io"):
            t.line("io", self.m.where(), what)

    def _read(self, uc, offset: int, size: int, base: int) -> int:
        self.m.replay_sync()
        value = (1 << (8 * size)) - 1
        self._trace(f"open bus read phys {base + offset:#x} size {size} value {value:#x} "
                    "(nothing there)")
        return value

    def _write(self, uc, offset: int, size: int, value: int, base: int) -> None:
        self.m.replay_sync()
        self._trace(f"open bus write phys {base + offset:#x} size {size} value {value:#x} "
                    "dropped (nothing there)")
