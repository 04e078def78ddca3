"""VMRUN: L1 enters L2 (AMD APM vol. 2, 15.5 "VMRUN Instruction").

The steps, each a function below, mirror vmexit.py:
  1. the instruction's own checks (rAX) ........................ check_instruction
  2. read vmcb12 once into an immutable cache ................. read_vmcb12
  3. remember host state (L1's whole CPU context) ............. save_host_state
  4. consistency checks -> VMEXIT_INVALID ...................... vmexit.fail_vmrun
  5. load controls into vmcb02 and L2's state into the CPU ..... load_guest
  6. GIF=1, TLB_CONTROL, PAT model, world observers
  7. event injection (EVENTINJ) ............................... inject_event

L2 runs as Unicorn's guest under vmcb02, an L0-private VMCB: its intercepts are vmcb12's united
with what L0 must still own (every exception, every MSR, CPUID, ...), so each exit reaches
Python, where intercepts.py decides whether it belongs to L1.
"""
from __future__ import annotations

import struct
from typing import TYPE_CHECKING


from emu.engine import hostvm
from emu.arch.paging import canonical
from emu.engine.hw_switch import (flush_tlb, nested_pg_mode, CS, DS, ES, GDTR, HF2_GMET, HF2_NPT,
                           IDTR,
                           OFF_CR, OFF_CR2, OFF_EIP, OFF_HFLAGS2, OFF_INTERCEPT,
                           OFF_INTERCEPT_CRDR, OFF_INTERCEPT_EXC, OFF_NESTED_CR3,
                           OFF_NESTED_PG_MODE, OFF_RAX, OFF_RSP, OFF_VM_VMCB, SS, Context, Segment)
from emu.arch.bits import RFLAGS_RF
from emu.arch.msrs import MSR_TSC_RATIO
from emu.core.cpu_models import FEATURES
from emu.core.interrupts import Event, Kind
from emu.core.msrs_amd import TSC_RATIO_RESET

from svm_ext import checks, hw_quirks, instructions, intercepts, lbrv, pause_filter
from emu.arch.vmcb import (OFFSETS, EVENTINJ_TYPE_EXCEPTION, EVENTINJ_TYPE_NMI, EVENTINJ_TYPE_SOFT_INT,
                   EVENTINJ_V, TLB_CONTROL_DO_NOTHING, VMCB_SIZE,
                   Vmcb12Cache, bitfield_mask, eventinj_decode, read_cache)
from svm_ext import vintr, vmexit

if TYPE_CHECKING:
    from .vcpu import Vcpu

VMCB02 = hostvm.SCRATCH
FEATURE_TSC_SCALE = FEATURES["tsc-scale"][3]
_INTERCEPTS = struct.Struct("<HHHHIII")     # CR/DR read/write, exceptions, misc1, misc2
_MAPS = struct.Struct("<QQ")                # IOPM_BASE_PA, MSRPM_BASE_PA
VMRUN_LENGTH = 3
_CRDR = struct.Struct("<HHHH")
NESTED_CTL_NP_ENABLE = bitfield_mask("np_enable")
NESTED_CTL_GMET = bitfield_mask("gmet_enable")


