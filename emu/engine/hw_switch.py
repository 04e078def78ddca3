"""Unicorn's saved CPU context, read and patched in place.

Unicorn gives no API for segment descriptor caches, hidden flags, the pending error code or the
SVM state of its CPU, yet exception delivery and world switches must change all of them at once.
We therefore edit the `uc_context` blob (QEMU 5.0's CPUX86State as compiled into unicorn 2.1.4)
and restore it. The offsets below are pinned to unicorn==2.1.4 and each is proven by
emu/engine/layout_check.py when the first machine starts, so a different build fails loudly instead of corrupting guest state.
"""
from __future__ import annotations

import ctypes
import struct

from unicorn import Uc

from emu.engine import binding
from emu.engine.binding import RegBatch, flush_tlb  # noqa: F401 (re-exported for the switch code)

from emu.arch.bits import (CR0_AM, CR0_PE, CR4_OSFXSR, CR4_PAE, CR4_SMAP, EFER_LMA, EFER_NXE,
                           EFER_SVME, RFLAGS_VM)

PINNED_UNICORN = "2.1.4"

# offsetof(struct uc_context, data) on x86-64: the CPUX86State copy follows a 40-byte header
# whose first u64 is the size of that copy.
CONTEXT_DATA_OFF = 40

# CPUX86State offsets (QEMU 5.0 layout inside unicorn 2.1.4).
OFF_REGS = 0            # 16 x u64
OFF_RAX = OFF_REGS
OFF_RCX = OFF_REGS + 1 * 8
OFF_RSP = OFF_REGS + 4 * 8
OFF_EIP = 128
OFF_EFLAGS = 136
OFF_HFLAGS = 176
OFF_HFLAGS2 = 180
OFF_SEGS = 184          # ES CS SS DS FS GS, then LDT TR GDT IDT; 24 bytes each
SEG_SIZE = 24
OFF_CR = OFF_SEGS + 10 * SEG_SIZE   # cr[0..4], u64 each
OFF_CR2 = OFF_CR + 2 * 8
OFF_EFER = 592
OFF_FPSTT = 604          # u32: the x87 stack top (FSW.TOP), an index into fpregs[8]
OFF_FPTAGS = 612         # u8[8]: 1 = empty, 0 = valid
# The syscall MSRs VMLOAD and VMSAVE move (APM 15.5.2), as WRMSR stores them: SYSENTER_CS is a
# u32 holding bits 15:0, the rest u64.
OFF_SYSENTER_CS = 4800
OFF_SYSENTER_ESP = 4808
OFF_SYSENTER_EIP = 4816
OFF_STAR = 4824
OFF_VM_HSAVE = 4832
OFF_LSTAR = 4840
OFF_CSTAR = 4848
OFF_FMASK = 4856         # SFMASK
OFF_KERNEL_GS_BASE = 4864
# The protection-key rights registers, u32 each: PKRU (WRPKRU/RDPKRU) and, on svmemu's engine
# (patch 0020), IA32_PKRS in the padding after SMBASE. Both lie inside the context.
OFF_PKRS = 5292
OFF_PKRU = 5304
OFF_ERROR_CODE = 5384
OFF_DR = 5400            # dr[0..7], u64 each
OFF_VM_VMCB = 5504
OFF_INTERCEPT = 5520
OFF_INTERCEPT_CRDR = 5528   # u16 each: CR read, CR write, DR read, DR write
OFF_INTERCEPT_DR_READ = OFF_INTERCEPT_CRDR + 4
OFF_INTERCEPT_DR_WRITE = OFF_INTERCEPT_CRDR + 6
OFF_INTERCEPT_EXC = 5536
OFF_NESTED_CR3 = 5544
OFF_NESTED_PG_MODE = 5552
OFF_V_TPR = 5556         # u8: what MOV CR8 writes; what it reads under HF2_VINTR

