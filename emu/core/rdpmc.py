"""RDPMC: the performance counters read as an instruction (AMD APM vol. 3, "RDPMC").

Unicorn 2.1.4 raises #UD for every RDPMC, so L0 intercepts it (hostvm.L0_INTERCEPTED_EXITS;
a nested guest's RDPMC comes here too unless its hypervisor intercepts it). ECX selects a
counter: 0-3, or 0-5 with PerfCtrExtCore (CPUID 8000_0001 ECX[23]); any other index raises
#GP(0), as does CPL > 0 with CR4.PCE clear. The value is the counter MSR's (msrs_amd.py; the
counters hold what software wrote, events are not counted).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from unicorn.x86_const import UC_X86_REG_RAX, UC_X86_REG_RCX, UC_X86_REG_RDX

from emu.arch.bits import CR4_PCE
from emu.core.interrupts import GP
from emu.core.msrs_amd import (CORE_PERF_COUNTERS, CPUID_80000001_ECX_PERFCTREXTCORE,
                               LEGACY_PERF_COUNTERS, MSR_CORE_PERF_CTL0, MSR_PERF_CTR0)
from emu.engine import hostvm
from emu.engine.hw_switch import OFF_EIP

if TYPE_CHECKING:
    from emu.core.board import Board

RDPMC_LENGTH = 2     # 0F 33


def counter_msr(index: int, core_counters: bool) -> int | None:
    """The MSR RDPMC index `index` reads, or None (#GP)."""
    if core_counters and index < CORE_PERF_COUNTERS:
        return MSR_CORE_PERF_CTL0 + 2 * index + 1
    if index < LEGACY_PERF_COUNTERS:
        return MSR_PERF_CTR0 + index
    return None


class Rdpmc:
    def __init__(self, machine: "Board") -> None:
        self.m = machine
        machine.register_exit(hostvm.VMEXIT_RDPMC, self._exit)

    def _exit(self, code: int) -> None:
        m = self.m
        uc = m.uc
        ctx = m.ctx.save()
        core = bool(m.cpuid.query(0x80000001, 0)[2] & CPUID_80000001_ECX_PERFCTREXTCORE)
        msr = counter_msr(uc.reg_read(UC_X86_REG_RCX) & 0xFFFFFFFF, core)
        if msr is None or (ctx.cpl and not ctx.cr(4) & CR4_PCE):
            m.raise_exception(GP, 0)
            return
        value = m.msrs.rdmsr(msr)
        uc.reg_write(UC_X86_REG_RAX, value & 0xFFFFFFFF)
        uc.reg_write(UC_X86_REG_RDX, value >> 32)
        m.retire(ctx.u64(OFF_EIP) + RDPMC_LENGTH)
