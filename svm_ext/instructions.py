"""VMLOAD, VMSAVE, STGI, CLGI, INVLPGA, VMMCALL, SKINIT when no intercept claims them.

Each runs with RIP at the instruction (3 bytes, 0F 01 xx) in whichever world executed it; in L2
under nested paging, the VMCB address in rAX is a guest-physical address (APM 15.5.2)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from unicorn.x86_const import UC_X86_REG_RIP

from emu.arch import paging
from emu.arch.paging import canonical
from emu.errors import Unsupported
from emu.engine.hw_switch import (FS, GS, LDTR, TR, flush_tlb, HF2_GMET, HF2_NPT, OFF_HFLAGS2,
                           OFF_NESTED_CR3, OFF_NESTED_PG_MODE, OFF_REGS, Context, Segment)
from emu.core.interrupts import GP, UD
from emu.core.memory import NPT_MODE_GMET
from emu.core.msr import (MSR_CSTAR, MSR_KERNEL_GS_BASE, MSR_LSTAR, MSR_SFMASK, MSR_STAR,
                     MSR_SYSENTER_CS, MSR_SYSENTER_EIP, MSR_SYSENTER_ESP)

from emu.arch.vmcb import VMCB_SIZE, Vmcb
from svm_ext import vintr

if TYPE_CHECKING:
    from .vcpu import Vcpu

INSN_LENGTH = 3
# What VMLOAD/VMSAVE move besides FS, GS, TR and LDTR (APM 15.5.2).
_MSR_FIELDS = (("kernel_gs_base", MSR_KERNEL_GS_BASE), ("star", MSR_STAR), ("lstar", MSR_LSTAR),
               ("cstar", MSR_CSTAR), ("sfmask", MSR_SFMASK), ("sysenter_cs", MSR_SYSENTER_CS),
               ("sysenter_esp", MSR_SYSENTER_ESP), ("sysenter_eip", MSR_SYSENTER_EIP))
_SEG_FIELDS = (("fs", FS), ("gs", GS), ("tr", TR), ("ldtr", LDTR))


def _advance(ext: "Vcpu") -> None:
    uc = ext.machine.uc
    ext.machine.retire(uc.reg_read(UC_X86_REG_RIP) + INSN_LENGTH)


def vmcb_operand(ext: "Vcpu", ctx: "Context | None" = None) -> int | None:
    """The physical address in rAX, checked as VMRUN/VMLOAD/VMSAVE check it (#GP(0)).
    `ctx`: the context the caller has already saved (the exit's), to save it only once."""
    m = ext.machine
    ctx = ctx or m.ctx.save()
    pa = ctx.u64(OFF_REGS)           # rAX
    if ctx.mode_bits() != 64:
        pa &= 0xFFFFFFFF
    if pa & 0xFFF or pa >> ext.caps.maxphyaddr:
        m.raise_exception(GP, 0)
        return None
    hflags2 = ctx.u32(OFF_HFLAGS2)
    if hflags2 & HF2_NPT:
        # Under GMET the nested U/S bit no longer applies to data accesses.
        host = (m.mem.host_regs(ctx.u32(OFF_NESTED_PG_MODE) | NPT_MODE_GMET)
                if hflags2 & HF2_GMET else None)
        try:
            pa = paging.walk_nested(m.mem.read_u64, ctx.u64(OFF_NESTED_CR3), pa,
                                    paging.Access(write=True, user=True), host=host).pa
        except paging.NestedFault as nf:
            ext.on_nested_fault(nf, None)
            return None
    if pa + VMCB_SIZE > m.ram_size:
        raise Unsupported(f"VMCB at {pa:#x} outside RAM")
    return pa


def _operand_save_area(ext: "Vcpu"):
    """The save area of the VMCB that rAX names, or None when the operand check raised."""
    pa = vmcb_operand(ext)
    return None if pa is None else Vmcb(ext.machine.mem.view, pa).save


def vmload(ext: "Vcpu", code: int) -> None:
    save = _operand_save_area(ext)
    if save is None:
        return
    m = ext.machine
    ctx = m.ctx.save()
    # The bases VMLOAD loads become canonical (bit 47 copied up), as a segment load or
    # WRMSR(KERNEL_GS_BASE) could only have made them: VMSAVE then finds them canonical.
    for name, index in _SEG_FIELDS:
        selector, attrib, limit, base = getattr(save, name)
        ctx.set_seg(index, Segment.from_vmcb(selector, attrib, limit, canonical(base)))
    ctx.restore()
    for name, index in _MSR_FIELDS:
        value = getattr(save, name)
        m.msrs.cpu.write(index, canonical(value) if index == MSR_KERNEL_GS_BASE else value)
    _advance(ext)


def vmsave(ext: "Vcpu", code: int) -> None:
    save = _operand_save_area(ext)
    if save is None:
        return
    m = ext.machine
    ctx = m.ctx.save()
    for name, index in _SEG_FIELDS:
        seg = ctx.seg(index)
        setattr(save, name, (seg.selector, seg.vmcb_attrib, seg.limit, seg.base))
    for name, index in _MSR_FIELDS:
        setattr(save, name, m.msrs.cpu.read(index))
    _advance(ext)


def _virtual_gif(ext: "Vcpu") -> Vmcb | None:
    """vmcb12 when L2 runs with V_GIF_ENABLE: its STGI and CLGI then set and clear V_GIF in
    vmcb12's V_INTR word instead of the GIF (APM vol. 2, 15.33)."""
    st = ext.state
    if st.in_l2 and st.vmcb12 is not None and vintr.vgif_enabled(ext, st.vmcb12):
        return Vmcb(ext.machine.mem.view, st.vmcb12_pa)
    return None


def stgi(ext: "Vcpu", code: int) -> None:
    vm = _virtual_gif(ext)
    if vm is not None:
        vm.v_gif = 1
    else:
        ext.state.gif = True
    _advance(ext)
    # interrupts held while GIF was 0 may now be taken (V_IRQ too, for an L2 that runs STGI)
    ext.machine.interrupt_check(virtual=vintr.virtual_event_pending(ext))


def clgi(ext: "Vcpu", code: int) -> None:
    vm = _virtual_gif(ext)
    if vm is not None:
        vm.v_gif = 0
    else:
        ext.state.gif = False
    _advance(ext)


def invlpga(ext: "Vcpu", code: int) -> None:
    """Invalidate one page of one ASID; Unicorn's TLB has no ASIDs, so flush it all (safe)."""
    flush_tlb(ext.machine.uc)
    _advance(ext)


def vmmcall(ext: "Vcpu", code: int) -> None:
    """No hypervisor claimed it: #UD (APM vol. 3, VMMCALL)."""
    ext.machine.raise_exception(UD)


def skinit(ext: "Vcpu", code: int) -> None:
    raise Unsupported("SKINIT (secure init and jump) is not modelled")
