"""Multiboot v1, loaded exactly as ``qemu-system-x86_64 -kernel IMAGE`` (QEMU 7.2) loads it.

The image: the header (magic 0x1BADB002, flags, checksum) is searched at 4-byte steps in the
first 8192 - 48 bytes (QEMU stops there so the whole header fits in its 8 KiB buffer).  A file
QEMU would take for a Linux kernel ("HdrS" at 0x202) is refused.  With flags bit 16 (a.out
kludge) the header's addresses place the file; otherwise the file must be ELF (emu/loader/elf.py).
Header flag bits other than 16 are ignored, as QEMU ignores them (it only warns about bit 2,
video mode).  On top of QEMU we refuse what would break the machine instead of the guest:
segments outside RAM, in the first 4 KiB or the EBDA/VGA/BIOS hole below 1 MiB, overlapping
each other; an entry point outside RAM.  A segment over the information area loads: QEMU's
multiboot option ROM writes the information block first and the kernel after it, so the
kernel's bytes win (kvm-unit-tests' realmode.flat lives at 0x8000-0xa86c and ignores EBX).

The information block: measured on QEMU 7.2 (guests/mbinfo.S, ``-m 128``): flags 0x24F (memory,
boot device, cmdline, modules (emu/loader/modules.py: count and array address as QEMU sets
them, also with none), memory map, boot loader name), mem_lower 639,
mem_upper = KiB of the usable RAM from 1 MiB (the firmware keeps the top 128 KiB below the RAM
end), boot_device 0x8000FFFF, cmdline = "<kernel path as given> <-append text>" (see
``qemu_cmdline``), the memory map in ``memory_map``, EBX = 0x9500.
Deliberate differences (pointer values only; guests must follow pointers, not expect them):
QEMU's firmware builds the memory map at 0x9000 and puts the command line and loader name after
the kernel's bss; we keep everything in one block at 0x9500 (MBI, map, command line, name), so a
kernel's bss can never clobber them.  The boot loader name is "svmemu" (QEMU says "qemu"), so a
guest can tell where it runs.
"""
from __future__ import annotations

import struct

from emu.core.firmware.layout import (E820_RAM, E820_RESERVED, FIRMWARE_RESERVED_TOP,  # noqa: F401
                                     LOW_RAM_END, MIN_RAM, e820_map, ram_layout)
from emu.errors import ImageError, OptionError
from emu.loader.linux_header import recognises as recognises_linux

MULTIBOOT_MAGIC = 0x1BADB002
BOOTLOADER_MAGIC = 0x2BADB002
HEADER_SEARCH = 8192 - 48
FLAG_AOUT_KLUDGE = 1 << 16

MBI_FLAG_MEM = 1 << 0
MBI_FLAG_BOOT_DEVICE = 1 << 1
MBI_FLAG_CMDLINE = 1 << 2
MBI_FLAG_MODS = 1 << 3
MBI_FLAG_MMAP = 1 << 6
MBI_FLAG_LOADER_NAME = 1 << 9
MBI_FLAGS = (MBI_FLAG_MEM | MBI_FLAG_BOOT_DEVICE | MBI_FLAG_CMDLINE | MBI_FLAG_MODS
             | MBI_FLAG_MMAP | MBI_FLAG_LOADER_NAME)
MBI_SIZE = 0x58
MMAP_AVAILABLE = E820_RAM
MMAP_RESERVED = E820_RESERVED

MBI_ADDR = 0x9500
"""Where the machine places build_mbi's bytes and what EBX holds at entry (QEMU's address)."""
MBI_AREA_END = 0xA000
"""End of the area the information block may fill; a kernel segment loaded over it wins."""
BOOT_DEVICE_NONE = 0x8000FFFF
LOADER_NAME = b"svmemu\0"

ROM_WINDOW_START = 0xA0000      # VGA window, option ROMs, BIOS: nothing a kernel load can change
ROM_WINDOW_END = 0x100000

# Ranges no image may load into: the real-mode IVT/BDA page and the EBDA/VGA/BIOS hole below 1 MiB.
_FORBIDDEN = [(0, 0x1000, "the first 4 KiB"),
              (LOW_RAM_END, 0x100000, "the EBDA/VGA/BIOS area below 1 MiB")]


class BootImage:
    """What to copy into RAM, what to zero, and where the 32-bit entry starts."""

    __slots__ = ("entry", "segments", "load_start", "load_end", "bss")

    def __init__(self, entry: int, segments: list[tuple[int, bytes]] | None = None,
                 load_start: int | None = None, load_end: int | None = None,
                 bss: list[tuple[int, int]] | None = None) -> None:
        self.entry = entry                      # 32-bit physical entry point
        # (phys addr, bytes)
        self.segments: list[tuple[int, bytes]] = segments if segments is not None else []
        self.load_start = load_start            # the span QEMU counts as the kernel (modules
        self.load_end = load_end                # follow it), segments dropped included
        # (phys addr, length): zeroed
        self.bss: list[tuple[int, int]] = bss if bss is not None else []

    def span(self) -> tuple[int, int]:
        if self.load_start is not None and self.load_end is not None:
            return self.load_start, self.load_end
        spans = [(a, a + len(b)) for a, b in self.segments] + [(a, a + n) for a, n in self.bss]
        return min(s for s, _ in spans), max(e for _, e in spans)


