"""Validation of a snapshot's CPU context before it reaches Unicorn.

A snapshot is a file from anywhere, and Unicorn trusts its saved context completely: a hidden flag
that the rest of the state contradicts, or an x87 stack top outside 0-7, makes it read out of
bounds or translate code for a mode that does not exist (a flipped HF_SMM or FPU TOP crashes the
process). Every field Unicorn derives behaviour from is checked here against the architecture
(AMD APM vol. 2: 3.1 control registers, 4.7 segment descriptors, 14.2 long mode) and against the
hidden flags' meaning, and the first contradiction becomes one SnapshotError sentence.
"""
from __future__ import annotations

import struct

from typing import TYPE_CHECKING

from emu.arch.bits import (CR0_CD, CR0_EM, CR0_MP, CR0_NW, CR0_PE, CR0_PG, CR0_TS, CR4_OSFXSR,
                           CR4_PAE, CR4_SMAP, EFER_LMA, EFER_SVME)
from emu.arch.paging import is_canonical
from emu.engine.hostvm import L0_EFER
from emu.engine.hw_switch import (CS, DESC_B, DESC_L, HF2_GIF, HF2_GMET, HF2_NMI, HF_AM,
                                  HF2_NPT, HF2_VINTR, HF_CPL_MASK, HF_CS32, HF_CS64, HF_EM,
                                  HF_GUEST, HF_INHIBIT_IRQ, HF_IOBPT, HF_LMA, HF_MP, HF_OSFXSR,
                                  HF_PE, HF_SMAP, HF_SS32, HF_SVME, HF_TS, OFF_CR, OFF_DR,
                                  OFF_EFER, OFF_EIP, OFF_EFLAGS, OFF_FPSTT, OFF_FPTAGS,
                                  OFF_HFLAGS, OFF_HFLAGS2, OFF_SEGS, SEG_NAMES, SEG_SIZE, SS,
                                  HF_ADDSEG, DESC_DPL_SHIFT)
from emu.core.control_regs import cr4_allowed
from emu.core.msrs_amd import efer_allowed
from emu.errors import SnapshotError

if TYPE_CHECKING:
    from emu.core.cpuid import Cpuid

# Hidden flags Unicorn may hold while svmemu runs a guest. Everything else (SMM, vm86, MPX and
# unnamed bits) is a mode svmemu never enters, so a snapshot cannot be in it.
_HF_TF, _HF_IOPL, _HF_RF, _HF_AC = 1 << 8, 3 << 12, 1 << 16, 1 << 18
HFLAGS_ALLOWED = (HF_CPL_MASK | HF_INHIBIT_IRQ | HF_CS32 | HF_SS32 | HF_ADDSEG | HF_PE | _HF_TF
                  | HF_MP | HF_EM | HF_TS | _HF_IOPL | HF_LMA | HF_CS64 | _HF_RF | _HF_AC
                  | HF_SVME | HF_GUEST | HF_OSFXSR | HF_SMAP | HF_IOBPT | HF_AM)
_HF2_HIF, _HF2_IGNNE = 1 << 1, 1 << 7
HFLAGS2_ALLOWED = HF2_GIF | _HF2_HIF | HF2_NMI | HF2_VINTR | HF2_NPT | HF2_GMET | _HF2_IGNNE

_RFLAGS_RESERVED = ~0x3F7FD7 & ((1 << 64) - 1)      # bits 1 (must be one), 3, 5, 15, 22-63
_RFLAGS_VM = 1 << 17
FPU_STACK = 8
_SEG = struct.Struct("<I4xQII")


