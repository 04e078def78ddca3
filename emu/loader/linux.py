"""Linux bzImage kernels, entered the way QEMU 7.2's ``-kernel`` + SeaBIOS leave them at the
kernel's 32-bit entry (Documentation/arch/x86/boot.rst, "32-bit boot protocol").

QEMU loads a bzImage's real-mode setup at 0x10000, its command line at 0x20000 and its
protected-mode part at 1 MiB, edits the setup header (loader type 0xB0, CAN_USE_HEAP with the
heap ending below the command line, cmd_line_ptr, the initrd's address and size) and runs the
setup code through its linuxboot option ROM; that real-mode code asks the BIOS for the e820 map
(INT 15h), the video mode (INT 10h) and more, fills the "zero page" (struct boot_params), masks
the 8259s, disables NMIs at the CMOS index port, loads a GDT with flat __BOOT_CS (0x10) and
__BOOT_DS (0x18), a null IDT, and jumps to code32_start in protected mode with ESI = the zero
page.  svmemu has no real-mode BIOS services, so it does the setup code's part itself and enters
at code32_start in that state: the zero page holds the header as QEMU edited it and what the
BIOS calls would have reported from QEMU's firmware (the e820 map of emu/core/firmware/layout.py,
which the multiboot information reports too; E801 and 88h memory sizes).  Differences, all in
what real-mode BIOS calls fill in: no video information (svmemu has no VGA: the kernel finds
no VGA console), no EDD disk data, no keyboard flags, no setup_data RNG seed (QEMU 7.2 appends
a random one; svmemu stays deterministic).  The zero page sits where QEMU loads the setup code
(0x10000) and the GDT just after it; the setup code itself is not copied.

The initrd goes where QEMU puts it: page-aligned down from the top of usable low RAM (below
the pc machine's acpi_data_size, the firmware's reserved 128 KiB), and below the header's
initrd_addr_max unless the kernel takes one anywhere below 4 GiB (XLF_CAN_BE_LOADED_ABOVE_4G).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field

from emu.core.firmware.layout import LOW_RAM_END, MiB, e820_map, ram_layout
from emu.errors import ImageError
from emu.loader.linux_header import HDR_HEADER, HDR_MAGIC, recognises  # noqa: F401

# The setup header (boot.rst, "The real-mode kernel header"): offsets in the file and in
# boot_params, which holds the header at the same offsets.
HDR_SETUP_SECTS = 0x1F1
HDR_SYSSIZE = 0x1F4
HDR_BOOT_FLAG = 0x1FE
HDR_JUMP_END = 0x201           # byte: the header ends at 0x202 + this value
HDR_VERSION = 0x206
HDR_TYPE_OF_LOADER = 0x210
HDR_LOADFLAGS = 0x211
HDR_CODE32_START = 0x214
HDR_RAMDISK_IMAGE = 0x218
HDR_RAMDISK_SIZE = 0x21C
HDR_HEAP_END_PTR = 0x224
HDR_CMD_LINE_PTR = 0x228
HDR_INITRD_ADDR_MAX = 0x22C
HDR_XLOADFLAGS = 0x236
HDR_INIT_SIZE = 0x260
BOOT_FLAG = 0xAA55

LOADED_HIGH = 1 << 0
CAN_USE_HEAP = 1 << 7
XLF_CAN_BE_LOADED_ABOVE_4G = 1 << 1

# struct boot_params (arch/x86/include/uapi/asm/bootparam.h)
ZERO_PAGE_SIZE = 0x1000
BP_EXT_MEM_K = 0x002            # screen_info.ext_mem_k: INT 15h AH=88h
BP_ALT_MEM_K = 0x1E0            # INT 15h AX=E801h
BP_E820_ENTRIES = 0x1E8
BP_E820_TABLE = 0x2D0
E820_MAX_ENTRIES_ZEROPAGE = 128

# Where QEMU 7.2 puts a kernel of boot protocol 2.02 or later (hw/i386/x86.c, x86_load_linux).
REAL_ADDR = 0x10000
CMDLINE_ADDR = 0x20000
PROT_ADDR = 0x100000
QEMU_LOADER_TYPE = 0xB0          # boot.rst: loader ID 0xB is QEMU, version 0
QEMU_ACPI_DATA_SIZE = 0x20000    # pc-i440fx-7.2's acpi_data_size: the initrd stays below it
MIN_PROTOCOL = 0x202             # cmd_line_ptr; the protocol QEMU loads at these addresses

# The GDT the setup code loads before its jump (arch/x86/boot/pm.c): __BOOT_CS, __BOOT_DS flat,
# and __BOOT_TSS (a 32-bit TSS at 4096, limit 103), which it loads into TR.
ZERO_PAGE_ADDR = REAL_ADDR
GDT_ADDR = REAL_ADDR + ZERO_PAGE_SIZE
BOOT_CS = 0x10
BOOT_DS = 0x18
BOOT_TSS = 0x20
BOOT_TSS_BASE, BOOT_TSS_LIMIT = 4096, 103
_GDT = struct.pack("<5Q", 0, 0, 0x00CF9B000000FFFF, 0x00CF93000000FFFF, 0x0000890010000067)

# What the setup code leaves in the 8259s (mask_all_interrupts: all but the cascade) and at the
# CMOS index port (NMI disabled) before it enters protected mode.
PIC_MASTER_MASK = 0xFB
PIC_SLAVE_MASK = 0xFF
CMOS_INDEX_NMI_OFF = 0x80


@dataclass
class LinuxBoot:
    """What to copy into RAM and the 32-bit boot protocol's entry state."""

    entry: int                                   # code32_start
    boot_params: int                             # ESI
    gdt: tuple[int, int]                         # GDTR base, limit
    segments: list[tuple[int, bytes]] = field(default_factory=list)
    protocol: int = 0
    initrd: tuple[int, int] | None = None        # address, size