def qemu_cmdline(image_path: str, append: str = "") -> str:
    """The command line QEMU passes: the -kernel argument as typed, a space, the -append text
    (so the line ends in a space when there is no -append)."""
    return f"{image_path} {append}"


def _ram_split(ram_size: int) -> tuple[int, int]:
    """RAM below and above 4 GiB, split as QEMU's pc machine does (emu/core/firmware/layout.py)."""
    lay = ram_layout(ram_size)
    return lay.below_4g, lay.above_4g


def _check_ram(ram_size: int) -> None:
    if ram_size < MIN_RAM:
        raise OptionError(f"RAM size {ram_size:#x} is below the {MIN_RAM >> 20} MiB multiboot needs")


def memory_map(ram_size: int) -> list[tuple[int, int, int]]:
    """(base, length, type) as QEMU 7.2 (SeaBIOS e820, qemu64 AMD CPU) reports it."""
    _check_ram(ram_size)
    return e820_map(ram_size)


def build_mbi(ram_size: int, cmdline: str, base: int = MBI_ADDR, *, mods_count: int = 0,
              mods_addr: int | None = None) -> bytes:
    """The bytes to place at physical ``base`` (EBX = base): information block, memory map,
    command line, boot loader name.  Modules (emu/loader/modules.py) are described by their
    count and the address of their array."""
    entries = memory_map(ram_size)
    mmap = b"".join(struct.pack("<IQQI", 20, b, n, t) for b, n, t in entries)
    cmd = cmdline.encode("utf-8", "replace") + b"\0"
    mmap_addr = base + MBI_SIZE
    cmd_addr = mmap_addr + len(mmap)
    name_addr = cmd_addr + len(cmd)
    if name_addr + len(LOADER_NAME) > base + (MBI_AREA_END - MBI_ADDR):
        raise OptionError(f"the command line ({len(cmd) - 1} bytes) does not fit in the multiboot "
                          f"information area")
    mem_upper = entries[3][1] >> 10
    info = bytearray(MBI_SIZE)
    struct.pack_into("<8I", info, 0, MBI_FLAGS, LOW_RAM_END >> 10, mem_upper, BOOT_DEVICE_NONE,
                     cmd_addr, mods_count, cmd_addr if mods_addr is None else mods_addr, 0)
    struct.pack_into("<II", info, 44, len(mmap), mmap_addr)
    struct.pack_into("<I", info, 64, name_addr)
    return bytes(info) + mmap + cmd + LOADER_NAME


def _find_header(data: bytes, name: str) -> tuple[int, int]:
    for off in range(0, min(len(data) - 11, HEADER_SEARCH), 4):
        magic, flags, checksum = struct.unpack_from("<III", data, off)
        if magic == MULTIBOOT_MAGIC and (magic + flags + checksum) & 0xFFFFFFFF == 0:
            return off, flags
    if any(struct.unpack_from("<I", data, o)[0] == MULTIBOOT_MAGIC
           for o in range(0, min(len(data) - 3, HEADER_SEARCH), 4)):
        raise ImageError(f"{name}: no multiboot header: the magic 0x1BADB002 is there but the "
                         f"checksum is wrong")
    raise ImageError(f"{name}: no multiboot header (magic 0x1BADB002 with a valid checksum) in "
                     f"the first 8 KiB")


def _aout(data: bytes, hdr: int, name: str, limit: int
          ) -> tuple[int, list[tuple[int, bytes, int]]]:
    if hdr + 32 > len(data):
        raise ImageError(f"{name}: the multiboot header is truncated (a.out kludge fields missing)")
    header_addr, load_addr, load_end, bss_end, entry = struct.unpack_from("<5I", data, hdr + 12)
    if header_addr < load_addr:
        raise ImageError(f"{name}: multiboot header_addr {header_addr:#x} is below load_addr "
                         f"{load_addr:#x}")
    if header_addr - load_addr > hdr:
        raise ImageError(f"{name}: multiboot header_addr/load_addr put the load before the start "
                         f"of the file")
    start = hdr - (header_addr - load_addr)
    if load_end:
        if load_end < load_addr:
            raise ImageError(f"{name}: multiboot load_end_addr {load_end:#x} is below load_addr")
        size = load_end - load_addr
        if start + size > len(data):
            raise ImageError(f"{name}: the image is truncated: the header loads {size:#x} bytes "
                             f"from file offset {start:#x}, the file has {len(data):#x}")
    else:
        size = len(data) - start
    if load_addr + size > 1 << 32:
        raise ImageError(f"{name}: the kernel does not fit below 4 GiB")
    blob = data[start:start + size]
    if bss_end:
        if bss_end < load_addr + size:
            raise ImageError(f"{name}: multiboot bss_end_addr {bss_end:#x} is below the end of the "
                             f"loaded part {load_addr + size:#x}")
        if bss_end > limit:              # checked before the bss is allocated
            raise ImageError(f"{name}: multiboot bss_end_addr {bss_end:#x} lies outside RAM "
                             f"(below 4 GiB it ends at {limit:#x})")
        return entry, [(load_addr, blob, bss_end - load_addr)]
    return entry, [(load_addr, blob, size)]


