"""An L1 hypervisor skeleton for nested-SVM tests, on top of tests/tinyimage.py.

L1 enables SVM, points VM_HSAVE_PA at a page, then runs the test's `l1` code with RDI = vmcb12.
vmcb12 is prepared in Python (`vmcb12()`), describing an L2 that shares L1's GDT, IDT and page
tables and starts at L2_CODE in 64-bit mode.
"""
from __future__ import annotations

from emu.arch.vmcb import (INTERCEPT_VMMCALL, INTERCEPT_VMRUN, Vmcb, VMCB_SIZE)
from tests.tinyimage import (GDT, IDT, SEL_CODE64, SEL_DATA, asm64, long_mode_image)

VMCB12 = 0x400000
HSAVE = 0x401000
MSRPM = 0x402000      # 8 KiB
IOPM = 0x404000       # 12 KiB
L2_CODE = 0x500000
L2_STACK = 0x5F0000
ATTR_CODE64 = 0xA9B
ATTR_DATA = 0xC93

ENABLE_SVM = f"""
    mov ecx, 0xC0000080
    rdmsr
    or eax, 0x1000
    wrmsr
    mov ecx, 0xC0010117
    mov eax, {HSAVE}
    xor edx, edx
    wrmsr
    mov rdi, {VMCB12}
"""
EXIT_PASS = "mov al, 0\n out 0xf4, al\n"


def vmcb12(misc1: int = 0, misc2: int = INTERCEPT_VMRUN | INTERCEPT_VMMCALL, exceptions: int = 0,
           **fields: int) -> bytes:
    buf = bytearray(VMCB_SIZE)
    vm = Vmcb(buf)
    vm.intercept_misc1, vm.intercept_misc2 = misc1, misc2
    vm.intercept_exceptions = exceptions
    vm.guest_asid = 1
    vm.msrpm_base_pa, vm.iopm_base_pa = MSRPM, IOPM
    s = vm.save
    s.cs = (SEL_CODE64, ATTR_CODE64, 0xFFFFFFFF, 0)
    for name in ("ds", "es", "ss"):
        setattr(s, name, (SEL_DATA, ATTR_DATA, 0xFFFFFFFF, 0))
    s.gdtr = (0, 0, 6 * 8 + 16 - 1, GDT)
    s.idtr = (0, 0, 256 * 16 - 1, IDT)
    s.efer = 0x1500          # SVME | LMA | LME
    s.cr0 = 0x80010011       # PG | WP | ET | PE
    s.cr3 = 0x20000
    s.cr4 = 0x20             # PAE
    s.rflags = 0x2
    s.rip = L2_CODE
    s.rsp = L2_STACK
    s.dr6, s.dr7 = 0xFFFF0FF0, 0x400
    s.g_pat = 0x0007040600070406
    for key, value in fields.items():
        target = vm if hasattr(Vmcb, key) else s
        setattr(target, key, value)
    return bytes(buf)


def nested_image(l1: str, l2: str, vmcb: bytes, idt: dict | None = None,
                 handlers: list[str] = (), msrpm: bytes | None = None,
                 iopm: bytes | None = None):
    img = long_mode_image(ENABLE_SVM + l1, idt or {}, handlers)
    img.segments += [(VMCB12, vmcb), (L2_CODE, asm64(l2, L2_CODE)),
                     (MSRPM, msrpm or bytes(0x2000)), (IOPM, iopm or bytes(0x3000))]
    return img
