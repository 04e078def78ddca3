"""Which non-canonical reference faulted: the stack segment's or another's.

In 64-bit mode a data reference to a non-canonical linear address faults with #SS(0) when it
goes through SS and with #GP(0) otherwise (AMD APM vol. 2, 8.2.13 and 8.2.14; vol. 3, the
exception lists of each instruction). Unicorn raises #GP(0) for both. The SS references are the
implicit stack accesses (PUSH, POP, CALL, RET, ENTER, LEAVE, IRET, ...), an explicit operand whose
base register is RSP or RBP without a segment override, and one with an SS override. The choice
is made here, after the engine's #GP(0), so translated code carries no extra check: the #GP(0)
of an ordinary non-canonical reference is unusual, the stack case more so.
"""
from __future__ import annotations

from typing import Callable

from emu.arch.decode import decoder
from emu.arch.paging import is_canonical

_MASK64 = (1 << 64) - 1
# Registers whose base selects SS by default (APM vol. 1, 2.5: "default segment").
_STACK_BASES = frozenset({"rsp", "rbp"})
# Stack instructions whose implicit RSP capstone leaves out of `regs_read`.
_IMPLICIT_STACK = frozenset({"enter", "iret", "iretd", "iretq", "retf", "retfq", "push", "pop"})
# The window around RSP an implicit stack access can touch: a push's slot below it, the widest
# pop (IRET's five quadwords) above it.
_STACK_BELOW, _STACK_ABOVE = 16, 48


def _linear(base: int, offset: int) -> int:
    return (base + offset) & _MASK64


def noncanonical_through_ss(code: bytes, rip: int, reg: Callable[[str], int],
                            seg_base: Callable[[str], int]) -> bool:
    """True when the 64-bit instruction `code` at `rip`, which the engine stopped with #GP(0),
    faulted on a non-canonical reference through SS: the APM's #SS(0).

    `reg` reads a 64-bit general register by its lower-case name; `seg_base` a segment's base
    by name (only FS and GS have one in 64-bit mode). An explicit memory operand that is
    non-canonical decides by its segment; without one, an implicit stack access near a
    non-canonical RSP does. Anything else (undecodable bytes, 32-bit addressing, which wraps
    and stays canonical, another cause of the #GP) stays #GP."""
    import capstone.x86 as x86
    cs = decoder(64, detail=True)
    insn = next(cs.disasm(code, rip, 1), None)
    if insn is None:
        return False
    for op in insn.operands:
        if op.type != x86.X86_OP_MEM:
            continue
        mem = op.mem
        base = insn.reg_name(mem.base) if mem.base else None
        index = insn.reg_name(mem.index) if mem.index else None
        segment = insn.reg_name(mem.segment) if mem.segment else None
        if base == "rip":
            address = _linear(rip + insn.size, mem.disp)
        elif (base and not base.startswith("r")) or (index and not index.startswith("r")):
            continue                  # 32-bit addressing: truncated to 32 bits, canonical
        else:
            address = _linear(reg(base) if base else 0,
                              (reg(index) * mem.scale if index else 0) + mem.disp)
        if segment is None:
            segment = "ss" if base in _STACK_BASES else "ds"
        if segment in ("fs", "gs"):
            address = _linear(address, seg_base(segment))
        last = _linear(address, max(op.size, 1) - 1)
        if not is_canonical(address) or not is_canonical(last):
            return segment == "ss"
    if (x86.X86_REG_RSP in insn.regs_read or x86.X86_REG_ESP in insn.regs_read
            or insn.mnemonic in _IMPLICIT_STACK):
        rsp = reg("rsp")
        return not all(is_canonical(_linear(rsp, d))
                       for d in (-_STACK_BELOW, 0, _STACK_ABOVE - 1))
    return False