# Outside the context: uc_struct -> CPUState -> CPUX86State, for the words the interrupt window
# changes while the CPU runs (emu/engine/irq_window.py).
OFF_UC_CPU = 440                    # struct uc_struct: the CPUState pointer
OFF_CPU_ENV_PTR = 296               # CPUState: pointer to its CPUX86State
OFF_CPU_INTERRUPT_REQUEST = 28      # CPUState: u32 interrupt_request
OFF_ENV_ICOUNT_DECR_HIGH = -16 + 2  # u16 icount_decr.high, in the state just below CPUX86State
CPU_INTERRUPT_VIRQ = 0x0100         # interrupt_request: a virtual interrupt is pending
# CPUX86State.features, past the context: the CPU model's CPUID words (u64 each, indexed by
# QEMU's FeatureWord) that Unicorn's own helpers consult. XSETBV checks the XCR0 bits it is
# given against FEAT_XSAVE_COMP_LO/HI, so svmemu writes the model's XSAVE components there.
OFF_ENV_FEATURES = 0x1600
# CPUX86State's last fields on svmemu's engine (patch 0005), past the context: the instructions
# retired (u64) and the instruction deadline that ends emu_start (u64, all ones: none). The stock
# engine has neither (emu/engine/insn_counter.py).
OFF_ENV_INSNS = 0x1B60
OFF_ENV_INSN_DEADLINE = OFF_ENV_INSNS + 8
FEAT_7_0_EBX = 2
FEAT_7_0_ECX = 3
FEAT_XSAVE_COMP_LO, FEAT_XSAVE_COMP_HI = 21, 22

ES, CS, SS, DS, FS, GS, LDTR, TR, GDTR, IDTR = range(10)
SEG_NAMES = ("es", "cs", "ss", "ds", "fs", "gs", "ldtr", "tr", "gdtr", "idtr")

# QEMU hidden-flag bits that depend on segment and control state.
HF_CPL_MASK = 3
HF_INHIBIT_IRQ = 1 << 3
HF_MP = 1 << 9
HF_EM = 1 << 10
HF_TS = 1 << 11
HF_SVME = 1 << 20
HF_OSFXSR = 1 << 22
HF_SMAP = 1 << 23
HF_IOBPT = 1 << 24       # translate I/O instructions with a call to the I/O-breakpoint helper
HF_AM = 1 << 27          # CR0.AM: with RFLAGS.AC and CPL 3, data references are alignment-checked
HF2_GIF = 1 << 0
HF2_NMI = 1 << 2        # NMIs blocked: set by NMI delivery, cleared by IRET
HF2_VINTR = 1 << 3      # V_INTR_MASKING in effect: CR8 reads V_TPR
HF2_NPT = 1 << 6
HF2_GMET = 1 << 8       # guest-mode execute trap: nested U/S governs fetches by privilege
# How Unicorn's nested walk reads the host paging mode (set from L1's state at VMRUN).
NPT_MODE_PAE, NPT_MODE_LMA, NPT_MODE_NXE = 1 << 0, 1 << 1, 1 << 2


def nested_pg_mode(host_cr4: int, host_efer: int) -> int:
    """The NPT_MODE_* bits Unicorn's nested walk reads, from the host's (L1's) CR4 and EFER at
    VMRUN."""
    return ((NPT_MODE_PAE if host_cr4 & CR4_PAE else 0)
            | (NPT_MODE_LMA if host_efer & EFER_LMA else 0)
            | (NPT_MODE_NXE if host_efer & EFER_NXE else 0))
HF_CS32 = 1 << 4
HF_SS32 = 1 << 5
HF_ADDSEG = 1 << 6
HF_PE = 1 << 7
HF_LMA = 1 << 14
HF_CS64 = 1 << 15
HF_GUEST = 1 << 21

# Descriptor-cache flag bits (the descriptor's high dword, as QEMU keeps it).
DESC_TYPE_SHIFT = 8
DESC_S = 1 << 12
DESC_DPL_SHIFT = 13
DESC_P = 1 << 15
DESC_L = 1 << 21
DESC_B = 1 << 22
DESC_G = 1 << 23
DESC_FLAG_MASK = 0x00F0FF00

_SEG = struct.Struct("<I4xQII")   # selector, base, limit, flags
# Where each part of one descriptor-cache entry lies (the 4 bytes after the selector: padding).
SEG_OFF_SELECTOR, SEG_OFF_BASE, SEG_OFF_LIMIT, SEG_OFF_FLAGS = 0, 8, 16, 20
assert _SEG.size == SEG_OFF_FLAGS + 4


