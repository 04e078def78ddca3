"""Multiboot v1: find the header, place the kernel, build the information block.

Behaves like `qemu-system-x86_64 -kernel IMAGE`: a.out-kludge images (header flag 16) are loaded
from the addresses in the header; otherwise the image must be ELF (32 or 64-bit) and its PT_LOAD
segments go to their physical addresses. Every way an image can be wrong is an ImageError with
one sentence, never an exception from deep inside.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field

from ..errors import ImageError

MULTIBOOT_MAGIC = 0x1BADB002
HEADER_SEARCH = 8192
FLAG_AOUT_KLUDGE = 1 << 16

MBI_FLAG_MEM = 1 << 0
MBI_FLAG_BOOT_DEVICE = 1 << 1
MBI_FLAG_CMDLINE = 1 << 2
MBI_FLAG_MODS = 1 << 3
MBI_FLAG_MMAP = 1 << 6
MBI_FLAG_LOADER_NAME = 1 << 9
MBI_SIZE = 0x58
MMAP_AVAILABLE = 1
MMAP_RESERVED = 2

# Where the information block and its strings go: low memory that no image may overlap.
MBI_ADDR = 0x9000
MBI_AREA_END = 0xA000
BOOT_DEVICE_NONE = 0x8000FFFF
LOADER_NAME = b"svmemu\0"


@dataclass
class BootImage:
    entry: int
    segments: list[tuple[int, bytes]] = field(default_factory=list)


def _find_header(data: bytes) -> tuple[int, int]:
    for off in range(0, min(len(data), HEADER_SEARCH) - 11, 4):
        magic, flags, checksum = struct.unpack_from("<III", data, off)
        if magic == MULTIBOOT_MAGIC and (magic + flags + checksum) & 0xFFFFFFFF == 0:
            return off, flags
    raise ImageError("no multiboot header (magic 0x1BADB002 with a valid checksum) "
                     "in the first 8 KiB")


def _check_placement(segments: list[tuple[int, bytes]], entry: int, ram_size: int) -> None:
    if not segments:
        raise ImageError("the image has nothing to load")
    for addr, blob in segments:
        end = addr + len(blob)
        if addr < 0x1000 or end > ram_size:
            raise ImageError(f"segment {addr:#x}-{end:#x} lies outside the {ram_size >> 20} MiB of "
                             "RAM (or in the first 4 KiB)")
        if addr < MBI_AREA_END and end > MBI_ADDR:
            raise ImageError(f"segment {addr:#x}-{end:#x} overlaps the multiboot information "
                             f"area {MBI_ADDR:#x}-{MBI_AREA_END:#x}")
    if not any(a <= entry < a + len(b) for a, b in segments):
        raise ImageError(f"entry point {entry:#x} is not inside any loaded segment")


def _aout(data: bytes, hdr: int, ram_size: int) -> BootImage:
    if hdr + 32 > len(data):
        raise ImageError("multiboot header is truncated (a.out kludge fields missing)")
    header_addr, load_addr, load_end, bss_end, entry = struct.unpack_from("<5I", data, hdr + 12)
    if load_addr > header_addr:
        raise ImageError("multiboot header: load_addr is above header_addr")
    start = hdr - (header_addr - load_addr)
    if start < 0:
        raise ImageError("multiboot header: header_addr/load_addr point before the file start")
    if load_end:
        if load_end < load_addr:
            raise ImageError("multiboot header: load_end_addr is below load_addr")
        size = load_end - load_addr
        if start + size > len(data):
            raise ImageError(f"image is truncated: the header asks for {size:#x} bytes from file "
                             f"offset {start:#x}, the file has {len(data):#x}")
    else:
        size = len(data) - start
    blob = data[start:start + size]
    if bss_end:
        if bss_end < load_addr + size:
            raise ImageError("multiboot header: bss_end_addr is below the end of the load")
        blob += bytes(bss_end - load_addr - size)
    segments = [(load_addr, blob)]
    _check_placement(segments, entry, ram_size)
    return BootImage(entry, segments)


def parse_image(data: bytes, name: str, ram_size: int) -> BootImage:
    """Parse a multiboot kernel image into what must be placed in RAM and where to start."""
    if not data:
        raise ImageError(f"{name}: the file is empty")
    hdr, flags = _find_header(data)
    if flags & FLAG_AOUT_KLUDGE:
        return _aout(data, hdr, ram_size)
    if data[:4] != b"\x7fELF":
        raise ImageError(f"{name}: multiboot header has no a.out kludge (flag 16) and the file "
                         "is not ELF")
    from .elf import load_elf
    entry, segments = load_elf(data, name)
    _check_placement(segments, entry, ram_size)
    return BootImage(entry, segments)


def memory_map(ram_size: int) -> list[tuple[int, int, int]]:
    """(base, length, type) entries: conventional memory, the EBDA/BIOS holes, extended RAM."""
    return [(0, 0x9FC00, MMAP_AVAILABLE), (0x9FC00, 0x400, MMAP_RESERVED),
            (0xF0000, 0x10000, MMAP_RESERVED), (0x100000, ram_size - 0x100000, MMAP_AVAILABLE)]


def build_mbi(ram_size: int, cmdline: str, base: int) -> bytes:
    """The multiboot information block for physical address `base`, strings and map after it."""
    mmap = b"".join(struct.pack("<IQQI", 20, b, length, t) for b, length, t in memory_map(ram_size))
    cmd = cmdline.encode("utf-8", "replace") + b"\0"
    mmap_addr = base + MBI_SIZE
    cmd_addr = mmap_addr + len(mmap)
    name_addr = cmd_addr + len(cmd)
    if name_addr + len(LOADER_NAME) > MBI_AREA_END:
        raise ImageError("the command line is too long for the multiboot information area")
    flags = (MBI_FLAG_MEM | MBI_FLAG_BOOT_DEVICE | MBI_FLAG_CMDLINE | MBI_FLAG_MODS
             | MBI_FLAG_MMAP | MBI_FLAG_LOADER_NAME)
    info = bytearray(MBI_SIZE)
    struct.pack_into("<IIIII", info, 0, flags, 640, (ram_size >> 10) - 1024, BOOT_DEVICE_NONE,
                     cmd_addr)
    struct.pack_into("<II", info, 20, 0, 0)                   # no modules
    struct.pack_into("<II", info, 44, len(mmap), mmap_addr)
    struct.pack_into("<I", info, 64, name_addr)
    return bytes(info) + mmap + cmd + LOADER_NAME
