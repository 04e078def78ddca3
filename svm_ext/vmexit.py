"""#VMEXIT: L2 leaves, L1 resumes after its VMRUN (AMD APM vol. 2, 15.6 "#VMEXIT").

For L1 the whole of L2's run is one instruction, VMRUN: single-stepping it (RFLAGS.TF set at
VMRUN) raises the #DB trap after the #VMEXIT, at the instruction after VMRUN (APM 15.5.1), and
so does a VMRUN that fails its consistency checks.

The steps mirror vmrun.py:
  1. L2's state -> vmcb12's save area ........................... store_guest
  2. exit code and information -> vmcb12's control area ........ store_exit_info
  3. host state back into the CPU from what VMRUN kept ......... restore_host
  4. GIF=0, PAT model, world observers

What #VMEXIT does *not* restore is as important: general registers other than RAX/RSP, FS, GS,
TR, LDTR and the MSRs VMLOAD/VMSAVE move keep L2's values, exactly as on hardware.
"""
from __future__ import annotations

import struct
import sys
from typing import TYPE_CHECKING


from emu.engine.hw_switch import (flush_tlb, CS, DS, ES, GDTR, IDTR, OFF_CR, OFF_EFER, OFF_EIP, OFF_HFLAGS2,
                           OFF_INTERCEPT, OFF_NESTED_PG_MODE, OFF_RAX, OFF_RSP, OFF_VM_VMCB, SS, Context,
                           SEG_SIZE, OFF_SEGS)

from svm_ext import lbrv, vintr
from emu.arch.bits import DR7_RESET, RFLAGS_TF
from emu.core.msrs_amd import TSC_RATIO_RESET
from emu.arch.vmcb import OFFSETS, VMEXIT_INVALID, Vmcb

if TYPE_CHECKING:
    from .vcpu import Vcpu

HOST_DR7 = DR7_RESET     # #VMEXIT clears DR7 of the host, as RESET leaves it
# Blob span holding the SVM controls Unicorn enforces (intercept words through nested_pg_mode).
_CONTROLS = slice(OFF_INTERCEPT, OFF_NESTED_PG_MODE + 4)
_QQ = struct.Struct("<Q")


def vmexit(ext: "Vcpu", exitcode: int, info1: int = 0, info2: int = 0,
           intinfo: int = 0, nrip: int = 0) -> None:
    m, st = ext.machine, ext.state
    where = m.where() if ext.tracing() else None
    ctx = m.ctx.save()
    vm = Vmcb(m.mem.view, st.vmcb12_pa)
    # Step 1 (through ext.steps: the switch cache skips re-encoding what cannot have changed)
    ext.steps.store_guest(ext, ctx, vm)
    # Step 2
    store_exit_info(vm, exitcode, info1, info2, intinfo, nrip)
    vintr.store(ext, ctx, vm)      # V_IRQ, V_TPR, interrupt shadow
    lbrv.on_vmexit(ext, vm)        # the guest's LBR state out, the host's back
    # Step 3
    ext.pat.on_vmexit(ext, vm)
    ext.steps.restore_host(ext, ctx)
    # Step 4
    st.gif = False
    st.in_l2 = False
    st.stats["vmexit"] += 1
    st.exit_codes[exitcode] = st.exit_codes.get(exitcode, 0) + 1
    m.tsc_offset = 0
    m.tsc_ratio = TSC_RATIO_RESET
    if where is not None:        # tracing: format the line only then (hot path)
        ext.trace(f"#VMEXIT {ext.exit_name(exitcode)} info1 {info1:#x} info2 {info2:#x}"
                  + (f" intinfo {intinfo:#x}" if intinfo else "")
                  + f" -> L1 rip {st.l1_next_rip:#x}", where)
    m.world_changed("L2", "L1")
    if st.l1_rflags & RFLAGS_TF:
        m.single_step_trap(st.l1_next_rip)


# The save-area runs #VMEXIT writes, each packed in one call (offsets from vmcb.FIELDS).
_SEGS4 = struct.Struct("<" + "HHIQ" * 4)        # ES CS SS DS, contiguous
_DTR = struct.Struct("<HHIQ")
_CTRL = struct.Struct("<7Q")                     # CR4 CR3 CR0 DR7 DR6 RFLAGS RIP, contiguous
_EXIT_INFO = struct.Struct("<4Q")                # EXITCODE EXITINFO1 EXITINFO2 EXITINTINFO
assert [OFFSETS[n] for n in ("exitcode", "exitinfo1", "exitinfo2", "exitintinfo")] == \
    [OFFSETS["exitcode"] + 8 * i for i in range(4)]
assert [OFFSETS[n] for n in ("es", "cs", "ss", "ds")] == [OFFSETS["es"] + 16 * i for i in range(4)]
assert [OFFSETS[n] for n in ("cr4", "cr3", "cr0", "dr7", "dr6", "rflags", "rip")] == \
    [OFFSETS["cr4"] + 8 * i for i in range(7)]