def check_cpu(cpu: bytes, cpuid: "Cpuid", what: str = "CPU context") -> None:
    """Raise SnapshotError unless `cpu` is a context a real x86-64 run under svmemu could have
    left: architecturally legal registers, and hidden flags that agree with them. The CR4 and
    EFER bits that may be set are the CPU model's (`cpuid`), as MOV CR4, WRMSR EFER and VMRUN's
    checks allow them, and L0's own (a snapshot taken before the first instruction holds the
    trampoline's context)."""
    cr4_valid, efer_valid = cr4_allowed(cpuid), efer_allowed(cpuid) | L0_EFER
    def fail(msg: str) -> None:
        raise SnapshotError(f"the snapshot's {what} is invalid: {msg}")

    u32 = lambda off: struct.unpack_from("<I", cpu, off)[0]   # noqa: E731
    u64 = lambda off: struct.unpack_from("<Q", cpu, off)[0]   # noqa: E731
    hf, hf2 = u32(OFF_HFLAGS), u32(OFF_HFLAGS2)
    cr0, cr3, cr4, efer = u64(OFF_CR), u64(OFF_CR + 24), u64(OFF_CR + 32), u64(OFF_EFER)
    rflags, rip = u64(OFF_EFLAGS), u64(OFF_EIP)

    if u32(OFF_FPSTT) >= FPU_STACK:
        fail(f"x87 stack top {u32(OFF_FPSTT)} is outside 0-7")
    if any(b > 1 for b in cpu[OFF_FPTAGS:OFF_FPTAGS + FPU_STACK]):
        fail("an x87 tag is neither empty nor valid")
    if hf & ~HFLAGS_ALLOWED:
        fail(f"hidden flags {hf:#x} name a mode svmemu never enters (SMM, vm86, MPX or unused)")
    if hf2 & ~HFLAGS2_ALLOWED:
        fail(f"hidden flags 2 {hf2:#x} name a state svmemu never enters")
    # Control registers (APM vol. 2, 3.1): what MOV CRn would refuse with #GP.
    if cr0 >> 32:
        fail(f"CR0 {cr0:#x} has bits 63:32 set")
    if cr0 & CR0_NW and not cr0 & CR0_CD:
        fail("CR0.NW is set without CR0.CD")
    if cr0 & CR0_PG and not cr0 & CR0_PE:
        fail("CR0.PG is set without CR0.PE")
    if cr4 & ~cr4_valid:
        fail(f"CR4 {cr4:#x} sets a bit this CPU model does not have")
    if cr3 >> 52:
        fail(f"CR3 {cr3:#x} sets bits above the physical address width")
    if efer & ~efer_valid:
        fail(f"EFER {efer:#x} sets a bit this CPU model does not have")
    # EFER.LMA is not checked against LME and PG: L0's boot trampoline legitimately holds LMA
    # while it drops to 32-bit protected mode. What matters is that the hidden LMA flag agrees.
    long_mode = bool(cr0 & CR0_PG and efer & EFER_LMA)
    if long_mode and not cr4 & CR4_PAE:
        fail("long mode is active with CR4.PAE clear")
    if rflags & _RFLAGS_RESERVED or not rflags & 2:
        fail(f"RFLAGS {rflags:#x} has reserved bits wrong")
    if rflags & _RFLAGS_VM:
        fail("RFLAGS.VM is set: virtual-8086 mode is not modelled")
    for n in (6, 7):
        if u64(OFF_DR + 8 * n) >> 32:
            fail(f"DR{n} has bits 63:32 set")
    # Segment caches (APM vol. 2, 4.7): selectors are 16 bits and bases canonical. The attributes
    # are the descriptor's high dword as loaded (base bits included for system segments).
    segs = []
    for i, name in enumerate(SEG_NAMES):
        sel, base, limit, flags = _SEG.unpack_from(cpu, OFF_SEGS + i * SEG_SIZE)
        if sel >> 16:
            fail(f"the {name.upper()} selector {sel:#x} is wider than 16 bits")
        if not is_canonical(base):
            fail(f"the {name.upper()} base {base:#x} is not canonical")
        segs.append((sel, base, limit, flags))
    cs_flags, ss_flags = segs[CS][3], segs[SS][3]
    if long_mode and cs_flags & DESC_L and cs_flags & DESC_B:
        fail("CS.L and CS.D are both set in long mode")
    if not is_canonical(rip):
        fail(f"RIP {rip:#x} is not canonical")
    # Hidden flags must say what the registers say (Unicorn translates code from them). CS64 is
    # left out: L0's boot trampoline switches code size through the hidden flags alone.
    expect = {
        "PE": (HF_PE, bool(cr0 & CR0_PE)), "MP": (HF_MP, bool(cr0 & CR0_MP)),
        "EM": (HF_EM, bool(cr0 & CR0_EM)), "TS": (HF_TS, bool(cr0 & CR0_TS)),
        "LMA": (HF_LMA, bool(efer & EFER_LMA)), "SVME": (HF_SVME, bool(efer & EFER_SVME)),
        "OSFXSR": (HF_OSFXSR, bool(cr4 & CR4_OSFXSR)), "SMAP": (HF_SMAP, bool(cr4 & CR4_SMAP)),
    }
    for name, (bit, want) in expect.items():
        if bool(hf & bit) != want:
            fail(f"the hidden {name} flag disagrees with the registers")
    if cr0 & CR0_PE and hf & HF_CPL_MASK != (ss_flags >> DESC_DPL_SHIFT) & 3:
        fail("the CPL disagrees with SS.DPL")
    if not cr0 & CR0_PE and hf & HF_CPL_MASK:
        fail("the CPL is not 0 in real mode")