def _u16(data: bytes, off: int) -> int:
    return struct.unpack_from("<H", data, off)[0]


def _u32(data: bytes, off: int) -> int:
    return struct.unpack_from("<I", data, off)[0]


def initrd_address(data: bytes, size: int, ram_size: int, name: str) -> int:
    """QEMU's initrd placement: page-aligned down from the highest address it may end at."""
    protocol = _u16(data, HDR_VERSION)
    if protocol >= 0x20C and _u16(data, HDR_XLOADFLAGS) & XLF_CAN_BE_LOADED_ABOVE_4G:
        initrd_max = 0xFFFFFFFF
    elif protocol >= 0x203:
        initrd_max = _u32(data, HDR_INITRD_ADDR_MAX)
    else:
        initrd_max = 0x37FFFFFF
    below = ram_layout(ram_size).below_4g
    if initrd_max >= below - QEMU_ACPI_DATA_SIZE:
        initrd_max = below - QEMU_ACPI_DATA_SIZE - 1
    if size >= initrd_max:
        raise ImageError(f"{name}: the initrd is too large ({size} bytes; at most {initrd_max})")
    return (initrd_max - size) & ~0xFFF


def _zero_page(data: bytes, ram_size: int, cmdline_addr: int,
               initrd: tuple[int, int] | None) -> bytes:
    """struct boot_params as the setup code leaves it after QEMU's edits and the BIOS calls."""
    page = bytearray(ZERO_PAGE_SIZE)
    end = HDR_HEADER + data[HDR_JUMP_END]
    page[HDR_SETUP_SECTS:end] = data[HDR_SETUP_SECTS:end]
    page[HDR_TYPE_OF_LOADER] = QEMU_LOADER_TYPE
    page[HDR_LOADFLAGS] |= CAN_USE_HEAP
    struct.pack_into("<H", page, HDR_HEAP_END_PTR, cmdline_addr - REAL_ADDR - 0x200)
    struct.pack_into("<I", page, HDR_CMD_LINE_PTR, cmdline_addr)
    if initrd is not None:
        struct.pack_into("<II", page, HDR_RAMDISK_IMAGE, *initrd)
    entries = e820_map(ram_size)
    for i, (base, length, kind) in enumerate(entries[:E820_MAX_ENTRIES_ZEROPAGE]):
        struct.pack_into("<QQI", page, BP_E820_TABLE + 20 * i, base, length, kind)
    page[BP_E820_ENTRIES] = min(len(entries), E820_MAX_ENTRIES_ZEROPAGE)
    # INT 15h E801 and 88h, as SeaBIOS answers them from the RAM it found below 4 GiB.
    top = ram_layout(ram_size).firmware_top
    if top > 16 * MiB:
        alt = 15 * 1024 + ((top - 16 * MiB) >> 16 << 6)
    else:
        alt = (top - MiB) >> 10
    struct.pack_into("<I", page, BP_ALT_MEM_K, alt)
    struct.pack_into("<H", page, BP_EXT_MEM_K, min((ram_layout(ram_size).below_4g - MiB) >> 10,
                                                   0xFFFF))
    return bytes(page)


