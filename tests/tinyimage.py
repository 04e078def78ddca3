"""Build tiny multiboot-style images in Python for machine tests.

The guests in guests/ use the shared prelude; these tests need exact control of the GDT, IDT, TSS
and page tables instead (odd gate types, missing entries, user mode), so they lay memory out
directly: a 32-bit entry that enters long mode, then a 64-bit body given by the test.

Layout (physical = virtual, identity-mapped 1 GiB with 2 MiB pages):
  0x20000 PML4, 0x21000 PDPT, 0x22000 PD;  0x101000 GDT;  0x102000 TSS;  0x103000 IDT
  0x100000 32-bit entry;  0x200000 64-bit body;  stacks: 0x80000 (kernel), 0x90000 (IST1),
  0x98000 (RSP0)
"""
from __future__ import annotations

import re
import struct


from keystone import Ks, KS_ARCH_X86, KS_MODE_32, KS_MODE_64

from emu.loader.asm import FIXED_BYTES
from emu.loader.multiboot import BootImage

ENTRY = 0x100000
GDT = 0x101000
TSS = 0x102000
IDT = 0x103000
BODY = 0x200000
KSTACK = 0x80000
IST1_STACK = 0x90000
RSP0_STACK = 0x98000
SEL_CODE64, SEL_DATA, SEL_CODE32, SEL_UCODE64, SEL_UDATA, SEL_TSS = 0x08, 0x10, 0x18, 0x20 | 3, 0x28 | 3, 0x30

_ks32 = Ks(KS_ARCH_X86, KS_MODE_32)
_ks64 = Ks(KS_ARCH_X86, KS_MODE_64)


# The SVM instructions as the product's assembler spells them (one table, emu/loader/asm.py).
_SVM = {name: enc for name, (_, enc) in FIXED_BYTES.items() if enc[:2] == b"\x0f\x01"}


def _svm_bytes(src: str) -> str:
    """keystone does not know the SVM instructions: spell them as bytes."""
    for name, enc in _SVM.items():
        src = re.sub(rf"\b{name}\b", ".byte " + ", ".join(f"{b:#x}" for b in enc), src)
    return src


def asm64(src: str, addr: int) -> bytes:
    return bytes(_ks64.asm(_svm_bytes(src), addr)[0])


def asm32(src: str, addr: int) -> bytes:
    return bytes(_ks32.asm(src, addr)[0])


def gate64(offset: int, selector: int = SEL_CODE64, ist: int = 0, gtype: int = 0xE, dpl: int = 0,
           present: bool = True) -> bytes:
    attr = gtype | (dpl << 5) | (0x80 if present else 0)
    return struct.pack("<HHBBHII", offset & 0xFFFF, selector, ist, attr, (offset >> 16) & 0xFFFF,
                       offset >> 32, 0)


# The loader's own image type, so the machine treats a test image as it treats a file's.
Image = BootImage


HANDLERS = 0x210000   # handler i is placed at HANDLERS + 0x100 * i


def handler(i: int) -> int:
    return HANDLERS + 0x100 * i


def long_mode_image(body: str, idt: dict[int, bytes] | None = None,
                    handlers: list[str] = (), idt_limit: int = 256 * 16 - 1) -> Image:
    """`body` is 64-bit code at BODY; `handlers[i]` is 64-bit code at handler(i).

    `idt` maps vectors to 16-byte gates; unlisted vectors are not present."""
    gdt = struct.pack("<QQQQQQ", 0, 0x00AF9A000000FFFF, 0x00CF92000000FFFF, 0x00CF9A000000FFFF,
                      0x00AFFA000000FFFF, 0x00CFF2000000FFFF)
    tss_lo = (0x67 & 0xFFFF) | ((TSS & 0xFFFFFF) << 16) | (0x89 << 40) | ((TSS >> 24) << 56)
    gdt += struct.pack("<QQ", tss_lo, TSS >> 32)
    tss = bytearray(0x68)
    struct.pack_into("<Q", tss, 4, RSP0_STACK)
    struct.pack_into("<Q", tss, 36, IST1_STACK)
    entry = asm32(f"""
        lgdt [{GDT + 0x100}]
        mov eax, 0x20000
        mov cr3, eax
        mov eax, cr4
        or eax, 0x20
        mov cr4, eax
        mov ecx, 0xC0000080
        rdmsr
        or eax, 0x100
        wrmsr
        mov eax, cr0
        or eax, 0x80010000
        mov cr0, eax
        .byte 0xEA
        .long {BODY - 0x40}
        .word {SEL_CODE64}
    """, ENTRY)
    prologue = asm64(f"""
        mov ax, {SEL_DATA}
        mov ds, ax
        mov es, ax
        mov ss, ax
        mov rsp, {KSTACK}
        mov ax, {SEL_TSS}
        ltr ax
        mov rax, {IDT + 0x1000}
        lidt [rax]
        jmp {BODY}
    """, BODY - 0x40)
    assert len(prologue) <= 0x40
    code = asm64(body, BODY)
    pml4 = struct.pack("<Q", 0x21007)
    pdpt = struct.pack("<Q", 0x22007)
    pd = b"".join(struct.pack("<Q", (i << 21) | 0x87) for i in range(512))
    idt_bytes = bytearray(256 * 16)
    for vec, g in (idt or {}).items():
        idt_bytes[vec * 16:vec * 16 + 16] = g
    return Image(ENTRY, [
        (0x20000, pml4), (0x21000, pdpt), (0x22000, pd),
        (GDT, gdt), (GDT + 0x100, struct.pack("<HI", len(gdt) - 1, GDT)),
        (TSS, bytes(tss)), (IDT, bytes(idt_bytes)),
        (IDT + 0x1000, struct.pack("<HQ", idt_limit, IDT)),
        (ENTRY, entry), (BODY - 0x40, prologue), (BODY, code),
    ] + [(handler(i), asm64(src, handler(i))) for i, src in enumerate(handlers)])


def to_elf32(img: Image) -> bytes:
    """The image as a multiboot ELF32 file: one PT_LOAD per segment (so low-memory tables and
    the kernel at 1 MiB need not be one flat blob across the BIOS hole), a multiboot header
    with flags 0 right after the program headers."""
    n = len(img.segments)
    phoff = 52
    mb_off = phoff + 32 * n
    data_off = (mb_off + 12 + 0xFFF) & ~0xFFF
    ehdr = struct.pack("<4sBBBB8xHHIIIIIHHHHHH", b"\x7fELF", 1, 1, 1, 0, 2, 3, 1, img.entry,
                       phoff, 0, 0, 52, 32, n, 40, 0, 0)
    phdrs, blobs, off = b"", b"", data_off
    for addr, blob in img.segments:
        phdrs += struct.pack("<8I", 1, off, addr, addr, len(blob), len(blob), 7, 0x1000)
        blobs += blob
        off += len(blob)
    mb = struct.pack("<III", 0x1BADB002, 0, (-0x1BADB002) & 0xFFFFFFFF)
    head = ehdr + phdrs + mb
    return head + bytes(data_off - len(head)) + blobs