def store_guest(ext: "Vcpu", ctx: Context, vm: Vmcb) -> None:
    m = ext.machine
    buf, base = m.mem.view, ext.state.vmcb12_pa
    dr7, dr6, rflags = ext.dr_flags.read()
    rip, rsp, rax = ctx.u64(OFF_EIP), ctx.u64(OFF_RSP), ctx.u64(OFF_RAX)
    segs = []
    for index in (ES, CS, SS, DS):
        seg = ctx.seg(index)
        segs += (seg.selector, seg.vmcb_attrib, seg.limit, seg.base)
    _SEGS4.pack_into(buf, base + OFFSETS["es"], *segs)
    gdtr, idtr = ctx.seg(GDTR), ctx.seg(IDTR)
    _DTR.pack_into(buf, base + OFFSETS["gdtr"], 0, 0, gdtr.limit, gdtr.base)
    _DTR.pack_into(buf, base + OFFSETS["idtr"], 0, 0, idtr.limit, idtr.base)
    buf[base + OFFSETS["cpl"]] = ctx.cpl
    _QQ.pack_into(buf, base + OFFSETS["efer"], ctx.efer)
    _CTRL.pack_into(buf, base + OFFSETS["cr4"], ctx.cr(4), ctx.cr(3), ctx.cr(0), dr7, dr6, rflags,
                    rip)
    _QQ.pack_into(buf, base + OFFSETS["rsp"], rsp)
    _QQ.pack_into(buf, base + OFFSETS["rax"], rax)
    _QQ.pack_into(buf, base + OFFSETS["cr2"], ctx.cr(2))


def store_exit_info(vm: Vmcb, exitcode: int, info1: int, info2: int, intinfo: int,
                    nrip: int) -> None:
    (buf, base), mask = vm.location, 0xFFFFFFFFFFFFFFFF
    _EXIT_INFO.pack_into(buf, base + OFFSETS["exitcode"], exitcode & mask, info1 & mask,
                         info2 & mask, intinfo)
    _QQ.pack_into(buf, base + OFFSETS["nrip"], nrip)
    _QQ.pack_into(buf, base + OFFSETS["eventinj"], 0)   # taken, or reported in EXITINTINFO


def restore_host(ext: "Vcpu", ctx: Context) -> None:
    """Load L1's host state (APM 15.6: segments ES/CS/SS/DS, GDTR, IDTR, CR0/3/4, EFER, RFLAGS,
    RIP, RSP, RAX, CPL 0, DR7 with breakpoints off) into the current context."""
    st = ext.state
    host = memoryview(st.l1_host)
    for index in (ES, CS, SS, DS, GDTR, IDTR):
        off = OFF_SEGS + index * SEG_SIZE
        ctx.view[off:off + SEG_SIZE] = host[off:off + SEG_SIZE]
    cr0, cr3, cr4 = (_QQ.unpack_from(host, OFF_CR + 8 * n)[0] for n in (0, 3, 4))
    efer = _QQ.unpack_from(host, OFF_EFER)[0]
    ctx.set_u64(OFF_CR + 24, cr3)
    ctx.load_control_hflags(cr0, cr4, efer, 0)
    ctx.recompute_hflags(cpl=0)
    ctx.view[_CONTROLS] = host[_CONTROLS]
    ctx.set_u64(OFF_VM_VMCB, _QQ.unpack_from(host, OFF_VM_VMCB)[0])
    ctx.set_u32(OFF_HFLAGS2, struct.unpack_from("<I", host, OFF_HFLAGS2)[0])
    restore_host_volatile(ext, ctx)


def restore_host_volatile(ext: "Vcpu", ctx: Context) -> None:
    """The host fields every #VMEXIT moves one by one (the switch cache replays the rest):
    RIP after the VMRUN, RAX, RSP, RFLAGS, DR7."""
    st = ext.state
    host = memoryview(st.l1_host)
    ctx.set_u64(OFF_EIP, st.l1_next_rip)
    ctx.set_u64(OFF_RAX, _QQ.unpack_from(host, OFF_RAX)[0])
    ctx.set_u64(OFF_RSP, _QQ.unpack_from(host, OFF_RSP)[0])
    ctx.restore()
    l2_dr7 = ext.machine.breakpoints.dr7()
    ext.host_flags.write(st.l1_rflags, HOST_DR7)
    ext.machine.breakpoints.loaded(l2_dr7)
    flush_tlb(ext.machine.uc)


def fail_vmrun(ext: "Vcpu", rule: str, where: str | None = None) -> None:
    """Consistency checks failed: #VMEXIT with VMEXIT_INVALID before any L2 instruction, so L1
    simply continues after its VMRUN with EXITCODE = -1 in vmcb12."""
    m, st = ext.machine, ext.state
    vm = Vmcb(m.mem.view, st.vmcb12_pa)
    vm.exitcode = VMEXIT_INVALID
    vm.exitinfo1 = 0
    vm.exitinfo2 = 0
    vm.exitintinfo = 0
    st.gif = False
    st.stats["vmexit"] += 1
    st.exit_codes[VMEXIT_INVALID] = st.exit_codes.get(VMEXIT_INVALID, 0) + 1
    m.ctx.set_rip(st.l1_next_rip)
    ext.trace(f"vmrun vmcb12 {st.vmcb12_pa:#x} failed its consistency checks: {rule} "
              "-> VMEXIT_INVALID", where)
    ext.last_invalid_reason = rule
    _explain_once(ext, rule, where)
    ext.host_flags.write(st.l1_rflags, ext.host_flags.read()[1])    # VMRUN completed: RF clear
    if st.l1_rflags & RFLAGS_TF:
        m.single_step_trap(st.l1_next_rip)


def _explain_once(ext: "Vcpu", rule: str, where: str | None) -> None:
    """A failed VMRUN is silent to L1 except for EXITCODE = -1, which is easy to miss: tell the
    user which rule (and APM section) it broke, once per rule, unless -q or an exits trace
    (which already says it) is on."""
    if not ext.machine.explain or ext.tracing() or rule in ext.explained_rules:
        return
    ext.explained_rules.add(rule)
    print(f"svmemu: VMRUN at {where or ext.machine.where()} failed its consistency checks "
          f"(VMEXIT_INVALID): {rule}", file=sys.stderr)
