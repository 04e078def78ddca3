"""L1's exceptions delivered through its IDT in C (emu/engine/deliver.c), with
emu/core/interrupts.py as the reference.

A kernel that faults once per step (kvm-unit-tests' msr_intercept_check probes ~49,000 MSR
indices with rdmsr_safe/wrmsr_safe, most of them unknown and raising #GP) paid for each fault an
engine stop, a Python delivery and a new run-loop turn, for a few table reads and one stack
store. While the fast exits are armed (emu/core/fast_exits.py: nothing but the answer would
happen in Python, every Python entry disarms first) the C hook delivers instead:

- exceptions whose intercept exit arrives while L1 runs (vmcb01, no nested paging: an L2's go
  through the router, which asks L1's intercepts first), for the vectors in DELIVERED_HERE, as
  Machine._exit_exception raises them: the exit's error code for vectors that have one, CR2
  from EXITINFO2 for #PF;
- interrupts the interrupt point delivers (irq.py, Machine.deliver_now), in L1 or an L2 that
  takes them itself;
- L1's INT3 and INT n spelled without prefixes (CC, CD ib), decoded as Machine._exit_intn
  does, the gate's DPL checked against the CPL;
- #GP(0) for L1's RDMSR or WRMSR of an index the MSR file has no owner for, as
  Machine._exit_msr raises it; the table of implemented indices is rebuilt at an arming
  whenever an owner was registered since (MsrFile.generation). Reserved-bit checks of
  implemented MSRs stay in Python.

deliver.c takes only 64-bit mode, interrupt and trap gates to 64-bit code, and only when every
check passes and every page walk would change nothing (present, accessed, permitted; a written
page already dirty): anything else (not-present gate, limits, a fault while delivering and the
#DF rules, compatibility or legacy modes, an A/D bit to set) leaves the CPU untouched and the
exception goes to Python. With several CPUs the frame's store is logged in the code group, as
GuestMemory's are (the other engines drop code it overwrote). Nothing must be signalled by the
APIC: Python's path looks at interrupts right after each delivery, so while an interrupt waits
for RFLAGS.IF only deliveries that leave IF clear are made in C (deliver.h `window`).
`svmemu run --no-replay` turns it off with the rest; `FastDeliver.allowed = False` turns off
only this (the differential tests).
"""
from __future__ import annotations

import ctypes
from typing import TYPE_CHECKING

from unicorn.x86_const import UC_X86_REG_RFLAGS

from emu.arch import paging
from emu.arch.bits import (CR0_PG, CR0_WP, CR4_LA57, CR4_PKE, CR4_PKS, CR4_SMAP, EFER_NXE,
                           PTE_A, PTE_D, PTE_P, PTE_PKEY_SHIFT, PTE_PS, PTE_RW, PTE_US,
                           RFLAGS_IF, RFLAGS_NT, RFLAGS_RF, RFLAGS_TF, RFLAGS_VM)
from emu.arch.vmcb import OFFSETS, VMEXIT_EXCP0, VMEXIT_MSR, VMEXIT_SWINT
from emu.core.interrupts import (AC, BR, DE, FAULT_CLASS, GATE_INT, GATE_TRAP, GP,
                                 HAS_ERROR_CODE, MF, NP, PF, SS_FAULT, XF, Event, Kind)
from emu.engine import binding, hostvm, replay
from emu.engine import hw_switch as H

if TYPE_CHECKING:
    from emu.core.board import Board

# Exceptions whose L1 exit C may deliver: the faults software takes on purpose. #DB (single
# step, the I/O trap), #BP/#OF (software events: an exit of their own), NMI and #MC stay in
# Python. #UD first goes through Machine._exit_exception (which may still hand it back to C
# through `now`): the engine raises it for ICEBP (INT1), which is a trap-like #DB instead.
DELIVERED_HERE = frozenset({DE, BR, NP, SS_FAULT, GP, PF, MF, AC, XF})
# The exits of those exceptions: a tool that registers one takes them from C.
_EXCEPTION_EXITS = frozenset(VMEXIT_EXCP0 + v for v in DELIVERED_HERE)


def _mask(vectors: frozenset[int]) -> int:
    return sum(1 << v for v in vectors if v < 64)


