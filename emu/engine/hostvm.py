"""How L0 runs L1: as a guest of Unicorn's built-in SVM, under an L0-private VMCB (vmcb01).

Unicorn cannot hook RDMSR/WRMSR and never delivers exceptions through the guest IDT. Running L1
in Unicorn's guest mode fixes both: vmcb01's intercepts turn every MSR access, every exception,
CPUID, HLT, RDTSC, software INTn and the SVM instructions into `INTR 0x100 + exit code` with RIP
precise at the instruction, and Python emulates or delivers them. Measured on unicorn 2.1.4:
without the INTn intercept a software INT reaches the hook as a bare vector and the *next* fault's
RIP comes back imprecise, so INTn is always intercepted.

Everything L0 owns lives at or above 2^MAXPHYADDR (the value CPUID reports), where no L1 page
table entry can point: the check on reserved physical-address bits forbids it.
"""
from __future__ import annotations

import ctypes
import mmap
import struct

from unicorn import Uc, UC_PROT_ALL

from emu.arch.bits import EFER_SVME
from emu.core.msrs_amd import MSR_EFER, MSR_VM_HSAVE_PA

# ---- Hardware exit codes L0 sees (AMD APM vol. 2, appendix C; names as the APM gives them) ----
VMEXIT_DR7_WRITE = 0x37
VMEXIT_CR0_READ = 0x00     # .. CR15: + n
VMEXIT_CR0_WRITE = 0x10
VMEXIT_EXCP0 = 0x40
VMEXIT_INTR = 0x60
VMEXIT_VINTR = 0x64       # L0's interrupt window (emu/engine/irq_window.py)
VMEXIT_RDTSC = 0x6E
VMEXIT_RDPMC = 0x6F
VMEXIT_CPUID = 0x72
VMEXIT_SWINT = 0x75
VMEXIT_HLT = 0x78
VMEXIT_INVLPGA = 0x7A
VMEXIT_IOIO = 0x7B
VMEXIT_MSR = 0x7C
VMEXIT_SHUTDOWN = 0x7F
VMEXIT_VMRUN = 0x80
VMEXIT_VMMCALL = 0x81
VMEXIT_VMLOAD = 0x82
VMEXIT_VMSAVE = 0x83
VMEXIT_STGI = 0x84
VMEXIT_CLGI = 0x85
VMEXIT_SKINIT = 0x86
VMEXIT_RDTSCP = 0x87
VMEXIT_NPF = 0x400

# Unicorn reports an intercepted event as this base plus the exit code.
UC_EXIT_BASE = 0x100

# ---- The VMCB fields vmcb01 needs (APM vol. 2, appendix B) ----
VMCB_INTERCEPT_CR_READ = 0x000       # 16 bits: bit n intercepts MOV from CRn
VMCB_INTERCEPT_CR_WRITE = 0x002      # 16 bits: bit n intercepts MOV to CRn
VMCB_INTERCEPT_DR_WRITE = 0x006      # 16 bits: bit n intercepts MOV to DRn
VMCB_INTERCEPT_EXCEPTIONS = 0x008
VMCB_INTERCEPT_MISC = 0x00C          # 64-bit view: bit (exit code - 0x60)
VMCB_IOPM_BASE_PA = 0x040
VMCB_MSRPM_BASE_PA = 0x048
VMCB_GUEST_ASID = 0x058
VMCB_EXITINFO1 = 0x078
VMCB_EXITINFO2 = 0x080
VMCB_SAVE = 0x400
VMCB_SAVE_ES, VMCB_SAVE_CS, VMCB_SAVE_SS, VMCB_SAVE_DS, VMCB_SAVE_FS, VMCB_SAVE_GS, \
    VMCB_SAVE_GDTR, VMCB_SAVE_LDTR, VMCB_SAVE_IDTR, VMCB_SAVE_TR = (VMCB_SAVE + 16 * i for i in range(10))
VMCB_SAVE_EFER = 0x4D0
VMCB_SAVE_CR4 = 0x548
VMCB_SAVE_CR3 = 0x550
VMCB_SAVE_CR0 = 0x558
VMCB_SAVE_DR7 = 0x560
VMCB_SAVE_DR6 = 0x568
VMCB_SAVE_RFLAGS = 0x570
VMCB_SAVE_RIP = 0x578
VMCB_SAVE_RSP = 0x5D8
VMCB_SAVE_RAX = 0x5F8


