"""Exact EXITINFO1/EXITINFO2 for a #VMEXIT(NPF) that Unicorn's nested walk raised (AMD APM
vol. 2, 15.25.6).

Unicorn 2.1.4 hands L0 the low 32 bits of the #NPF error code (P, RW, US, RSVD, ID) and the
faulting GPA, but not bits 32/33, which say whether the walk failed on the final guest-physical
address (NPF_GUEST_PAGE) or on the address of a guest page-table entry (NPF_GUEST_TABLE); the
vmcb02 EXITINFO1 it should have written stays 0. (tests/test_npf.py shows both.)

So at the exit (never on the hot path) we find the access that faulted and re-walk it with our
own walker (emu/arch/paging.walk_2d, side-effect free): the candidates are the linear addresses the
instruction at RIP touches (the fetch at RIP; its explicit memory operands, decoded by
capstone; the stack slot a push/pop would use; RSI/RDI for string instructions). The first
whose 2D walk fails at the same GPA with the same low bits gives EXITINFO1 whole; failing that,
the first that fails at the same GPA at all (Unicorn sets ID on fetches even with EFER.NXE=0,
where the APM leaves it undefined and our walker says 0). If none does (an access we do not
decode), Unicorn's bits stand, with NPF_GUEST_PAGE, and an `exits` trace line says so.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Iterator

from emu.arch.decode import decoder
from unicorn import x86_const

from emu.arch import paging
from emu.arch.bits import NPF_GUEST_PAGE
from emu.engine.hostvm import MAXPHYADDR
from emu.engine.hw_switch import CS, DS, ES, FS, GS, SS

from svm_ext import memview

if TYPE_CHECKING:
    from .vcpu import Vcpu

_LOW = 0xFFFFFFFF
_SEG_INDEX = {"es": ES, "cs": CS, "ss": SS, "ds": DS, "fs": FS, "gs": GS}
def exit_info(ext: "Vcpu", low_bits: int, gpa: int) -> tuple[int, int]:
    """(EXITINFO1, EXITINFO2) for the #NPF Unicorn reported with `low_bits` at `gpa`."""
    view = memview.world_paging(ext, "L2")
    if view is None or view.ncr3 is None:
        return low_bits | NPF_GUEST_PAGE, gpa
    mem = ext.machine.mem
    same_gpa: list[int] = []
    for gva, access in _candidates(ext, low_bits):
        try:
            paging.walk_2d(mem.read_u64, view.regs, view.ncr3, gva, access, host=view.host_regs,
                           read_u32=mem.read_u32, maxphyaddr=MAXPHYADDR)
        except paging.NestedFault as f:
            if f.exitinfo2 != gpa:
                continue
            if f.exitinfo1 & _LOW == low_bits & _LOW:
                return f.exitinfo1, gpa
            same_gpa.append(f.exitinfo1)
        except (paging.PageFault, paging.NonCanonicalAddress, ValueError):
            pass
    if same_gpa:
        # Unicorn's low bits differ from the walker's for this access (e.g. ID with
        # EFER.NXE=0, which the APM leaves undefined and our walker reports as 0): the
        # walker is our model of the APM, so its value stands.
        return same_gpa[0], gpa
    ext.trace(f"#NPF at gpa {gpa:#x}: no decoded access reproduces it; EXITINFO1 bits 32/33 "
              "guessed (final GPA)")
    return (low_bits & _LOW) | NPF_GUEST_PAGE, gpa


def _candidates(ext: "Vcpu", low_bits: int) -> Iterator[tuple[int, paging.Access]]:
    """(linear address, access) pairs the faulting instruction may have made, most likely first."""
    m = ext.machine
    ctx = m.ctx.save()
    bits = ctx.mode_bits()
    user = ctx.cpl == 3
    rip = m.uc.reg_read(x86_const.UC_X86_REG_RIP)
    mask = (1 << 64) - 1 if bits == 64 else 0xFFFFFFFF
    cs_base = 0 if bits == 64 else ctx.seg(CS).base
    fetch = paging.Access(fetch=True, user=user)
    data = [paging.Access(write=True, user=user)] if low_bits & 2 else []
    data.append(paging.Access(user=user))
    if low_bits & 0x10:          # ID: it was a fetch
        yield (cs_base + rip) & mask, fetch
        yield (cs_base + rip + 15) & mask, fetch
        return
    yield (cs_base + rip) & mask, fetch
    try:
        code = m.mem.read_code(rip, 15)
    except Exception:            # RIP itself unreachable: the fetch above is the answer
        return
    yield (cs_base + rip + max(len(code), 1)) & mask, fetch
    insn = next(decoder(bits, detail=True).disasm(code, rip, 1), None)
    if insn is None:
        return
    for gva in operand_addresses(m, ctx, insn, bits):
        for access in data:
            yield gva & mask, access
    rsp = m.uc.reg_read(x86_const.UC_X86_REG_RSP)
    implicit = [rsp - 8, rsp, m.uc.reg_read(x86_const.UC_X86_REG_RSI),
                m.uc.reg_read(x86_const.UC_X86_REG_RDI)]
    for gva in implicit:
        for access in data:
            yield gva & mask, access


def operand_addresses(m, ctx, insn, bits: int) -> Iterator[int]:
    """Linear addresses of the instruction's memory operands (each, then its last byte)."""
    from capstone import x86 as cs_x86      # only here: decode.py imports capstone lazily
    for op in insn.operands:
        if op.type != cs_x86.X86_OP_MEM:
            continue
        mo = op.mem
        ea = mo.disp
        if mo.base == cs_x86.X86_REG_RIP:
            ea += insn.address + insn.size
        elif mo.base:
            ea += _reg(m, insn.reg_name(mo.base))
        if mo.index:
            ea += _reg(m, insn.reg_name(mo.index)) * mo.scale
        seg = insn.reg_name(mo.segment) if mo.segment else "ds"
        if bits == 64:
            ea += {"fs": m.uc.reg_read(x86_const.UC_X86_REG_FS_BASE),
                   "gs": m.uc.reg_read(x86_const.UC_X86_REG_GS_BASE)}.get(seg, 0)
        else:
            ea = (ea & 0xFFFFFFFF) + ctx.seg(_SEG_INDEX.get(seg, DS)).base
        yield ea
        yield ea + max(op.size, 1) - 1    # the last byte: an access may cross a page


def _reg(m, name: str) -> int:
    return m.uc.reg_read(getattr(x86_const, f"UC_X86_REG_{name.upper()}"))