def _check_placement(segments: list[tuple[int, bytes, int]], entry: int, ram_size: int,
                     name: str) -> None:
    low, _ = _ram_split(ram_size)
    top = low - FIRMWARE_RESERVED_TOP
    forbidden = _FORBIDDEN + [(top, low, "the firmware's ACPI tables at the top of low RAM")]
    spans = sorted((a, a + n) for a, _, n in segments if n)
    for start, end in spans:
        if end > low:
            raise ImageError(f"{name}: segment {start:#x}-{end:#x} lies outside the "
                             f"{ram_size >> 20} MiB of RAM")
        for fstart, fend, what in forbidden:
            if start < fend and end > fstart:
                raise ImageError(f"{name}: segment {start:#x}-{end:#x} overlaps {what} "
                                 f"({fstart:#x}-{fend:#x})")
    for (s1, e1), (s2, e2) in zip(spans, spans[1:]):
        if s2 < e1:
            raise ImageError(f"{name}: segments {s1:#x}-{e1:#x} and {s2:#x}-{e2:#x} overlap")
    if entry >= low:
        raise ImageError(f"{name}: entry point {entry:#x} lies outside the {ram_size >> 20} MiB "
                         f"of RAM")


def parse_image(data: bytes, name: str, ram_size: int) -> BootImage:
    """What to load and where to start, for a multiboot v1 kernel file's bytes."""
    _check_ram(ram_size)
    if not data:
        raise ImageError(f"{name}: the file is empty")
    if recognises_linux(data):
        raise ImageError(f"{name}: this is a Linux kernel (boot protocol), not a multiboot image")
    hdr, flags = _find_header(data, name)
    if flags & FLAG_AOUT_KLUDGE:
        entry, segments = _aout(data, hdr, name, _ram_split(ram_size)[0])
    elif data[:4] != b"\x7fELF":
        raise ImageError(f"{name}: the multiboot header has no a.out kludge (flag 16) and the "
                         f"file is not ELF")
    else:
        from emu.loader.elf import load_elf
        entry, segments = load_elf(data, name, _ram_split(ram_size)[0])
    # (address, file bytes, memory size): the bytes beyond the file's are zero (bss)
    segments = [(a, b, n) for a, b, n in segments if n]
    if not segments:
        raise ImageError(f"{name}: the image loads nothing")
    start, end = min(a for a, _, _ in segments), max(a + n for a, _, n in segments)
    if not flags & FLAG_AOUT_KLUDGE:
        if ROM_WINDOW_START <= entry < ROM_WINDOW_END:
            raise ImageError(f"{name}: entry point {entry:#x} lies in the VGA/BIOS window "
                             f"{ROM_WINDOW_START:#x}-{ROM_WINDOW_END:#x}")
        segments = _drop_rom_window(segments)
        if not segments:
            raise ImageError(f"{name}: the image loads nothing outside 0xA0000-0xFFFFF")
    _check_placement(segments, entry, ram_size, name)
    return BootImage(entry, [(a, b) for a, b, _ in segments if b], start, end,
                     [(a + len(b), n - len(b)) for a, b, n in segments if n > len(b)])


def _drop_rom_window(segments: list[tuple[int, bytes, int]]) -> list[tuple[int, bytes, int]]:
    """ELF segment bytes aimed at [0xA0000, 1 MiB) are not stored.  A default GNU ld puts the ELF
    headers in a PT_LOAD of their own just below the first section (0xFF000 for a kernel
    linked at 1 MiB); QEMU loads the kernel there after the firmware has write-protected its
    shadow of the BIOS area, so those bytes vanish (as they would in the VGA window) and the
    kernel boots.  Here they vanish too, and the firmware's tables in that area survive."""
    out = []
    for addr, data, size in segments:
        end = addr + size
        if end <= ROM_WINDOW_START or addr >= ROM_WINDOW_END:
            out.append((addr, data, size))
            continue
        if addr < ROM_WINDOW_START:
            out.append((addr, data[:ROM_WINDOW_START - addr], ROM_WINDOW_START - addr))
        if end > ROM_WINDOW_END:
            out.append((ROM_WINDOW_END, data[ROM_WINDOW_END - addr:], end - ROM_WINDOW_END))
    return out