class Segment:
    """A segment register with its hidden part, in descriptor-cache form."""

    __slots__ = ("selector", "base", "limit", "flags")

    def __init__(self, selector: int, base: int, limit: int, flags: int) -> None:
        self.selector = selector
        self.base = base
        self.limit = limit
        self.flags = flags

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return ((self.selector, self.base, self.limit, self.flags)
                == (other.selector, other.base, other.limit, other.flags))  # type: ignore[attr-defined]

    def __repr__(self) -> str:
        return (f"Segment(selector={self.selector!r}, base={self.base!r}, limit={self.limit!r}, "
                f"flags={self.flags!r})")

    @property
    def dpl(self) -> int:
        return (self.flags >> DESC_DPL_SHIFT) & 3

    @property
    def vmcb_attrib(self) -> int:
        """The 12-bit packed attribute form the VMCB uses."""
        return ((self.flags >> 8) & 0xFF) | ((self.flags >> 12) & 0xF00)

    @classmethod
    def from_vmcb(cls, selector: int, attrib: int, limit: int, base: int) -> "Segment":
        return cls(selector, base, limit, ((attrib & 0xFF) << 8) | ((attrib & 0xF00) << 12))

    @classmethod
    def from_descriptor(cls, selector: int, raw: int) -> "Segment":
        """Decode an 8-byte GDT/LDT descriptor (base/limit expanded as the CPU caches them)."""
        lo, hi = raw & 0xFFFFFFFF, raw >> 32
        base = (lo >> 16) | ((hi & 0xFF) << 16) | (hi & 0xFF000000)
        limit = (lo & 0xFFFF) | (hi & 0xF0000)
        if hi & DESC_G:
            limit = (limit << 12) | 0xFFF
        return cls(selector, base, limit, hi & DESC_FLAG_MASK)


class UnsupportedUnicorn(RuntimeError):
    """The installed unicorn is not the build whose context layout we rely on."""


class Context:
    """One reusable saved context and a writable view of its bytes.

    Reusing a single `UcContext` (context_update, not context_save) keeps the switch path free of
    allocation; the view lets struct.pack_into patch fields without copying the ~6 KiB blob.
    """

    def __init__(self, uc: Uc) -> None:
        self.uc = uc
        self.ctx = uc.context_save()
        self._save, self._restore = binding.context_calls(uc, self.ctx)
        addr = self.address = binding.context_address(self.ctx)
        size = struct.unpack("<Q", ctypes.string_at(addr, 8))[0]
        self.view = memoryview((ctypes.c_char * size).from_address(addr + CONTEXT_DATA_OFF)).cast("B")

    def save(self) -> "Context":
        self._save()
        return self

    def restore(self) -> None:
        self._restore()

    def set_rip(self, rip: int) -> None:
        """Move RIP from inside a hook. `reg_write(RIP)` there would also set Unicorn's
        skip_sync_pc_on_exit for the rest of `emu_start`, after which IN/OUT and memory hooks
        see a stale RIP; writing the saved context's copy does not."""
        self.save()
        self.set_u64(OFF_EIP, rip)
        self.restore()

    # ---- fields -------------------------------------------------------------------------
    def u32(self, off: int) -> int:
        return struct.unpack_from("<I", self.view, off)[0]

    def u64(self, off: int) -> int:
        return struct.unpack_from("<Q", self.view, off)[0]

    def set_u32(self, off: int, value: int) -> None:
        struct.pack_into("<I", self.view, off, value & 0xFFFFFFFF)

    def set_u64(self, off: int, value: int) -> None:
        struct.pack_into("<Q", self.view, off, value & 0xFFFFFFFFFFFFFFFF)

    @property
    def hflags(self) -> int:
        return self.u32(OFF_HFLAGS)

    @property
    def cpl(self) -> int:
        return self.u32(OFF_HFLAGS) & HF_CPL_MASK

    @property
    def error_code(self) -> int:
        """The error code / EXITINFO1 of the event that reached the INTR hook."""
        return self.u32(OFF_ERROR_CODE)

    def cr(self, n: int) -> int:
        return self.u64(OFF_CR + 8 * n)

    @property
    def efer(self) -> int:
        return self.u64(OFF_EFER)

    def seg(self, index: int) -> Segment:
        return Segment(*_SEG.unpack_from(self.view, OFF_SEGS + index * SEG_SIZE))

    def set_seg(self, index: int, seg: Segment) -> None:
        _SEG.pack_into(self.view, OFF_SEGS + index * SEG_SIZE, seg.selector, seg.base,
                       seg.limit & 0xFFFFFFFF, seg.flags)

    def mode_bits(self) -> int:
        """16, 32 or 64: the operand-size mode code is executing in."""
        hf = self.hflags
        if hf & HF_CS64:
            return 64
        return 32 if hf & HF_CS32 else 16

    def load_control_hflags(self, cr0: int, cr4: int, efer: int, cpl: int) -> None:
        """Set the hidden flags that follow from CR0/CR4/EFER and CPL, as loading them whole
        (a world switch) does; segment-derived bits are recomputed after."""
        hf = self.hflags & ~(HF_CPL_MASK | HF_INHIBIT_IRQ | HF_PE | HF_MP | HF_EM | HF_TS | HF_LMA
                             | HF_SVME | HF_OSFXSR | HF_SMAP | HF_AM)
        hf |= cpl & 3
        if cr0 & CR0_PE:
            hf |= HF_PE
        if cr0 & CR0_AM:
            hf |= HF_AM
        hf |= ((cr0 >> 1) & 7) * HF_MP     # MP, EM, TS are CR0 bits 1..3, HF bits 9..11
        if efer & EFER_LMA:
            hf |= HF_LMA
        if efer & EFER_SVME:
            hf |= HF_SVME
        if cr4 & CR4_OSFXSR:
            hf |= HF_OSFXSR
        if cr4 & CR4_SMAP:
            hf |= HF_SMAP
        self.set_u32(OFF_HFLAGS, hf)
        self.set_u64(OFF_CR + 0, cr0)
        self.set_u64(OFF_CR + 32, cr4)
        self.set_u64(OFF_EFER, efer)

    def recompute_hflags(self, cpl: int | None = None) -> None:
        """Derive CPL, CS32/SS32/CS64 and ADDSEG from the segment caches, as a real segment load
        would; needed after patching CS/SS behind Unicorn's back. A world switch passes the CPL it
        loads (the VMCB's), which then wins over SS.DPL."""
        hf = self.hflags & ~(HF_CPL_MASK | HF_CS32 | HF_SS32 | HF_CS64 | HF_ADDSEG)
        cs, ss = self.seg(CS), self.seg(SS)
        cr0 = self.cr(0)
        hf |= (ss.dpl if cr0 & CR0_PE else 0) if cpl is None else cpl
        if hf & HF_LMA and cs.flags & DESC_L:
            hf |= HF_CS32 | HF_SS32 | HF_CS64
        else:
            if cs.flags & DESC_B:
                hf |= HF_CS32
            if ss.flags & DESC_B:
                hf |= HF_SS32
            eflags_vm = self.u64(OFF_EFLAGS) & RFLAGS_VM
            if not (cr0 & CR0_PE) or eflags_vm or not (hf & HF_CS32):
                hf |= HF_ADDSEG
            elif self.seg(DS).base | self.seg(ES).base | ss.base:
                hf |= HF_ADDSEG
        self.set_u32(OFF_HFLAGS, hf)


