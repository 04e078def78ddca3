"""The CPU identity svmemu reports.

The base table is the selected CPU model's (emu/core/cpu_models.py), trimmed to what this
machine models: no local APIC bit until the APIC device sets it (emu/core/irq.py), and no SVM
until an extension adds it; on the stock Unicorn engine, no UMIP or PKS (their checks are
engine patches). Features the model hides are masked last, after every override.
Leaves not listed read as zeros, as on AMD parts.
"""
from __future__ import annotations

from typing import Callable

from emu.core.cpu_models import FEATURES, CpuModel
from emu.engine.unicorn_build import loader as engine_loader

Regs = tuple[int, int, int, int]   # eax, ebx, ecx, edx

CPUID_1_EDX_APIC = 1 << 9
CPUID_1_ECX_X2APIC = 1 << 21
CPUID_1_ECX_TSC_DEADLINE = 1 << 24      # the APIC timer's TSC-deadline mode
CPUID_80000001_ECX_SVM = 1 << 2
LEAF_SVM_FEATURES = 0x8000000A
LEAF_XSAVE = 0xD                 # processor extended state: subleaf 0 EDX:EAX = valid XCR0 bits

_SUBLEAF_INDEXED = {0x7, LEAF_XSAVE}
# Features whose checks exist only in svmemu's engine patches: the stock engine does not have
# them, so a machine on it does not advertise them.
_ENGINE_FEATURES = {"pks": "supervisor-pkeys", "umip": "umip"}

Override = Callable[[int, int, Regs], Regs]


class Cpuid:
    """Leaf table plus extension overrides (an extension that adds SVM sets its bit and leaf)."""

    def __init__(self, model: CpuModel | None = None) -> None:
        self.model = model if model is not None else CpuModel()
        self.table = dict(self.model.table)
        eax, ebx, ecx, edx = self.table[(1, 0)]
        self.table[(1, 0)] = (eax, ebx, ecx, edx & ~CPUID_1_EDX_APIC)
        self._hide = self.model.hide
        eax, ebx, ecx, edx = self.table[(0x80000001, 0)]
        self.table[(0x80000001, 0)] = (eax, ebx, ecx & ~CPUID_80000001_ECX_SVM, edx)
        for name, fix in _ENGINE_FEATURES.items():
            leaf, sub, reg, bit = FEATURES[name]
            if (leaf, sub) in self.table and not engine_loader.has_fix(fix):
                regs = list(self.table[(leaf, sub)])
                regs[reg] &= ~bit
                self.table[(leaf, sub)] = tuple(regs)  # type: ignore[assignment]
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
        return self._hide(regs, key[0], key[1])


