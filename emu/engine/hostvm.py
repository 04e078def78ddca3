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
from unicorn.x86_const import UC_X86_REG_RBP, UC_X86_REG_RDI, UC_X86_REG_RSI, UC_X86_REG_TR

from emu.arch.bits import (CR0_CD, CR0_ET, CR0_NW, CR0_PE, DR6_RESET, DR7_RESET, EFER_LMA, EFER_LME, EFER_SVME,
                           RFLAGS_FIXED)
from emu.arch.vmcb import (  # noqa: F401  (the exit codes L0 handles, reached as hostvm.VMEXIT_*)
    MSRPM_SIZE, IOPM_SIZE, VMCB_SIZE, Segment, Vmcb, intercept_misc_bit, msrpm_bit_offset,
    VMEXIT_CR0_READ, VMEXIT_CR0_WRITE, VMEXIT_DR7_WRITE, VMEXIT_EXCP0, VMEXIT_INTR, VMEXIT_VINTR,
    VMEXIT_RDTSC, VMEXIT_RDPMC, VMEXIT_CPUID, VMEXIT_SWINT, VMEXIT_HLT, VMEXIT_INVLPGA, VMEXIT_IOIO,
    VMEXIT_MSR, VMEXIT_SHUTDOWN, VMEXIT_VMRUN, VMEXIT_VMMCALL, VMEXIT_VMLOAD, VMEXIT_VMSAVE, VMEXIT_STGI,
    VMEXIT_CLGI, VMEXIT_SKINIT, VMEXIT_RDTSCP, VMEXIT_NPF,
    VMEXIT_IDTR_WRITE, VMEXIT_GDTR_WRITE, VMEXIT_LDTR_WRITE, VMEXIT_TR_WRITE,
)
from emu.arch.msrs import MSR_EFER, MSR_VM_HSAVE_PA

# Unicorn reports an intercepted event as this base plus the exit code.
UC_EXIT_BASE = 0x100


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

# No VMEXIT_IOIO: Unicorn 2.1.4 never checks the I/O permission map (its translator's I/O check
# returns early), so port I/O is seen only through the IN/OUT hooks.
L0_INTERCEPTED_EXITS = (
    VMEXIT_RDTSC, VMEXIT_RDPMC, VMEXIT_CPUID, VMEXIT_SWINT, VMEXIT_HLT, VMEXIT_INVLPGA, VMEXIT_MSR,
    VMEXIT_SHUTDOWN, VMEXIT_VMRUN, VMEXIT_VMMCALL, VMEXIT_VMLOAD, VMEXIT_VMSAVE, VMEXIT_STGI,
    VMEXIT_CLGI, VMEXIT_SKINIT, VMEXIT_RDTSCP,
    # Unicorn loads a non-canonical base into GDTR/IDTR/LDTR/TR without the #GP (table_loads.py).
    VMEXIT_IDTR_WRITE, VMEXIT_GDTR_WRITE, VMEXIT_LDTR_WRITE, VMEXIT_TR_WRITE,
)


