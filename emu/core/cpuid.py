"""The CPU identity svmemu reports.

The base table was read off unicorn 2.1.4's EPYC model (so every feature bit it sets is one the
translator really implements), then trimmed to what this machine models: no hypervisor bit (L1
runs "on bare metal"), no local APIC bits until the APIC device sets them (emu/core/irq.py), and no SVM until an extension
adds it. Leaves not listed read as zeros, as on AMD parts.
"""
from __future__ import annotations

from typing import Callable

Regs = tuple[int, int, int, int]   # eax, ebx, ecx, edx

CPUID_1_ECX_HYPERVISOR = 1 << 31
CPUID_1_EDX_APIC = 1 << 9
CPUID_1_ECX_X2APIC = 1 << 21
CPUID_80000001_ECX_SVM = 1 << 2
LEAF_SVM_FEATURES = 0x8000000A

_EPYC: dict[tuple[int, int], Regs] = {
    (0x0, 0): (0x0000000D, 0x68747541, 0x444D4163, 0x69746E65),      # AuthenticAMD
    (0x1, 0): (0x00800F12, 0x00000800, 0xCED8220B, 0x078BFBFD),
    (0x7, 0): (0x00000000, 0x00980189, 0x00000000, 0x00000000),
    (0xD, 0): (0x00000007, 0x00000240, 0x00000340, 0x00000000),
    (0xD, 1): (0x00000005, 0x00000000, 0x00000000, 0x00000000),
    (0x80000000, 0): (0x80000008, 0x68747541, 0x444D4163, 0x69746E65),
    (0x80000001, 0): (0x00800F12, 0x00000000, 0x00000075, 0x2DD3FBFD),
    (0x80000002, 0): (0x6D657673, 0x50207565, 0x20205043, 0x20202020),  # "svmemu PC"
    (0x80000003, 0): (0x20202020, 0x20202020, 0x20202020, 0x20202020),
    (0x80000004, 0): (0x20202020, 0x20202020, 0x20202020, 0x00202020),
    (0x80000005, 0): (0x01FF01FF, 0x01FF01FF, 0x20080140, 0x40040140),
    (0x80000006, 0): (0x00000000, 0x42004200, 0x02006140, 0x00000000),
    (0x80000007, 0): (0, 0, 0, 0),
    (0x80000008, 0): (0x00003028, 0x00000000, 0x00000000, 0x00000000),  # 48-bit VA, 40-bit PA
}
_SUBLEAF_INDEXED = {0x7, 0xD}

Override = Callable[[int, int, Regs], Regs]


class Cpuid:
    """Leaf table plus extension overrides (an extension that adds SVM sets its bit and leaf)."""

    def __init__(self) -> None:
        self.table = dict(_EPYC)
        eax, ebx, ecx, edx = self.table[(1, 0)]
        self.table[(1, 0)] = (eax, ebx, ecx & ~CPUID_1_ECX_HYPERVISOR, edx & ~CPUID_1_EDX_APIC)
        eax, ebx, ecx, edx = self.table[(0x80000001, 0)]
        self.table[(0x80000001, 0)] = (eax, ebx, ecx & ~CPUID_80000001_ECX_SVM, edx)
        self.overrides: list[Override] = []

    def set_leaf(self, leaf: int, subleaf: int, regs: Regs) -> None:
        self.table[(leaf, subleaf)] = regs
        if leaf >= 0x80000000:
            top = self.table[(0x80000000, 0)]
            if leaf > top[0]:
                self.table[(0x80000000, 0)] = (leaf,) + top[1:]

    def set_bits(self, leaf: int, reg: int, bits: int) -> None:
        regs = list(self.table.get((leaf, 0), (0, 0, 0, 0)))
        regs[reg] |= bits
        self.table[(leaf, 0)] = tuple(regs)  # type: ignore[assignment]

    def query(self, leaf: int, subleaf: int) -> Regs:
        leaf &= 0xFFFFFFFF
        key = (leaf, subleaf & 0xFFFFFFFF if leaf in _SUBLEAF_INDEXED else 0)
        regs = self.table.get(key, (0, 0, 0, 0))
        for override in self.overrides:
            regs = override(leaf, subleaf, regs)
        return regs


