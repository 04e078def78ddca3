"""MOV to CR4 by L1, checked against the CPU model (AMD APM vol. 2, 3.1.3).

Unicorn's MOV CR4 takes any value: bits of features the model does not have (CR4.LA57, UMIP,
PKE, PCIDE on a model without PCID, ...) would be set silently, and a later page walk with LA57
set has nothing to follow. Hardware raises #GP(0) for a reserved CR4 bit, so L0 intercepts L1's
CR4 writes (vmcb01, hostvm.L0_CR_WRITE_INTERCEPTS), checks them here and performs the allowed
ones. The allowed set is read from CPUID, so every model and every `-feature` agrees with it.
A nested guest's CR4 writes are its hypervisor's to intercept; L0 does not check them.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from unicorn.x86_const import UC_X86_REG_CR4, UC_X86_REG_RIP

from emu.arch.bits import (CR4_DE, CR4_FSGSBASE, CR4_LA57, CR4_MCE, CR4_OSFXSR, CR4_OSXMMEXCPT,
                           CR4_OSXSAVE, CR4_PAE, CR4_PCE, CR4_PCIDE, CR4_PGE, CR4_PKE, CR4_PKS,
                           CR4_PSE, CR4_PVI, CR4_SMAP, CR4_SMEP, CR4_TSD, CR4_UMIP, CR4_VME, EFER_LMA)
from emu.arch.decode import MAX_INSN_LENGTH, split_prefixes
from emu.core.cpu_models import CPUID_7_0_ECX_OSPKE, CPUID_7_0_ECX_PKS, CPUID_7_0_ECX_PKU
from emu.core.interrupts import GP
from emu.engine import hostvm
from emu.errors import Unsupported

CPUID_1_ECX_OSXSAVE = 1 << 27

if TYPE_CHECKING:
    from emu.core.cpuid import Cpuid, Regs
    from emu.core.board import Board

CR4_ALWAYS = (CR4_VME | CR4_PVI | CR4_TSD | CR4_DE | CR4_PSE | CR4_PAE | CR4_MCE | CR4_PGE
              | CR4_PCE | CR4_OSFXSR | CR4_OSXMMEXCPT)
# CR4 bit -> (CPUID leaf, register index, bit) that makes it writable (APM vol. 3, appendix E).
CR4_BY_FEATURE = {
    CR4_UMIP: (7, 2, 1 << 2),
    CR4_LA57: (7, 2, 1 << 16),
    CR4_PKE: (7, 2, CPUID_7_0_ECX_PKU),
    CR4_PKS: (7, 2, CPUID_7_0_ECX_PKS),
    CR4_FSGSBASE: (7, 1, 1 << 0),
    CR4_SMEP: (7, 1, 1 << 7),
    CR4_SMAP: (7, 1, 1 << 20),
    CR4_PCIDE: (1, 2, 1 << 17),
    CR4_OSXSAVE: (1, 2, 1 << 26),
}

def cr4_allowed(cpuid: "Cpuid") -> int:
    """The CR4 bits this model lets software set."""
    allowed = CR4_ALWAYS
    for bit, (leaf, reg, feature) in CR4_BY_FEATURE.items():
        if cpuid.table.get((leaf, 0), (0, 0, 0, 0))[reg] & feature:
            allowed |= bit
    return allowed


def cr4_fault(value: int, allowed: int, efer: int, cr3: int) -> str | None:
    """Why MOV CR4 of `value` raises #GP(0), or None (APM vol. 2, 3.1.3 and 5.10)."""
    if value & ~allowed:
        return f"reserved CR4 bits {value & ~allowed:#x}"
    if efer & EFER_LMA and not value & CR4_PAE:
        return "CR4.PAE cleared in long mode"
    if value & CR4_PCIDE and not efer & EFER_LMA:
        return "CR4.PCIDE set outside long mode"
    if value & CR4_PCIDE and cr3 & 0xFFF:
        return "CR4.PCIDE set with CR3[11:0] not zero"
    return None


class Cr4Writes:
    def __init__(self, machine: "Board") -> None:
        self.m = machine
        machine.register_exit(hostvm.VMEXIT_CR0_WRITE + 4, self._exit)
        machine.cpuid.overrides.append(self._cpuid)

    def _cpuid(self, leaf: int, subleaf: int, regs: "Regs") -> "Regs":
        """CPUID 1 ECX.OSXSAVE mirrors CR4.OSXSAVE of the code running (APM vol. 3, E.3.2), and
        CPUID 7.0 ECX.OSPKE mirrors CR4.PKE where the model has PKU (E.3.6)."""
        if leaf == 1:
            a, b, c, d = regs
            if self.m.ctx.save().cr(4) & CR4_OSXSAVE:
                return a, b, c | CPUID_1_ECX_OSXSAVE, d
            return a, b, c & ~CPUID_1_ECX_OSXSAVE, d
        if leaf == 7 and subleaf == 0:
            a, b, c, d = regs
            if c & CPUID_7_0_ECX_PKU and self.m.ctx.save().cr(4) & CR4_PKE:
                return a, b, c | CPUID_7_0_ECX_OSPKE, d
            return a, b, c & ~CPUID_7_0_ECX_OSPKE, d
        return regs

    def _exit(self, code: int) -> None:
        from emu.core.irq import GPRS
        m = self.m
        uc = m.uc
        rip = uc.reg_read(UC_X86_REG_RIP)
        ctx = m.ctx.save()
        if ctx.cpl:
            m.raise_exception(GP, 0)
            return
        code_bytes = m.mem.read_code(rip, MAX_INSN_LENGTH)
        bits = ctx.mode_bits()
        p = split_prefixes(code_bytes, bits)
        op = p.opcode
        if op[:2] != b"\x0F\x22" or len(op) < 3:
            raise Unsupported(f"CR4 write by {code_bytes[:p.length + 3].hex()} at {rip:#x}")
        modrm = op[2]
        reg = GPRS[(modrm & 7) | ((p.rex & 1) << 3)]
        value = uc.reg_read(reg) & (0xFFFFFFFFFFFFFFFF if bits == 64 else 0xFFFFFFFF)
        why = cr4_fault(value, cr4_allowed(m.cpuid), ctx.efer, ctx.cr(3))
        t = m.tracer
        if why is not None:
            if t is not None and t.on("exc"):
                t.line("exc", m.where(), f"MOV CR4 {value:#x}: #GP ({why})")
            m.raise_exception(GP, 0)
            return
        uc.reg_write(UC_X86_REG_CR4, value)
        m.retire(rip + p.length + 3)