def vmrun(ext: "Vcpu", code: int = 0) -> None:
    m = ext.machine
    where = m.where() if ext.tracing() else None
    ctx = m.ctx.save()
    # Step 1
    pa = check_instruction(ext, ctx)
    if pa is None:
        return
    before = ext.fast.begin(pa) if ext.fast is not None else None
    # Step 2
    cache = read_vmcb12(ext, pa)
    # Step 3
    save_host_state(ext, pa)
    # Step 4
    failure = checks.run_checks(cache, ext.caps, host_cr0=ctx.cr(0),
                                check_g_pat=ext.pat.checks_g_pat)
    if failure is not None:
        vmexit.fail_vmrun(ext, failure, where)
        return
    # Step 5 (through ext.steps: the switch cache replays it when only volatile fields changed),
    # after the guard against a Unicorn crash, which reads nested entries no cache key covers
    nx_entries = hw_quirks.guard_nested_nx(ext, cache, nested_pg_mode(ctx.cr(4), ctx.efer),
                                           checks.nested_paging_enabled(cache, ext.caps))
    ext.steps.load_guest(ext, cache)
    # Step 6
    st = ext.state
    st.gif = True
    st.in_l2 = True
    st.vmcb12 = cache
    st.stats["vmrun"] += 1
    if cache.tlb_control != TLB_CONTROL_DO_NOTHING:
        flush_tlb(m.uc)
    ext.pat.on_vmrun(ext, cache)
    m.tsc_offset = cache.tsc_offset
    m.tsc_ratio = tsc_ratio(ext)
    pause_filter.on_vmrun(ext, cache)
    lbrv.on_vmrun(ext, cache)
    if where is not None:        # tracing: format the line only then (hot path)
        ext.trace(f"vmrun vmcb12 {pa:#x} -> L2 rip {cache.rip:#x}"
                  + (" (nested paging)" if checks.nested_paging_enabled(cache, ext.caps) else ""),
                  where)
    m.world_changed("L1", "L2")
    vintr.on_vmrun(ext, cache)     # V_IRQ, V_TPR; GIF=1 may let an interrupt in at once
    # Step 7
    if cache.eventinj & EVENTINJ_V:
        inject_event(ext, cache)
    elif ext.fast is not None and not (st.vnmi or st.lbrv):   # replayable (fast_switch.py)
        ext.fast.vmrun_done(before, pa, nx_entries)


def tsc_ratio(ext: "Vcpu") -> int:
    """The TSC ratio L2 runs with: the TSC_RATIO MSR at VMRUN, on a CPU that reports it (APM
    vol. 2, 15.30.5); L1's own TSC is never scaled."""
    if not ext.svm_features & FEATURE_TSC_SCALE:
        return TSC_RATIO_RESET
    return ext.machine.msrs.values.get(MSR_TSC_RATIO, TSC_RATIO_RESET)


def check_instruction(ext: "Vcpu", ctx: Context) -> int | None:
    """rAX must be a 4 KiB-aligned physical address below MAXPHYADDR, else #GP(0): the operand
    rule VMRUN shares with VMLOAD/VMSAVE."""
    return instructions.vmcb_operand(ext, ctx)


def read_vmcb12(ext: "Vcpu", pa: int) -> Vmcb12Cache:
    return read_cache(ext.machine.mem.view, pa)


def save_host_state(ext: "Vcpu", vmcb12_pa: int) -> None:
    """Keep L1's whole context; #VMEXIT restores the host part of it (vmexit.restore_host).

    Real hardware writes host state to VM_HSAVE_PA in a format software must not read; keeping
    it in L0 instead is invisible to L1 and survives L2 scribbling over the hsave page."""
    m, st = ext.machine, ext.state
    st.l1_host = bytes(m.ctx.view)
    st.l1_next_rip = m.ctx.u64(OFF_EIP) + VMRUN_LENGTH
    # lazily split in the blob: ask Unicorn. RF is clear in what #VMEXIT restores: VMRUN has
    # completed then, and completing an instruction clears RF (APM vol. 2, 3.1.6).
    st.l1_rflags = ext.dr_flags.read()[2] & ~RFLAGS_RF
    st.vmcb12_pa = vmcb12_pa


def build_vmcb02(ext: "Vcpu", c: Vmcb12Cache, npt: bool, gmet: bool = False) -> intercepts.Merged:
    """vmcb02 in L0 memory: what Unicorn reads while L2 runs (permission maps, ASID, nested
    paging). Returns the merged intercept vectors."""
    m = ext.machine
    l0_misc = struct.unpack_from("<Q", m.hostvm.view(hostvm.VMCB01, VMCB_SIZE),
                                 OFFSETS["intercept_misc1"])[0]
    merged = intercepts.recalc(c, l0_misc)
    buf = m.hostvm.view(VMCB02, VMCB_SIZE)
    _INTERCEPTS.pack_into(buf, OFFSETS["intercept_cr_read"], merged.cr_read, merged.cr_write,
                          merged.dr_read, merged.dr_write, merged.exceptions,
                          merged.misc & 0xFFFFFFFF, merged.misc >> 32)
    # IOPM: never consulted by Unicorn (see extension.on_io).
    _MAPS.pack_into(buf, OFFSETS["iopm_base_pa"], hostvm.IOPM01, hostvm.MSRPM01)
    struct.pack_into("<I", buf, OFFSETS["guest_asid"], c.guest_asid)
    struct.pack_into("<Q", buf, OFFSETS["nested_ctl"],
                     (NESTED_CTL_NP_ENABLE if npt else 0) | (NESTED_CTL_GMET if gmet else 0))
    struct.pack_into("<Q", buf, OFFSETS["n_cr3"], c.n_cr3 if npt else 0)
    return merged