# ---- L0-private physical layout ----
MAXPHYADDR = 40
L0_BASE = 1 << MAXPHYADDR
L0_SIZE = 0x20000
VMCB01 = L0_BASE
HSAVE01 = L0_BASE + 0x1000
MSRPM01 = L0_BASE + 0x2000      # 8 KiB
IOPM01 = L0_BASE + 0x4000       # 12 KiB
TRAMPOLINE = L0_BASE + 0x8000
TRAMPOLINE_INSNS = 3      # the trampoline's instructions, ending with the VMRUN into L1
SCRATCH = L0_BASE + 0x9000      # free for extensions (vmcb02, ...)

MSRPM_SIZE = 0x2000
IOPM_SIZE = 0x3000
_MSRPM_RANGES = ((0x00000000, 0x000), (0xC0000000, 0x800), (0xC0010000, 0x1000))

# No VMEXIT_IOIO: Unicorn 2.1.4 never checks the I/O permission map (its translator's I/O check
# returns early), so port I/O is seen only through the IN/OUT hooks.
L0_INTERCEPTED_EXITS = (
    VMEXIT_RDTSC, VMEXIT_RDPMC, VMEXIT_CPUID, VMEXIT_SWINT, VMEXIT_HLT, VMEXIT_INVLPGA, VMEXIT_MSR,
    VMEXIT_SHUTDOWN, VMEXIT_VMRUN, VMEXIT_VMMCALL, VMEXIT_VMLOAD, VMEXIT_VMSAVE, VMEXIT_STGI,
    VMEXIT_CLGI, VMEXIT_SKINIT, VMEXIT_RDTSCP,
)


# DR7 writes: Unicorn recomputes its hidden HF_IOBPT flag from DR7 on every guest write, and L0
# needs that flag kept (emu/engine/io_trap.py), so L0 sees every DR7 write, in L1 and L2 alike.
L0_DR_WRITE_INTERCEPTS = 1 << 7
# CR8 is the APIC's TPR[7:4]; Unicorn has no APIC and reads CR8 as 0, so L0 emulates it (irq.py).
L0_CR_INTERCEPTS = 1 << 8
# CR4 writes: Unicorn takes reserved CR4 bits silently; L0 checks them against the CPU model
# (emu/core/control_regs.py).
L0_CR_WRITE_INTERCEPTS = L0_CR_INTERCEPTS | 1 << 4


def intercept_bit(exit_code: int) -> int:
    return 1 << (exit_code - VMEXIT_INTR)


def msrpm_position(msr: int) -> tuple[int, int] | None:
    """(byte offset, bit of the read permission) of `msr` in an MSR permission map."""
    for base, off in _MSRPM_RANGES:
        if base <= msr < base + 0x2000:
            n = (msr - base) * 2
            return off + n // 8, n % 8
    return None


def _seg(selector: int, attrib: int, limit: int, base: int) -> bytes:
    return struct.pack("<HHIQ", selector, attrib, limit, base)


