"""LGDT, LIDT, LLDT and LTR with a non-canonical base raise #GP (AMD APM vol. 3 on each; vol. 2,
4.6.2 and 4.8.2), which Unicorn's helpers never check: they load any 64-bit base.

On a CPU without 5-level paging (CR4.LA57 is reserved on every model svmemu has) a linear
address is canonical when bits 63:47 are equal; a descriptor-table register or system-segment
base that is not would make every later access through it fault, so the instruction that loads
it faults instead and changes nothing. L0 intercepts the four instructions (vmcb01's misc
intercepts, also in every nested guest whose hypervisor leaves them alone), runs each alone
with its intercept lifted, and undoes it if the base it loaded is not canonical: the CPU state
from before, the busy bit LTR set in the TSS descriptor cleared again, then #GP(0) for LGDT and
LIDT and #GP(selector) for LLDT and LTR. They are boot-time instructions, so the detour costs
nothing measurable.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from unicorn.x86_const import UC_X86_REG_RIP

from emu.arch.paging import is_canonical
from emu.arch.vmcb import (VMEXIT_GDTR_WRITE, VMEXIT_IDTR_WRITE, VMEXIT_LDTR_WRITE,
                           VMEXIT_TR_WRITE, intercept_misc_bit)
from emu.core.interrupts import GP, Fault
from emu.engine.hw_switch import GDTR, IDTR, LDTR, TR

if TYPE_CHECKING:
    from emu.core.board import Board

# exit code -> the register it loads
LOADS = {VMEXIT_GDTR_WRITE: GDTR, VMEXIT_IDTR_WRITE: IDTR, VMEXIT_LDTR_WRITE: LDTR,
         VMEXIT_TR_WRITE: TR}
NAMES = {GDTR: "LGDT", IDTR: "LIDT", LDTR: "LLDT", TR: "LTR"}
TSS_BUSY = 1 << 1          # in the descriptor's type field (byte 5): available 9 -> busy 0xB
SELECTOR_INDEX = 0xFFFC    # a selector error code: index and TI, RPL dropped


class TableLoads:
    def __init__(self, machine: "Board") -> None:
        self.m = machine
        for code in LOADS:
            machine.register_exit(code, self._exit)

    def _exit(self, code: int) -> None:
        m = self.m
        rip = m.uc.reg_read(UC_X86_REG_RIP)
        m.defer(lambda: self._run(code, rip))

    def _run(self, code: int, rip: int) -> None:
        m = self.m
        index = LOADS[code]
        before = bytes(m.ctx.save().view)
        m.run_alone(rip, intercept_misc_bit(code))
        ctx = m.ctx.save()
        seg = ctx.seg(index)
        if m.finished() or is_canonical(seg.base):
            return
        ctx.view[:] = before               # as if it never ran
        ctx.restore()
        if index == TR:
            self._clear_busy(ctx.seg(GDTR).base, seg.selector)
        t = m.tracer
        if t is not None and t.on("exc"):
            t.line("exc", m.where(), f"{NAMES[index]} of a non-canonical base {seg.base:#x}: #GP")
        m.raise_exception(GP, 0 if index in (GDTR, IDTR) else seg.selector & SELECTOR_INDEX)

    def _clear_busy(self, gdt_base: int, selector: int) -> None:
        """LTR marked the TSS descriptor busy before svmemu could see the base: mark it
        available again, as the LTR that faults never did."""
        addr = gdt_base + (selector & ~7) + 5
        try:
            kind = self.m.mem.read_linear(addr, 1, 0)[0]
            self.m.mem.write_linear(addr, bytes([kind & ~TSS_BUSY]), 0)
        except Fault:
            pass                           # the GDT moved out of reach: nothing to undo there