def load_guest(ext: "Vcpu", c: Vmcb12Cache) -> None:
    """Put L2's state (vmcb12's save area) and the merged controls into the CPU context."""
    m = ext.machine
    ctx = m.ctx  # saved at step 1: L1's context, patched into L2's below
    npt = checks.nested_paging_enabled(c, ext.caps)
    gmet = checks.gmet_enabled(c, ext.caps)
    merged = build_vmcb02(ext, c, npt, gmet)
    host_cr4, host_efer = ctx.cr(4), ctx.efer
    # No consistency check names segment or descriptor-table bases, so VMRUN accepts
    # non-canonical ones. They are entered canonical (bits 63:48 copied from bit 47): Unicorn
    # adds the CS base to RIP even in 64-bit mode, where a non-canonical one would make every
    # fetch #GP. (A canonical non-zero CS base in 64-bit mode stays a known difference.)
    for index, (selector, attrib, limit, base) in ((ES, c.es), (CS, c.cs), (SS, c.ss),
                                                   (DS, c.ds)):
        ctx.set_seg(index, Segment.from_vmcb(selector, attrib, limit, canonical(base)))
    ctx.set_seg(GDTR, Segment(0, canonical(c.gdtr_base), c.gdtr_limit, 0))
    ctx.set_seg(IDTR, Segment(0, canonical(c.idtr_base), c.idtr_limit, 0))
    ctx.set_u64(OFF_CR2, c.cr2)
    ctx.set_u64(OFF_CR + 24, c.cr3)
    ctx.load_control_hflags(c.cr0, c.cr4, c.efer, c.cpl)
    ctx.recompute_hflags(cpl=c.cpl)
    ctx.set_u64(OFF_EIP, c.rip)
    ctx.set_u64(OFF_RAX, c.rax)
    ctx.set_u64(OFF_RSP, c.rsp)
    # Controls Unicorn enforces in C.
    ctx.set_u64(OFF_INTERCEPT, merged.misc)
    _CRDR.pack_into(ctx.view, OFF_INTERCEPT_CRDR, merged.cr_read, merged.cr_write,
                    merged.dr_read, merged.dr_write)
    ctx.set_u32(OFF_INTERCEPT_EXC, merged.exceptions)
    ctx.set_u64(OFF_VM_VMCB, VMCB02)
    hf2 = ctx.u32(OFF_HFLAGS2) & ~(HF2_NPT | HF2_GMET)
    if npt:
        hf2 |= HF2_NPT | (HF2_GMET if gmet else 0)
        ctx.set_u64(OFF_NESTED_CR3, c.n_cr3)
        ctx.set_u32(OFF_NESTED_PG_MODE, nested_pg_mode(host_cr4, host_efer))
    else:
        ctx.set_u64(OFF_NESTED_CR3, 0)
        ctx.set_u32(OFF_NESTED_PG_MODE, 0)
    ctx.set_u32(OFF_HFLAGS2, hf2)
    ctx.restore()
    l1_dr7 = m.breakpoints.dr7()
    ext.dr_flags.write(c.dr7, c.dr6, c.rflags)
    m.breakpoints.loaded(l1_dr7)
    flush_tlb(m.uc)


_INJECT_KIND = {EVENTINJ_TYPE_EXCEPTION: Kind.EXCEPTION, EVENTINJ_TYPE_NMI: Kind.EXTERNAL,
                EVENTINJ_TYPE_SOFT_INT: Kind.SOFTWARE}


def inject_event(ext: "Vcpu", c: Vmcb12Cache) -> None:
    """Deliver EVENTINJ through L2's IDT as the first thing L2 sees (APM 15.20).

    The injected event itself is never intercepted; an exception raised while delivering it can
    be, and then EXITINTINFO reports the injected event."""
    _, vector, etype, err = eventinj_decode(c.eventinj)
    event = Event(vector, _INJECT_KIND.get(etype, Kind.EXTERNAL), err)
    return_rip = c.nrip if etype == EVENTINJ_TYPE_SOFT_INT and c.nrip else c.rip
    ext.machine.deliver_event(event, return_rip, injected=True)