class FastDeliver:
    """The Python side: the layout once, the MSR table and the go-ahead at each arming."""

    def __init__(self, machine: "Board") -> None:
        self.m = machine
        self.allowed = True
        self._generation = -1
        self._exits_generation = -1
        self._own = False
        self.dl = None
        e = machine.replay
        if e is None or not machine.fast_exits.env:
            return
        d = self.dl = e.deliver
        d.enabled = 0
        d.ram, d.ram_size = e.ram, e.ram_size
        d.off_regs, d.off_eip, d.off_hflags = H.OFF_REGS, H.OFF_EIP, H.OFF_HFLAGS
        d.off_segs, d.seg_size = H.OFF_SEGS, H.SEG_SIZE
        d.seg_selector, d.seg_base = H.SEG_OFF_SELECTOR, H.SEG_OFF_BASE
        d.seg_limit, d.seg_flags = H.SEG_OFF_LIMIT, H.SEG_OFF_FLAGS
        d.off_cr, d.off_efer, d.off_error_code, d.off_cr2 = (H.OFF_CR, H.OFF_EFER,
                                                             H.OFF_ERROR_CODE, H.OFF_CR2)
        d.off_hflags2, d.hf2_npt = H.OFF_HFLAGS2, H.HF2_NPT
        d.off_nested_cr3, d.off_nested_pg_mode = H.OFF_NESTED_CR3, H.OFF_NESTED_PG_MODE
        d.npt_long, d.npt_nxe = H.NPT_MODE_PAE | H.NPT_MODE_LMA, H.NPT_MODE_NXE
        d.seg_cs, d.seg_ss, d.seg_ldtr, d.seg_tr = H.CS, H.SS, H.LDTR, H.TR
        d.seg_gdtr, d.seg_idtr = H.GDTR, H.IDTR
        d.hf_cpl_mask, d.hf_lma, d.hf_addseg = H.HF_CPL_MASK, H.HF_LMA, H.HF_ADDSEG
        d.hf_cs32, d.hf_ss32, d.hf_cs64 = H.HF_CS32, H.HF_SS32, H.HF_CS64
        d.desc_s, d.desc_p, d.desc_l, d.desc_b, d.desc_g = (H.DESC_S, H.DESC_P, H.DESC_L,
                                                            H.DESC_B, H.DESC_G)
        d.desc_dpl_shift, d.desc_type_shift = H.DESC_DPL_SHIFT, H.DESC_TYPE_SHIFT
        d.desc_flag_mask = H.DESC_FLAG_MASK
        d.cr0_pg, d.cr0_wp, d.cr4_smap, d.cr4_la57, d.efer_nxe = (CR0_PG, CR0_WP, CR4_SMAP,
                                                                  CR4_LA57, EFER_NXE)
        d.cr4_pke, d.cr4_pks, d.off_pkru, d.off_pkrs = CR4_PKE, CR4_PKS, H.OFF_PKRU, H.OFF_PKRS
        d.pte_pkey_shift = PTE_PKEY_SHIFT
        d.rflags_if, d.rflags_tf, d.rflags_nt = RFLAGS_IF, RFLAGS_TF, RFLAGS_NT
        d.rflags_rf, d.rflags_vm = RFLAGS_RF, RFLAGS_VM
        d.gate_int, d.gate_trap = GATE_INT, GATE_TRAP
        d.pte_p, d.pte_rw, d.pte_us, d.pte_ps, d.pte_a, d.pte_d = (PTE_P, PTE_RW, PTE_US, PTE_PS,
                                                                   PTE_A, PTE_D)
        d.addr_mask = ((1 << hostvm.MAXPHYADDR) - 1) & ~0xFFF
        large = 0
        for nxe in (0, 1):
            for level, rsvd, rsvd_large in paging.long_mode_reserved(hostvm.MAXPHYADDR,
                                                                     bool(nxe)):
                d.rsvd[nxe][level - 1] = rsvd
                if rsvd_large is not None:
                    d.rsvd_large[nxe][level - 1] = rsvd_large
                    large |= 1 << level
        d.large_levels = large
        d.vectors = _mask(DELIVERED_HERE)
        d.error_code_vectors = _mask(HAS_ERROR_CODE)
        d.fault_vectors = _mask(FAULT_CLASS)
        d.exit_excp0 = hostvm.UC_EXIT_BASE + VMEXIT_EXCP0
        d.exit_swint = hostvm.UC_EXIT_BASE + VMEXIT_SWINT
        d.gp, d.pf = GP, PF
        d.pf_cr2 = machine.hostvm.host_address(hostvm.VMCB01) + OFFSETS["exitinfo2"]
        d.rflags_regid = UC_X86_REG_RFLAGS
        d.reg_read = binding.c_function("uc_reg_read")
        d.reg_write = binding.c_function("uc_reg_write")
        d.mem_write = binding.c_function("uc_mem_write")
        d.code_written = (binding.c_function("uc_svmemu_code_written")
                          if machine.mem.written is not None else None)
        d.n_msrs = 0
        self._fn = replay.deliver_function()
        self._d = ctypes.addressof(d)
        self._uc = binding.handle_address(machine.uc)
        self._env = machine.fast_exits.env
        machine.fast_exits.companions.append(self)

    @property
    def delivered(self) -> tuple[int, int]:
        """(events delivered in C, of which #GP for an unknown MSR) so far."""
        d = self.dl
        return (d.delivered, d.msr_gp) if d is not None else (0, 0)

    @property
    def software(self) -> int:
        """L1's INT3 and INT n delivered in C so far."""
        return self.dl.swint if self.dl is not None else 0

    def now(self, vector: int, error_code: int | None, cr2: int | None, rip: int) -> bool:
        """An exit handler (Machine._exit_msr, _exit_exception) raises hardware exception
        `vector` at `rip`: deliver it here, inside the hook, when nothing else would happen in
        Python, instead of stopping the engine for the reference. First what the reference's
        first step is, the router's question whether L1 intercepts it (then it has reflected
        it: True). False: nothing happened, the caller defers to the reference."""
        d, m = self.dl, self.m
        if (d is None or not self.allowed or m._insn_budget is not None
                or not m.fast_exits.quiet() or m.apic.signalled()):
            return False
        d.window = int(m.irq.window.armed)
        if m.router is not None and m.router.on_exception(
                Event(vector, Kind.EXCEPTION, error_code, cr2), None):
            return True
        return bool(self._fn(self._d, self._uc, self._env, vector, replay.DL_EXCEPTION,
                             error_code is not None, error_code or 0, rip, cr2 is not None,
                             cr2 or 0))

    def external(self, vector: int, rip: int) -> bool:
        """The interrupt point delivers an interrupt (maskable, or NMI) at `rip`, emulation
        stopped: in C when it can be, exactly as the reference would (no error code, no RF;
        a vector in the fault class, a misprogrammed controller's, stays Python's). False:
        nothing happened."""
        d, m = self.dl, self.m
        if (d is None or not self.allowed or vector in FAULT_CLASS
                or m._insn_budget is not None or not m.fast_exits.quiet()):
            return False
        d.window = 0        # the reference delivers it and looks at nothing more here
        return bool(self._fn(self._d, self._uc, self._env, vector, replay.DL_EXTERNAL, 0, 0, rip,
                             0, 0))

    def arm(self) -> None:
        d, m = self.dl, self.m
        if m.msrs.generation != self._generation:
            self._generation = m.msrs.generation
            self._set_msrs()
        d.window = int(m.irq.window.armed)
        if m.exits_generation != self._exits_generation:
            self._exits_generation = m.exits_generation
            self._own = self._own_handlers()
        d.enabled = int(self.allowed and not m.fast_exits.signalled and self._own)

    def _own_handlers(self) -> bool:
        """No tool replaced the machine's handlers of the exits answered here."""
        exits = self.m._exits
        return (exits.get(VMEXIT_MSR) == self.m._exit_msr
                and exits.get(VMEXIT_SWINT) == self.m._exit_intn
                and not any(map(exits.__contains__, _EXCEPTION_EXITS)))

    def _set_msrs(self) -> None:
        d = self.dl
        known = sorted(i for i in self.m.msrs.owners if 0 <= i < 1 << 32)
        if len(known) > replay.DL_MAX_MSRS:
            d.n_msrs = 0                # no table: Python decides every MSR
            return
        d.n_msrs = 0
        ctypes.memmove(d.msrs, (ctypes.c_uint32 * len(known))(*known), 4 * len(known))
        d.n_msrs = len(known)

    def disarm(self) -> None:
        pass