# DR7 writes: Unicorn recomputes its hidden HF_IOBPT flag from DR7 on every guest write, and L0
# needs that flag kept (emu/engine/io_trap.py), so L0 sees every DR7 write, in L1 and L2 alike.
L0_DR_WRITE_INTERCEPTS = 1 << 7
# CR8 is the APIC's TPR[7:4]; Unicorn has no APIC and reads CR8 as 0, so L0 emulates it (irq.py).
L0_CR_INTERCEPTS = 1 << 8
# L0's own EFER, which the context holds until the trampoline's VMRUN enters L1: Unicorn's
# 64-bit mode and SVME for that VMRUN, whatever the CPU model offers L1.
L0_EFER = EFER_LME | EFER_LMA | EFER_SVME
# CR4 writes: Unicorn takes reserved CR4 bits silently; L0 checks them against the CPU model
# (emu/core/control_regs.py).
L0_CR_WRITE_INTERCEPTS = L0_CR_INTERCEPTS | 1 << 4


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

    def host_address(self, pa: int) -> int:
        """The host address of L0-private physical address `pa` (for C that reads it)."""
        return ctypes.addressof(ctypes.c_char.from_buffer(self._mem)) + pa - L0_BASE

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
        vm, raw = self._vmcb01()
        save = vm.save
        save.cs = Segment(0x10, 0xC9B, 0xFFFFFFFF, 0)
        save.es = save.ss = save.ds = save.fs = save.gs = Segment(0x18, 0xC93, 0xFFFFFFFF, 0)
        save.cr0 = CR0_PE | CR0_ET
        save.rip = entry
        save.rax = magic
        return self._enter(raw, mbi)

    def enter_linux32(self, entry: int, boot_params: int, gdt_base: int, gdt_limit: int) -> int:
        """Build vmcb01 for Linux's 32-bit boot protocol (Documentation/arch/x86/boot.rst):
        protected mode without paging, CS = __BOOT_CS (0x10) and DS/ES/SS = __BOOT_DS (0x18)
        from the GDT at `gdt_base`, TR = __BOOT_TSS (0x20: base 4096, limit 103) as the setup
        code's LTR leaves it, a null IDT, interrupts off, ESI = the zero page and EBX, EBP,
        EDI zero. Returns the trampoline address to start execution at."""
        vm, raw = self._vmcb01()
        save = vm.save
        save.cs = Segment(0x10, 0xC9B, 0xFFFFFFFF, 0)
        save.es = save.ss = save.ds = save.fs = save.gs = Segment(0x18, 0xC93, 0xFFFFFFFF, 0)
        save.gdtr = Segment(0, 0, gdt_limit, gdt_base)
        save.idtr = Segment(0, 0, 0, 0)
        save.cr0 = CR0_PE | CR0_ET
        save.rip = entry
        save.rax = 0
        for reg in (UC_X86_REG_RSI, UC_X86_REG_RBP, UC_X86_REG_RDI):
            self.uc.reg_write(reg, boot_params if reg == UC_X86_REG_RSI else 0)
        # VMRUN loads no TR (VMLOAD would): L1 starts with the CPU's. Busy 32-bit TSS type 0xB,
        # present, in QEMU's segment-flags layout (attributes from bit 8).
        self.uc.reg_write(UC_X86_REG_TR, (0x20, 4096, 103, 0x8B00))
        return self._enter(raw, 0)

    def enter_startup(self, vector: int) -> int:
        """Build vmcb01 for an application processor that a start-up IPI with `vector` wakes
        from wait-for-SIPI: the INIT state (APM vol. 2, 14.1.3: CR0 = CD|NW|ET, real mode,
        segments with base 0 and limit 0xFFFF), then CS = vector << 8 with base
        vector << 12, IP = 0. Returns the trampoline address to start execution at."""
        return self.enter_real_mode(vector << 8, 0, CR0_CD | CR0_NW | CR0_ET)

    def enter_real_mode(self, cs: int, ip: int, cr0: int, sp: int = 0) -> int:
        """Build vmcb01 for a CPU entering real mode at CS:IP (CS base = CS << 4), other
        segments 0 with limit 0xFFFF, the general registers 0, FLAGS = 2, the given CR0 and SP
        (a start-up IPI, the firmware's jump to a waking vector). Returns the trampoline
        address to start execution at."""
        vm, raw = self._vmcb01()
        save = vm.save
        save.cs = Segment(cs, 0x09B, 0xFFFF, cs << 4)
        save.es = save.ss = save.ds = save.fs = save.gs = Segment(0, 0x093, 0xFFFF, 0)
        save.cr0 = cr0
        save.rip = ip
        save.rax = 0
        save.rsp = sp
        return self._enter(raw, 0)

    @staticmethod
    def _vmcb01() -> tuple[Vmcb, bytearray]:
        """vmcb01 with L0's intercepts and the state both entries share."""
        raw = bytearray(VMCB_SIZE)
        vm = Vmcb(raw)
        vm.intercept_exceptions = 0xFFFFFFFF
        vm.intercept_dr_write = L0_DR_WRITE_INTERCEPTS
        vm.intercept_cr_read, vm.intercept_cr_write = L0_CR_INTERCEPTS, L0_CR_WRITE_INTERCEPTS
        misc = 0
        for code in L0_INTERCEPTED_EXITS:
            misc |= intercept_misc_bit(code)
        vm.intercept_misc1, vm.intercept_misc2 = misc & 0xFFFFFFFF, misc >> 32
        vm.iopm_base_pa = IOPM01
        vm.msrpm_base_pa = MSRPM01
        vm.guest_asid = 1
        save = vm.save
        save.gdtr = Segment(0, 0, 0xFFFF, 0)
        save.idtr = Segment(0, 0, 0x3FF, 0)
        save.ldtr = Segment(0, 0x82, 0xFFFF, 0)
        save.tr = Segment(0, 0x8B, 0xFFFF, 0)
        save.efer = 0
        save.dr6 = DR6_RESET
        save.dr7 = DR7_RESET
        save.rflags = RFLAGS_FIXED
        save.rsp = 0
        return vm, raw

    def _enter(self, raw: bytearray, ebx: int) -> int:
        self.view(VMCB01, VMCB_SIZE)[:] = raw
        # mov ebx, EBX; mov rax, VMCB01; vmrun  (TRAMPOLINE_INSNS instructions)
        tramp = (b"\xBB" + struct.pack("<I", ebx) + b"\x48\xB8" + struct.pack("<Q", VMCB01)
                 + b"\x0F\x01\xD8")
        self.view(TRAMPOLINE, len(tramp))[:] = tramp
        self.uc.msr_write(MSR_EFER, self.uc.msr_read(MSR_EFER) | EFER_SVME)
        self.uc.msr_write(MSR_VM_HSAVE_PA, HSAVE01)
        return TRAMPOLINE

    def exitinfo2(self, vmcb: int = VMCB01) -> int:
        """EXITINFO2 that Unicorn wrote into the VMCB it is running under (page-fault address)."""
        return Vmcb(self.buf, vmcb - L0_BASE).exitinfo2


class _MsrWindow:
    def __init__(self, buf: memoryview, msr: int) -> None:
        self.buf = buf
        self.pos = msrpm_bit_offset(msr)
        self.off = MSRPM01 - L0_BASE + self.pos[0] if self.pos else 0

    def __enter__(self) -> None:
        if self.pos:
            self.old = self.buf[self.off]
            self.buf[self.off] = 0

    def __exit__(self, *exc) -> None:
        if self.pos:
            self.buf[self.off] = self.old
