"""Nested SVM plugged into the machine: identity, MSRs, instructions and the exit router.

Where things live: VMRUN in vmrun.py; the way out of L2 in reflect.py ("does L1 want this exit"
and the one call into #VMEXIT, vmexit.py); the per-class intercept predicates and the merge of
L0's and L1's intercepts in intercepts.py; VMLOAD/VMSAVE/STGI/CLGI/INVLPGA/VMMCALL in
instructions.py; PAT models in pat.py; consistency checks in checks.py; the VMCB layout in
emu/arch/vmcb.py.
"""
from __future__ import annotations

import functools
import operator
from typing import Any, Callable

from emu.arch.decode import decoder
from unicorn.x86_const import (UC_X86_REG_DR7, UC_X86_REG_RCX, UC_X86_REG_RFLAGS,
                               UC_X86_REG_RIP)

from emu.engine import hostvm
from emu.arch.vmcb import (VMEXIT_CLGI, VMEXIT_INVLPGA, VMEXIT_SKINIT, VMEXIT_STGI, VMEXIT_VMLOAD,
                           VMEXIT_VMMCALL, VMEXIT_VMRUN, VMEXIT_VMSAVE)
from emu.arch.msrs import MSR_VM_CR, MSR_VM_HSAVE_PA
from emu.core.control_regs import cr4_allowed
from emu.core.cpuid import CPUID_80000001_ECX_SVM, LEAF_SVM_FEATURES
from emu.core.cpu_models import FEATURES, SVM_IMPLEMENTED
from emu.core import msrs_amd
from emu.core.msrs_amd import CPUID_80000001_EDX_LM, efer_allowed
from emu.errors import SnapshotError, Unsupported
from emu.core.snapshot_check import check_cpu
from emu.core.extension import ExitRouter, Extension, WorldPaging
from emu.engine.hw_switch import OFF_EIP, RegBatch
from emu.core.interrupts import HAS_ERROR_CODE, PF, SX, SX_INIT_REDIRECTED, Event, Kind
from emu.core.machine import Machine
from emu.core.msr import EFER_SVME, GeneralProtection
from emu.arch.paging import NestedFault

from svm_ext import instructions
from svm_ext import ioio
from svm_ext import memview
from svm_ext import npf
from svm_ext import pat
from svm_ext import pause_filter
from svm_ext import reflect
from svm_ext import vmrun as vmrun_mod
from svm_ext import debugview
from svm_ext import decode_assists
from svm_ext import hw_quirks
from svm_ext import vintr
from .checks import HostCaps, nested_paging_enabled
from .fast_insn import FastInsn
from .fast_l2_msr import FastL2Msr
from svm_ext import fast_switch
from .fast_switch import FastSwitch
from .state import NestedState
from svm_ext import switch_cache
from .switch_cache import CachedSteps
from .switch_steps import FullSteps
from emu.arch.vmcb import (EVENTINJ_TYPE_EXCEPTION, EVENTINJ_TYPE_INTR, EVENTINJ_TYPE_NMI,
                   EVENTINJ_TYPE_SOFT_INT, VMEXIT_EXCP0, VMEXIT_ICEBP, VMEXIT_INTR, VMEXIT_INVLPG, VMEXIT_IOIO,
                   VMEXIT_IRET, VMEXIT_MSR,
                   VMEXIT_NPF, VMEXIT_PAUSE, VMEXIT_SHUTDOWN, eventinj_encode, exit_name)

VM_CR_DPD = 1 << 0
VM_CR_R_INIT = 1 << 1
VM_CR_DIS_A20M = 1 << 2
VM_CR_LOCK = 1 << 3
VM_CR_SVMDIS = 1 << 4
VM_CR_WRITABLE = VM_CR_DPD | VM_CR_R_INIT | VM_CR_DIS_A20M | VM_CR_LOCK | VM_CR_SVMDIS

SVM_REVISION = 1
SVM_NUM_ASIDS = 16
SVM_FEATURE_NP = FEATURES["npt"][3]
SVM_FEATURE_NRIPS = FEATURES["nrip-save"][3]
SVM_FEATURE_VGIF = FEATURES["vgif"][3]       # virtual GIF (svm_ext/instructions.py, vintr.py)
# CPUID 8000_000A EDX: every SVM feature svm_ext implements (the model hides what it lacks).
SVM_FEATURES_EDX = functools.reduce(operator.or_, (FEATURES[n][3] for n in SVM_IMPLEMENTED))

