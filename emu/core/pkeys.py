"""IA32_PKRS, the access rights of supervisor pages' protection keys (CR4.PKS).

The page walk reads PKRS from the CPU state (engine patch 0020), so the MSR lives there, inside
the saved context: snapshots carry it as they carry PKRU. A write changes the rights of pages
the soft TLB may already hold, so it flushes the TLB, as Unicorn's WRPKRU does for PKRU. The
MSR exists only where CPUID 7.0 ECX[31] (PKS) says so; bits 63:32 are reserved.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from emu.arch.msrs import MSR_PKRS
from emu.core.cpu_models import CPUID_7_0_ECX_PKS, ECX
from emu.core.msr import GeneralProtection
from emu.engine.hw_switch import OFF_PKRS, flush_tlb

if TYPE_CHECKING:
    from emu.core.board import Board

PKRS_VALID = 0xFFFFFFFF


class SupervisorKeys:
    def __init__(self, machine: "Board") -> None:
        self.m = machine
        machine.msrs.register(MSR_PKRS, self._read, self._write)

    def _present(self) -> bool:
        return bool(self.m.cpuid.query(7, 0)[ECX] & CPUID_7_0_ECX_PKS)

    def _read(self) -> int:
        if not self._present():
            raise GeneralProtection("RDMSR IA32_PKRS: not on this model")
        return self.m.ctx.save().u32(OFF_PKRS)

    def _write(self, value: int) -> None:
        if not self._present():
            raise GeneralProtection("WRMSR IA32_PKRS: not on this model")
        if value & ~PKRS_VALID:
            raise GeneralProtection(f"WRMSR IA32_PKRS: reserved bits in {value:#x}")
        ctx = self.m.ctx.save()
        ctx.set_u32(OFF_PKRS, value)
        ctx.restore()
        flush_tlb(self.m.uc)
