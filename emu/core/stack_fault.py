"""The engine's #GP(0) that the APM calls #SS(0): a non-canonical reference through SS
(emu/arch/stack_segment.py decides from the instruction). Checked when the exception is
raised, so both L1's delivery and an L2 exception L1 intercepts see the right vector."""
from __future__ import annotations

from typing import TYPE_CHECKING

from unicorn import x86_const

from emu.arch.decode import MAX_INSN_LENGTH
from emu.arch.stack_segment import noncanonical_through_ss
from emu.engine.hw_switch import FS, GS

if TYPE_CHECKING:
    from emu.core.board import Board


def is_stack_fault(machine: "Board") -> bool:
    """True when the #GP(0) just raised at RIP is the APM's #SS(0) (64-bit code only: the
    canonical check exists only there)."""
    ctx = machine.ctx.save()
    if ctx.mode_bits() != 64:
        return False
    uc = machine.uc
    rip = uc.reg_read(x86_const.UC_X86_REG_RIP)
    code = machine.mem.read_code(rip, MAX_INSN_LENGTH)

    def reg(name: str) -> int:
        return uc.reg_read(getattr(x86_const, "UC_X86_REG_" + name.upper()))

    def seg_base(name: str) -> int:
        return ctx.seg(FS if name == "fs" else GS).base

    return noncanonical_through_ss(code, rip, reg, seg_base)