def parse_linux(data: bytes, name: str, ram_size: int, cmdline: str,
                initrd: bytes | None = None, initrd_name: str = "initrd") -> LinuxBoot:
    """What to load and where to enter for a bzImage's bytes (refused with one clear line when
    the header is not one svmemu can enter, or the file is cut short)."""
    if not recognises(data):
        raise ImageError(f"{name}: not a Linux kernel (no \"HdrS\" setup header at 0x202)")
    protocol = _u16(data, HDR_VERSION)
    if _u16(data, HDR_BOOT_FLAG) != BOOT_FLAG:
        raise ImageError(f"{name}: bad Linux setup header: boot_flag is not 0xAA55")
    if protocol < MIN_PROTOCOL or not data[HDR_LOADFLAGS] & LOADED_HIGH:
        raise ImageError(f"{name}: Linux boot protocol {protocol >> 8}.{protocol & 0xFF:02d} "
                         f"{'' if data[HDR_LOADFLAGS] & LOADED_HIGH else 'loaded low '}is not "
                         f"supported (svmemu enters bzImages of protocol 2.02 or later at their "
                         f"32-bit entry)")
    sects = data[HDR_SETUP_SECTS] or 4
    setup_size = (sects + 1) * 512
    header_end = HDR_HEADER + data[HDR_JUMP_END]
    if setup_size > len(data) or header_end > setup_size:
        raise ImageError(f"{name}: invalid Linux kernel header (the setup code is "
                         f"{setup_size:#x} bytes, the file {len(data):#x})")
    payload = data[setup_size:]
    syssize = _u32(data, HDR_SYSSIZE) * 16
    if len(payload) < syssize:
        raise ImageError(f"{name}: the Linux kernel is truncated: its header says "
                         f"{syssize:#x} bytes of protected-mode code, the file has "
                         f"{len(payload):#x} after the setup code")
    lay = ram_layout(ram_size)
    need = _u32(data, HDR_INIT_SIZE) if protocol >= 0x20A else len(payload)
    if PROT_ADDR + max(need, len(payload)) > lay.firmware_top:
        raise ImageError(f"{name}: the kernel needs {max(need, len(payload)) >> 20} MiB from "
                         f"1 MiB (init_size), more than the {ram_size >> 20} MiB of RAM give")
    cmd = cmdline.encode("utf-8", "replace") + b"\0"
    if CMDLINE_ADDR + len(cmd) > LOW_RAM_END:
        raise ImageError(f"the kernel command line ({len(cmd) - 1} bytes) does not fit below "
                         f"{LOW_RAM_END:#x}")
    placed = None
    segments = [(PROT_ADDR, payload), (CMDLINE_ADDR, cmd), (GDT_ADDR, _GDT)]
    if initrd is not None:
        addr = initrd_address(data, len(initrd), ram_size, initrd_name)
        if addr < PROT_ADDR + max(need, len(payload)):
            raise ImageError(f"{initrd_name}: the initrd ({len(initrd)} bytes) does not fit "
                             f"between the kernel and the top of low RAM")
        placed = (addr, len(initrd))
        if initrd:
            segments.append((addr, initrd))
    segments.insert(0, (ZERO_PAGE_ADDR, _zero_page(data, ram_size, CMDLINE_ADDR, placed)))
    return LinuxBoot(_u32(data, HDR_CODE32_START), ZERO_PAGE_ADDR,
                     (GDT_ADDR, len(_GDT) - 1), segments, protocol, placed)