# Exit codes that stand for an intercepted instruction, for which NRIP is reported.
_INSTRUCTION_EXITS = frozenset(range(0x00, 0x40)) | frozenset(range(0x65, 0x7D)) | frozenset(
    range(0x80, 0x90))


_TWO_BYTE = frozenset({0x08, 0x09, 0x30, 0x31, 0x32, 0x33, 0xA2})   # INVD WBINVD WRMSR RDTSC RDMSR RDPMC CPUID


def fixed_length(code: bytes) -> int:
    """Length of the prefix-free, fixed-size encodings most intercepts stop on (0 if unsure):
    0F 01 /reg-form (VMRUN..INVLPGA, RDTSCP, MONITOR, MWAIT, XSETBV, ...), the two-byte 0F xx
    system instructions, HLT and PAUSE. Anything else is decoded in full."""
    if len(code) >= 3 and code[0] == 0x0F and code[1] == 0x01 and code[2] >= 0xC0:
        return 3
    if len(code) >= 2 and code[0] == 0x0F and code[1] in _TWO_BYTE:
        return 2
    if code[:1] == b"\xF4":
        return 1
    if code[:2] == b"\xF3\x90":
        return 2
    return 0


class SvmExtension(Extension, ExitRouter):
    name = "svm"

    def __init__(self, pat_model: str = "architectural") -> None:
        self.state = NestedState()
        # The one seam of the world switch's heavy steps: cached, or FullSteps() to compute each.
        self.steps: FullSteps = CachedSteps()
        self.pat = pat.make(pat_model)
        self.caps = HostCaps()
        self.last_invalid_reason: str | None = None
        self.explained_rules: set[str] = set()   # consistency rules already told on stderr

    # ---- wiring -------------------------------------------------------------------------------
    def for_another_cpu(self) -> "SvmExtension":
        """Each CPU has its own nested state (GIF, L2, vmcb12, hPAT/gPAT), same PAT model."""
        return SvmExtension(pat_model=self.pat.name)

    def attach(self, machine: Machine) -> None:
        self.machine = machine
        # Registers the world switch moves that the context blob holds only lazily or not at all.
        self.dr_flags = RegBatch(machine.uc, [reg for reg, _ in switch_cache.VOLATILE_BY_REGISTER])
        self.host_flags = RegBatch(machine.uc, [UC_X86_REG_RFLAGS, UC_X86_REG_DR7])
        machine.cpuid.set_bits(0x80000001, 2, CPUID_80000001_ECX_SVM)
        machine.cpuid.set_leaf(LEAF_SVM_FEATURES, 0, (SVM_REVISION, SVM_NUM_ASIDS, 0,
                                                      SVM_FEATURES_EDX))
        # What the model lets L1 see of them: the features L1 may rely on.
        self.svm_features = machine.cpuid.query(LEAF_SVM_FEATURES, 0)[3]
        self.pause_window = pause_filter.PauseWindow(self)
        machine.msrs.efer_writable |= EFER_SVME
        self.caps = self.caps.replace(        # VMRUN's checks follow the CPU model
            cr4_supported=cr4_allowed(machine.cpuid),
            efer_supported=efer_allowed(machine.cpuid),
            long_mode=bool(machine.cpuid.query(0x80000001, 0)[3] & CPUID_80000001_EDX_LM),
            vnmi=bool(self.svm_features & vintr.FEATURE_VNMI),
            gmet=bool(self.svm_features & FEATURES["gmet"][3]))
        machine.msrs.efer_write_hooks.append(self._efer_write)
        machine.msrs.register(MSR_VM_CR, lambda: self.state.vm_cr, self._write_vm_cr)
        machine.msrs.register(MSR_VM_HSAVE_PA, lambda: self.state.hsave_pa, self._write_hsave_pa)
        self.pat.attach(self)
        for code, handler in ((VMEXIT_VMRUN, vmrun_mod.vmrun),
                              (VMEXIT_VMLOAD, instructions.vmload),
                              (VMEXIT_VMSAVE, instructions.vmsave),
                              (VMEXIT_STGI, instructions.stgi),
                              (VMEXIT_CLGI, instructions.clgi),
                              (VMEXIT_INVLPGA, instructions.invlpga),
                              (VMEXIT_VMMCALL, instructions.vmmcall),
                              (VMEXIT_SKINIT, instructions.skinit)):
            machine.register_exit(code, lambda code, h=handler: h(self, code))
        for code, handler in ((VMEXIT_STGI, instructions.stgi), (VMEXIT_CLGI, instructions.clgi)):
            machine.register_exit(code, lambda code, h=handler: self._gif_insn(h, code))
        # L1's VMLOAD and VMSAVE move state between the CPU and a VMCB in RAM only: replayed
        # world switches around them may go on in C (emu/core/fast_exits.py).
        for code in (VMEXIT_VMLOAD, VMEXIT_VMSAVE):
            machine.fast_exits.neutral_exit(code, instructions.INSN_LENGTH)
        machine.router = self
        # Repeated world switches replayed in C (fast_switch.py); not while the switch cache is
        # being verified against the full path, which needs every switch in Python.
        self.fast = (FastSwitch(self, machine.replay)
                     if machine.replay is not None and not switch_cache.VERIFY else None)
        # L1's VMLOAD/VMSAVE/STGI/CLGI answered in C while the fast exits are armed.
        self.fast_insn = FastInsn(self)
        # L2's MSR accesses that end in #GP from L0, answered in C in a replay state.
        self.fast_l2_msr = FastL2Msr(self, self.fast, fast_switch.MAX_STATES + 1)

    def level(self) -> str:
        return "L2" if self.state.in_l2 else "L1"

    def world_summary(self) -> str:
        return debugview.world_summary(self)

    def control_block(self) -> list[tuple[str, int]]:
        return debugview.control_block(self)

    def last_exit(self) -> str | None:
        return debugview.last_exit(self)

    def world_switches(self) -> tuple[int, int, dict[str, int]]:
        st = self.state
        by_name = {exit_name(code): n for code, n in sorted(st.exit_codes.items(),
                                                            key=lambda kv: -kv[1])}
        return st.stats["vmrun"], st.stats["vmexit"], by_name

    def switches_so_far(self) -> int:
        st = self.state
        unsynced = self.fast.unsynced() if self.fast is not None else 0
        return st.stats["vmrun"] + st.stats["vmexit"] + unsynced

    def address_space(self) -> str:
        st = self.state
        if st.in_l2 and st.vmcb12 is not None:
            return f"L2.asid{st.vmcb12.guest_asid}"
        return "L1"

    def tracing(self) -> bool:
        t = self.machine.tracer
        return t is not None and t.on("exits")

    def trace(self, text: str, where: str | None = None) -> None:
        """One `exits` trace line; `where` is the location captured before a world switch."""
        if self.tracing():
            self.machine.tracer.line("exits", where or self.machine.where(), text)

    @staticmethod
    def exit_name(code: int) -> str:
        return exit_name(code)

    def _gif_insn(self, handler: Callable[["SvmExtension", int], None], code: int) -> None:
        """STGI or CLGI, then (in L1) their replay program (fast_switch.gif_done)."""
        m = self.machine
        rip = m.ctx.save().u64(OFF_EIP)
        handler(self, code)
        if self.fast is not None:
            self.fast.gif_done(hostvm.UC_EXIT_BASE + code, m.replay_entry_state, rip,
                               instructions.INSN_LENGTH)

    # ---- MSRs -----------------------------------------------------------------------------------
    def _efer_write(self, old: int, new: int) -> None:
        if new & EFER_SVME and not old & EFER_SVME and self.state.vm_cr & VM_CR_SVMDIS:
            raise GeneralProtection("EFER.SVME set while VM_CR.SVMDIS is 1")

    def _write_vm_cr(self, value: int) -> None:
        st = self.state
        if value & ~VM_CR_WRITABLE:
            raise GeneralProtection(f"WRMSR VM_CR: reserved bits in {value:#x}")
        if st.vm_cr & VM_CR_LOCK and (value ^ st.vm_cr) & (VM_CR_SVMDIS | VM_CR_LOCK):
            raise GeneralProtection("WRMSR VM_CR: SVMDIS and LOCK are locked")
        st.vm_cr = value

    def _write_hsave_pa(self, value: int) -> None:
        if value & 0xFFF or value >> hostvm.MAXPHYADDR:
            raise GeneralProtection(f"WRMSR VM_HSAVE_PA: {value:#x} is not a 4 KiB-aligned "
                                    "physical address")
        self.state.hsave_pa = value

    # ---- the exit router: what happens to events while L2 runs ------------------------------------
    def on_exit(self, code: int) -> bool:
        st = self.state
        if not st.in_l2 or VMEXIT_EXCP0 <= code < VMEXIT_INTR:
            return False      # exceptions: the machine delivers, on_exception decides first
        m = self.machine
        ctx = m.ctx.save()
        info1 = ctx.error_code
        msr_index = m.uc.reg_read(UC_X86_REG_RCX) & 0xFFFFFFFF if code == VMEXIT_MSR else 0
        assert st.vmcb12 is not None
        if code in hw_quirks.CODES:     # where Unicorn's SVM is not the APM's
            taken = hw_quirks.route(self, st.vmcb12, code)
            if taken is not None:
                return taken
        if code == VMEXIT_PAUSE and pause_filter.absorbed(self, st.vmcb12):
            return True
        # Not recorded: #NPF; INVLPG with decode assists (EXITINFO1 is the address its operand
        # names, from registers a program does not guard); exits under LBR virtualization (they
        # move the LBR MSRs, which no program does).
        before = (self.fast.begin(st.vmcb12_pa)
                  if self.fast is not None and code != VMEXIT_NPF and not st.lbrv
                  and not (code == VMEXIT_INVLPG and decode_assists.enabled(self)) else None)
        reads: list[tuple[int, bytes]] = []     # what the decision read: a program's guards
        read_phys = m.mem.read_phys if before is None else self._recording_reader(reads)
        if not reflect.exit_handled(st.vmcb12, code, read_phys, info1=info1, msr_index=msr_index):
            if code == VMEXIT_NPF:
                raise Unsupported("nested page fault with nested paging off")
            if code == VMEXIT_IRET:       # L0's own IRET intercept: a virtual NMI's blocking ends
                vintr.on_iret(self, st.vmcb12)
            elif code == VMEXIT_MSR:
                self.fast_l2_msr.note(ctx.u64(OFF_EIP), msr_index)
            return False
        info2 = 0
        insn = None
        if code == VMEXIT_NPF:     # Unicorn gives the low 32 bits only: npf.py completes them
            info1, info2 = npf.exit_info(self, info1, m.hostvm.exitinfo2(vmrun_mod.VMCB02))
            insn = decode_assists.fetch_bytes(self)
        try:
            nrip = self.next_rip() if code in _INSTRUCTION_EXITS else 0
            if code not in (VMEXIT_MSR, VMEXIT_NPF):
                info1 = decode_assists.exit_info1(self, code)   # 0 without decode assists
        except NestedFault as fault:
            # Fetching the instruction itself faults in the nested walk (Unicorn ran it from a
            # translation it kept): the fetch comes before any intercept of the instruction, so
            # the exit is that #NPF (APM vol. 2, 15.25.6), with no instruction bytes.
            info1, info2 = npf.exit_info(self, fault.exitinfo1 & 0xFFFFFFFF, fault.exitinfo2)
            reflect.reflect(self, VMEXIT_NPF, info1, info2)
            decode_assists.store_bytes(self, b"" if decode_assists.enabled(self) else None)
            return True
        rip = ctx.u64(OFF_EIP)
        reflect.reflect(self, code, info1, info2, 0, nrip)
        decode_assists.store_bytes(self, insn)
        if self.fast is not None:
            self.fast.exit_done(before, code, rip, nrip, reads)
        return True

    def _recording_reader(self, reads: list[tuple[int, bytes]]) -> Callable[[int, int], bytes]:
        read = self.machine.mem.read_phys

        def read_phys(pa: int, n: int) -> bytes:
            data = bytes(read(pa, n))
            reads.append((pa, data))
            return data
        return read_phys

    def on_exception(self, event: Event, during: Event | None) -> bool:
        st = self.state
        if not st.in_l2 or st.vmcb12 is None:
            return False
        if event.icebp and reflect.exit_handled(st.vmcb12, VMEXIT_ICEBP):
            # The ICEBP intercept is an instruction intercept: checked before the #DB exists,
            # RIP at the instruction, NRIP after it.
            rip = self.machine.ctx.save().u64(OFF_EIP)
            reflect.reflect(self, VMEXIT_ICEBP, 0, 0, self._intinfo(during), rip + event.insn_len)
            return True
        code = VMEXIT_EXCP0 + event.vector
        if not reflect.exit_handled(st.vmcb12, code):
            return False
        info1 = (event.error_code or 0) if event.vector in HAS_ERROR_CODE else 0
        info2 = (event.cr2 or 0) if event.vector == PF else 0
        insn = decode_assists.fetch_bytes(self) if event.vector == PF else None
        reflect.reflect(self, code, info1, info2, self._intinfo(during))
        decode_assists.store_bytes(self, insn)
        return True

    def on_nested_fault(self, fault: NestedFault, during: Any | None) -> bool:
        if not self.state.in_l2:
            return False
        insn = decode_assists.fetch_bytes(self)
        reflect.reflect(self, VMEXIT_NPF, fault.exitinfo1, fault.exitinfo2, self._intinfo(during))
        decode_assists.store_bytes(self, insn)
        return True

    # ---- interrupts (vintr.py; the machine asks at its interrupt points) ----------------------
    def gif(self) -> bool:
        return self.state.gif

    def physical_if(self) -> bool | None:
        return vintr.physical_if(self)

    def on_interrupt(self, vector: int) -> bool:
        return vintr.on_interrupt(self, vector)

    def on_nmi(self) -> bool:
        return vintr.on_nmi(self)

    def on_smi(self) -> bool:
        return vintr.on_smi(self)

    def on_init(self) -> bool:
        """#VMEXIT(INIT) when L2 runs under the INIT intercept; else, with VM_CR.R_INIT set, the
        INIT becomes #SX with error code 1 (APM vol. 2, 15.29 "Security Exception")."""
        if vintr.on_init(self):
            return True
        if not self.state.vm_cr & VM_CR_R_INIT:
            return False
        m = self.machine
        m.apic.init_pending = False
        m.deliver_now(Event(SX, Kind.EXCEPTION, SX_INIT_REDIRECTED), m.uc.reg_read(UC_X86_REG_RIP))
        return True

    def on_interrupt_window(self) -> int:
        return vintr.window(self)

    def on_shutdown(self, reason: str) -> bool:
        st = self.state
        if st.in_l2 and st.vmcb12 is not None and reflect.exit_handled(st.vmcb12, VMEXIT_SHUTDOWN):
            reflect.reflect(self, VMEXIT_SHUTDOWN)
            return True
        return False

    def on_io(self, port: int, size: int, is_in: bool) -> Callable[[], None] | None:
        """An L2 port access that L1's IOPM intercepts becomes a #VMEXIT(IOIO) at the IN/OUT,
        with nothing performed (APM 15.10.2); EXITINFO2 and NRIP are the next RIP."""
        st = self.state
        c = st.vmcb12
        m = self.machine
        if not st.in_l2 or c is None or not reflect.exit_handled(c, VMEXIT_IOIO, m.mem.read_phys,
                                                                 port=port, size=size):
            return None
        rip = m.uc.reg_read(UC_X86_REG_RIP)      # synced for the hook; the blob's copy is not
        insn = ioio.decode(m.mem.read_code(rip, 15), m.ctx.save().mode_bits())
        if insn is None:
            raise Unsupported(f"port access at rip {rip:#x} is not an IN/OUT/INS/OUTS")
        if insn.string and insn.is_in:
            raise Unsupported(f"INS from port {port:#x} at rip {rip:#x}, which L1's "
                              "IOPM intercepts (Unicorn stores to ES:rDI before the I/O hook, so "
                              "the instruction cannot be undone)")
        info1, nrip = insn.exitinfo1(port, size), rip + insn.length
        return lambda: reflect.reflect(self, VMEXIT_IOIO, info1, nrip, 0, nrip)

    def _intinfo(self, during: Event | None) -> int:
        """EXITINTINFO: the event whose delivery the exit interrupted, as the APM encodes it."""
        if during is None:
            return 0
        if during.kind is Kind.EXCEPTION or (during.kind is Kind.SOFTWARE
                                            and during.vector in (3, 4)):
            etype = EVENTINJ_TYPE_EXCEPTION
        elif during.kind is Kind.SOFTWARE:
            etype = EVENTINJ_TYPE_SOFT_INT
        elif during.vector == 2:
            etype = EVENTINJ_TYPE_NMI
        else:
            etype = EVENTINJ_TYPE_INTR
        return eventinj_encode(during.vector, etype, during.error_code)

    def next_rip(self) -> int:
        """nRIP: the address after the intercepted instruction (decoded, so prefixes count)."""
        m = self.machine
        ctx = m.ctx.save()
        rip = ctx.u64(OFF_EIP)
        code = m.mem.read_code(rip, 15)
        length = fixed_length(code)
        if length:
            return rip + length
        for ins in decoder(ctx.mode_bits()).disasm(code, rip, 1):
            return rip + ins.size
        return 0

    def world_paging(self, world: str) -> "WorldPaging | None":
        return memview.world_paging(self, world)

    # ---- snapshots ------------------------------------------------------------------------------
    def snapshot_state(self) -> dict[str, Any]:
        return dict(nested=self.state.to_dict(), pat=self.pat.state())

    def _check_snapshot_state(self, st: NestedState) -> None:
        """A snapshot comes from anywhere: L2 state must be whole (vmcb12 cached and inside RAM,
        L1's host context complete and itself valid), so that the #VMEXIT it will take restores
        a real L1 instead of reading past RAM or loading a short context."""
        ram = self.machine.ram_size
        page = 0x1000

        def bad(msg: str) -> SnapshotError:
            return SnapshotError(f"the snapshot's nested SVM state is invalid: {msg}")

        if st.vmcb12_pa % page or st.vmcb12_pa + page > ram:
            raise bad(f"vmcb12 at {st.vmcb12_pa:#x} is not a page inside RAM")
        if st.hsave_pa % page or st.hsave_pa >> 52:
            raise bad(f"VM_HSAVE_PA {st.hsave_pa:#x} is not a page-aligned physical address")
        if not 0 <= st.v_tpr <= 15:
            raise bad(f"V_TPR {st.v_tpr} is outside 0-15")
        if st.in_l2:
            if st.vmcb12 is None:
                raise bad("L2 is running but no vmcb12 is cached")
            if len(st.l1_host) != len(self.machine.ctx.view):
                raise bad(f"L1's saved host context is {len(st.l1_host)} bytes, not "
                          f"{len(self.machine.ctx.view)}")
            check_cpu(st.l1_host, self.machine.cpuid, "L1 host context")

    def power_on_reset(self, state: dict[str, Any]) -> None:
        """The nested state as at power-on; the run's VMRUN/#VMEXIT counts go on (the run
        summary and `vmrun:N` points count the whole run)."""
        stats, exit_codes = dict(self.state.stats), dict(self.state.exit_codes)
        self.load_snapshot_state(state)
        self.state.stats, self.state.exit_codes = stats, exit_codes

    def load_snapshot_state(self, state: dict[str, Any]) -> None:
        nested = NestedState.from_dict(state["nested"])
        self._check_snapshot_state(nested)
        self.state = nested
        self.steps.clear()       # derived from the context being replaced
        if self.fast is not None:
            self.fast.clear()
        st = self.state                 # VMRUN set the running guest's TSC_OFFSET; #VMEXIT clears it
        self.machine.tsc_offset = st.vmcb12.tsc_offset if st.in_l2 and st.vmcb12 else 0
        self.machine.tsc_ratio = (vmrun_mod.tsc_ratio(self) if st.in_l2
                                  else msrs_amd.TSC_RATIO_RESET)
        pat_state = dict(state["pat"])
        if "gpat" not in pat_state:   # format 1: see PatModel.load_state
            c = self.state.vmcb12
            pat_state["gpat_valid"] = bool(self.state.in_l2 and c is not None
                                          and nested_paging_enabled(c, self.caps))
        self.pat.load_state(pat_state)

