"""SYSCALL (AMD APM vol. 3, "SYSCALL"; vol. 2, 6.1.1).

Unicorn 2.1.4 does not execute SYSCALL: its helper only calls the hooks registered for it and
then moves RIP past the instruction, so without this module a guest's SYSCALL did nothing at
all.  Here the hook performs it: #UD when EFER.SCE is clear; in long mode RCX = the next RIP,
R11 = RFLAGS (RF clear), RFLAGS &= ~SFMASK, CS/SS the flat ring-0 selectors from STAR[47:32]
(CS 64-bit), RIP = LSTAR from 64-bit code or CSTAR from compatibility mode; in legacy mode
ECX = the next EIP, IF, VM and RF cleared, RIP = STAR[31:0] with a 32-bit CS.  SYSRET Unicorn
executes itself.  The helper adds the instruction's length to RIP after its hooks, so the hook
leaves RIP that much before the target.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from unicorn.x86_const import UC_X86_REG_R11, UC_X86_REG_RCX, UC_X86_REG_RFLAGS

from emu.arch.bits import EFER_SCE, RFLAGS_IF, RFLAGS_RF, RFLAGS_VM
from emu.arch.decode import MAX_INSN_LENGTH, split_prefixes
from emu.arch.msrs import MSR_CSTAR, MSR_LSTAR, MSR_SFMASK, MSR_STAR
from emu.core.interrupts import UD, Event, Kind
from emu.engine.hw_switch import (CS, DESC_B, DESC_DPL_SHIFT, DESC_G, DESC_L, DESC_P, DESC_S,
                                  HF_CS64, HF_LMA, OFF_EIP, SS, Segment)

if TYPE_CHECKING:
    from emu.core.board import Board

# Descriptor-cache type bits (the descriptor's type field, at bit 8 of the flags word).
DESC_A = 1 << 8              # accessed
DESC_RW = 1 << 9             # readable code / writable data
DESC_CODE = 1 << 11
_FLAT = 0xFFFFFFFF
_CODE = DESC_P | DESC_S | DESC_G | DESC_CODE | DESC_RW | DESC_A | (0 << DESC_DPL_SHIFT)
_DATA = DESC_P | DESC_S | DESC_G | DESC_B | DESC_RW | DESC_A | (0 << DESC_DPL_SHIFT)


def on_syscall(m: "Board") -> None:
    """The UC_HOOK_INSN callback for SYSCALL: RIP is at the instruction."""
    ctx = m.ctx.save()
    rip = ctx.u64(OFF_EIP)
    code = m.mem.read_code(rip, MAX_INSN_LENGTH)
    length = split_prefixes(code, ctx.mode_bits()).length + 2
    if not ctx.efer & EFER_SCE:
        ctx.set_u64(OFF_EIP, (rip - length) & 0xFFFFFFFFFFFFFFFF)   # the helper adds it back
        ctx.restore()
        m.deliver_event(Event(UD, Kind.EXCEPTION), rip)
        return
    msrs = m.msrs.cpu
    star = msrs.read(MSR_STAR)
    selector = (star >> 32) & 0xFFFC
    rflags = m.uc.reg_read(UC_X86_REG_RFLAGS)
    next_rip = rip + length
    if ctx.hflags & HF_LMA:
        target = msrs.read(MSR_LSTAR if ctx.hflags & HF_CS64 else MSR_CSTAR)
        cs_flags = _CODE | DESC_L
        new_rflags = rflags & ~msrs.read(MSR_SFMASK) & ~RFLAGS_RF
        r11: int | None = rflags & ~RFLAGS_RF
        rcx = next_rip
    else:
        target = star & 0xFFFFFFFF
        cs_flags = _CODE | DESC_B
        new_rflags = rflags & ~(RFLAGS_IF | RFLAGS_VM | RFLAGS_RF)
        r11 = None
        rcx = next_rip & 0xFFFFFFFF
    ctx.set_seg(CS, Segment(selector, 0, _FLAT, cs_flags))
    ctx.set_seg(SS, Segment(selector + 8, 0, _FLAT, _DATA))
    ctx.recompute_hflags(cpl=0)
    ctx.set_u64(OFF_EIP, (target - length) & 0xFFFFFFFFFFFFFFFF)
    ctx.restore()
    m.uc.reg_write(UC_X86_REG_RCX, rcx)
    if r11 is not None:
        m.uc.reg_write(UC_X86_REG_R11, r11)
    m.uc.reg_write(UC_X86_REG_RFLAGS, new_rflags)