def cpu_and_env(uc: Uc) -> tuple[int, int]:
    """Addresses of the running CPU's CPUState and CPUX86State (0 when there is none yet)."""
    cpu = struct.unpack("<Q", ctypes.string_at(binding.handle_address(uc) + OFF_UC_CPU, 8))[0]
    env = struct.unpack("<Q", ctypes.string_at(cpu + OFF_CPU_ENV_PTR, 8))[0] if cpu else 0
    return cpu, env


def struct_pack_into_env(env: int, offset: int, value: int) -> None:
    """Write a u64 into the live CPU state at `offset` (a field outside the saved context)."""
    ctypes.memmove(env + offset, struct.pack("<Q", value), 8)


def set_xsave_components(uc: Uc, xcr0_valid: int) -> None:
    """The XCR0 bits XSETBV may set (CPUID Fn0000_000D_ECX_0 EDX:EAX of the model): Unicorn
    raises #GP(0) for any other, as the APM has it, instead of checking its own EPYC's AVX."""
    _, env = cpu_and_env(uc)
    ctypes.memmove(env + OFF_ENV_FEATURES + 8 * FEAT_XSAVE_COMP_LO,
                   struct.pack("<QQ", xcr0_valid & 0xFFFFFFFF, xcr0_valid >> 32), 16)


def set_feature_bits(uc: Uc, word: int, mask: int, bits: int) -> None:
    """Set the `mask` bits of CPUX86State.features[word] to `bits`: the translator and
    Unicorn's helpers gate some instructions and CR4 bits on these words (CLWB, PCOMMIT on
    FEAT_7_0_EBX; CR4.PKE on FEAT_7_0_ECX's PKU), not on the CPUID svmemu reports."""
    _, env = cpu_and_env(uc)
    addr = env + OFF_ENV_FEATURES + 8 * word
    old = struct.unpack("<Q", ctypes.string_at(addr, 8))[0]
    ctypes.memmove(addr, struct.pack("<Q", (old & ~mask) | (bits & mask)), 8)
