"""L1's VMLOAD, VMSAVE, STGI and CLGI answered in C (emu/engine/svm_insn.c), with
instructions.py as the reference.

A hypervisor that times these instructions, or that runs VMLOAD/VMSAVE around every VMRUN,
pays ~20 us of Python per instruction for a few dozen bytes moved. The C side answers them
while the fast exits are armed (emu/core/fast_exits.py: nothing but the answer would happen in
Python, and every Python entry disarms first), for L1 only (the CPU under vmcb01, no nested
paging: L2's go through the router, which asks L1's intercepts first), and only where its
answer is exactly instructions.py's:

- VMLOAD/VMSAVE: rAX checked as vmcb_operand checks it (its low half outside 64-bit code,
  4 KiB-aligned, below 2^MAXPHYADDR; else #GP, which Python raises), the VMCB inside RAM below
  4 GiB (else Python decides); then FS, GS, TR, LDTR with their hidden parts and the syscall
  MSRs moved between the VMCB and the CPU state, bases made canonical on VMLOAD as in
  instructions.vmload; RIP past the instruction. The field table below is built from
  emu/arch/vmcb.py's offsets and hw_switch's, the one place each is written;
- STGI/CLGI: only while the replay engine's state word is 0 (otherwise a replay program
  stands for the Python state, GIF included, and it or Python answers: fast_switch.gif_done),
  and STGI only while nothing waits for GIF=1 (the APIC signals nothing: instructions.stgi's
  interrupt check would find nothing). C keeps GIF from the arming; the next Python entry
  takes it back into NestedState.

Unicorn has already made the checks that come before the intercept (EFER.SVME, protected mode,
CPL 0). The instructions take the cost timebase.EXIT_COSTS names, charged by replay.c as for
every fast exit. tests/test_fast_insn.py runs random sequences both ways and compares.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from emu.arch.msrs import (MSR_CSTAR, MSR_KERNEL_GS_BASE, MSR_LSTAR, MSR_SFMASK, MSR_STAR,
                           MSR_SYSENTER_CS, MSR_SYSENTER_EIP, MSR_SYSENTER_ESP)
from emu.arch.vmcb import (OFFSETS, SEGMENT_PART_OFFSETS, VMCB_SIZE, VMEXIT_CLGI, VMEXIT_STGI,
                           VMEXIT_VMLOAD, VMEXIT_VMSAVE)
from emu.engine import hostvm, replay
from emu.engine import hw_switch as H

from . import instructions

if TYPE_CHECKING:
    from .vcpu import Vcpu

# Where WRMSR keeps each syscall MSR VMLOAD loads, and how (instructions._MSR_FIELDS' order).
_MSR_PLACES = {
    MSR_KERNEL_GS_BASE: (H.OFF_KERNEL_GS_BASE, replay.SI_Q_CANON),  # made canonical by VMLOAD
    MSR_STAR: (H.OFF_STAR, replay.SI_Q), MSR_LSTAR: (H.OFF_LSTAR, replay.SI_Q),
    MSR_CSTAR: (H.OFF_CSTAR, replay.SI_Q), MSR_SFMASK: (H.OFF_FMASK, replay.SI_Q),
    MSR_SYSENTER_CS: (H.OFF_SYSENTER_CS, replay.SI_U16_IN_U32),      # WRMSR keeps bits 15:0
    MSR_SYSENTER_ESP: (H.OFF_SYSENTER_ESP, replay.SI_Q),
    MSR_SYSENTER_EIP: (H.OFF_SYSENTER_EIP, replay.SI_Q)}


def field_table() -> list[tuple[int, int, int]]:
    """(kind, CPU state offset, VMCB offset) of everything VMLOAD and VMSAVE move."""
    table = [(replay.SI_SEG, H.OFF_SEGS + index * H.SEG_SIZE, OFFSETS[name])
             for name, index in instructions._SEG_FIELDS]
    for name, msr in instructions._MSR_FIELDS:
        off, kind = _MSR_PLACES[msr]
        table.append((kind, off, OFFSETS[name]))
    return table


class FastInsn:
    """The Python side: the field table once, GIF handed over at each arming."""

    def __init__(self, ext: "Vcpu") -> None:
        self.ext = ext
        m = ext.machine
        e = m.replay
        self.si = None
        if e is None or not m.fast_exits.env:
            return
        si = self.si = e.svm_insn
        si.enabled = 0
        si.ram, si.ram_size = e.ram, e.ram_size
        si.vmcb_size = VMCB_SIZE
        si.hf_cs64 = H.HF_CS64
        si.off_eip, si.off_rax, si.off_hflags = H.OFF_EIP, H.OFF_RAX, H.OFF_HFLAGS
        si.seg_selector, si.seg_base = H.SEG_OFF_SELECTOR, H.SEG_OFF_BASE
        si.seg_limit, si.seg_flags = H.SEG_OFF_LIMIT, H.SEG_OFF_FLAGS
        parts = SEGMENT_PART_OFFSETS
        si.vseg_selector, si.vseg_attrib = parts["selector"], parts["attrib"]
        si.vseg_limit, si.vseg_base = parts["limit"], parts["base"]
        si.insn_length = instructions.INSN_LENGTH
        si.exit_vmload = hostvm.UC_EXIT_BASE + VMEXIT_VMLOAD
        si.exit_vmsave = hostvm.UC_EXIT_BASE + VMEXIT_VMSAVE
        si.exit_stgi = hostvm.UC_EXIT_BASE + VMEXIT_STGI
        si.exit_clgi = hostvm.UC_EXIT_BASE + VMEXIT_CLGI
        table = field_table()
        assert len(table) <= replay.SI_MAX_FIELDS
        for i, (kind, env_off, vmcb_off) in enumerate(table):
            f = si.fields[i]
            f.kind, f.env_off, f.vmcb_off = kind, env_off, vmcb_off
        si.n_fields = len(table)
        self._gif = 0
        m.fast_exits.companions.append(self)
        si.enabled = 1

    @property
    def answered(self) -> tuple[int, int, int, int]:
        """(VMLOAD, VMSAVE, STGI, CLGI) answered in C so far."""
        si = self.si
        return (si.vmload, si.vmsave, si.stgi, si.clgi) if si is not None else (0, 0, 0, 0)

    def arm(self) -> None:
        si, ext = self.si, self.ext
        si.maxphyaddr = ext.caps.maxphyaddr
        self._gif = si.gif = int(ext.state.gif)
        si.stgi_ok = int(not ext.machine.fast_exits.signalled)

    def disarm(self) -> None:
        gif = self.si.gif
        if gif != self._gif:
            self.ext.state.gif = bool(gif)