class HostVm:
    """Owns the L0-private region and the switch into guest mode at boot."""

    def __init__(self, uc: Uc) -> None:
        self.uc = uc
        # Backed by a host buffer so L0 reads and writes its VMCBs and maps without Unicorn calls.
        self._mem = mmap.mmap(-1, L0_SIZE)
        uc.mem_map_ptr(L0_BASE, L0_SIZE, UC_PROT_ALL,
                       ctypes.addressof(ctypes.c_char.from_buffer(self._mem)))
        self.buf = memoryview(self._mem)
        self.buf[MSRPM01 - L0_BASE:MSRPM01 - L0_BASE + MSRPM_SIZE] = b"\xFF" * MSRPM_SIZE

    def view(self, pa: int, size: int) -> memoryview:
        """Direct access to L0-private memory at physical address `pa`."""
        off = pa - L0_BASE
        return self.buf[off:off + size]

    # ---- permission maps --------------------------------------------------------------------
    def msr_passthrough(self, msr: int):
        """Context manager: let L0 itself touch `msr` through Unicorn while in guest mode.

        Unicorn's own msr_read/msr_write run the guest-mode intercept check, which would longjmp
        back into our hook; lifting the MSRPM bits for the duration avoids that."""
        return _MsrWindow(self.buf, msr)

    # ---- boot ---------------------------------------------------------------------------------
    def enter_multiboot(self, entry: int, magic: int, mbi: int) -> int:
        """Build vmcb01 for the multiboot entry state and a trampoline that VMRUNs it.

        Multiboot v1 machine state: 32-bit protected mode, flat CS/DS/ES/FS/GS/SS, paging off,
        interrupts off, EAX = magic, EBX = physical address of the info block. Returns the
        trampoline address to start execution at."""
        vm = bytearray(0x1000)
        struct.pack_into("<I", vm, VMCB_INTERCEPT_EXCEPTIONS, 0xFFFFFFFF)
        struct.pack_into("<H", vm, VMCB_INTERCEPT_DR_WRITE, L0_DR_WRITE_INTERCEPTS)
        struct.pack_into("<HH", vm, VMCB_INTERCEPT_CR_READ, L0_CR_INTERCEPTS, L0_CR_WRITE_INTERCEPTS)
        misc = 0
        for code in L0_INTERCEPTED_EXITS:
            misc |= intercept_bit(code)
        struct.pack_into("<Q", vm, VMCB_INTERCEPT_MISC, misc)
        struct.pack_into("<Q", vm, VMCB_IOPM_BASE_PA, IOPM01)
        struct.pack_into("<Q", vm, VMCB_MSRPM_BASE_PA, MSRPM01)
        struct.pack_into("<I", vm, VMCB_GUEST_ASID, 1)
        code32 = _seg(0x10, 0xC9B, 0xFFFFFFFF, 0)
        data32 = _seg(0x18, 0xC93, 0xFFFFFFFF, 0)
        vm[VMCB_SAVE_CS:VMCB_SAVE_CS + 16] = code32
        for off in (VMCB_SAVE_ES, VMCB_SAVE_SS, VMCB_SAVE_DS, VMCB_SAVE_FS, VMCB_SAVE_GS):
            vm[off:off + 16] = data32
        vm[VMCB_SAVE_GDTR:VMCB_SAVE_GDTR + 16] = _seg(0, 0, 0xFFFF, 0)
        vm[VMCB_SAVE_IDTR:VMCB_SAVE_IDTR + 16] = _seg(0, 0, 0x3FF, 0)
        vm[VMCB_SAVE_LDTR:VMCB_SAVE_LDTR + 16] = _seg(0, 0x82, 0xFFFF, 0)
        vm[VMCB_SAVE_TR:VMCB_SAVE_TR + 16] = _seg(0, 0x8B, 0xFFFF, 0)
        struct.pack_into("<Q", vm, VMCB_SAVE_EFER, 0)
        struct.pack_into("<Q", vm, VMCB_SAVE_CR0, 0x11)           # PE | ET
        struct.pack_into("<Q", vm, VMCB_SAVE_DR6, 0xFFFF0FF0)
        struct.pack_into("<Q", vm, VMCB_SAVE_DR7, 0x400)
        struct.pack_into("<Q", vm, VMCB_SAVE_RFLAGS, 0x2)
        struct.pack_into("<Q", vm, VMCB_SAVE_RIP, entry)
        struct.pack_into("<Q", vm, VMCB_SAVE_RSP, 0)
        struct.pack_into("<Q", vm, VMCB_SAVE_RAX, magic)
        self.view(VMCB01, 0x1000)[:] = vm
        # mov ebx, mbi; mov rax, VMCB01; vmrun  (TRAMPOLINE_INSNS instructions)
        tramp = (b"\xBB" + struct.pack("<I", mbi) + b"\x48\xB8" + struct.pack("<Q", VMCB01)
                 + b"\x0F\x01\xD8")
        self.view(TRAMPOLINE, len(tramp))[:] = tramp
        self.uc.msr_write(MSR_EFER, self.uc.msr_read(MSR_EFER) | EFER_SVME)
        self.uc.msr_write(MSR_VM_HSAVE_PA, HSAVE01)
        return TRAMPOLINE

    def exitinfo2(self, vmcb: int = VMCB01) -> int:
        """EXITINFO2 that Unicorn wrote into the VMCB it is running under (page-fault address)."""
        return struct.unpack_from("<Q", self.buf, vmcb - L0_BASE + VMCB_EXITINFO2)[0]


class _MsrWindow:
    def __init__(self, buf: memoryview, msr: int) -> None:
        self.buf = buf
        self.pos = msrpm_position(msr)
        self.off = MSRPM01 - L0_BASE + self.pos[0] if self.pos else 0

    def __enter__(self) -> None:
        if self.pos:
            self.old = self.buf[self.off]
            self.buf[self.off] = 0

    def __exit__(self, *exc) -> None:
        if self.pos:
            self.buf[self.off] = self.old
