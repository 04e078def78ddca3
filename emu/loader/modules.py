"""Multiboot modules, given as QEMU's ``-initrd "file args,file2 args"`` gives them.

QEMU 7.2's rules (hw/i386/multiboot.c, and measured with a C kernel printing what it got):
modules are separated by ',' (',,' is a literal comma); in each, the file name runs to the
first space and the module's command line is the whole text, file name included.  After the
kernel (from its lowest loaded address, its size rounded up to a page) comes an information
area: the module array (16 bytes each: start, end, cmdline, 0), then the module command lines
in order, then the kernel command line and the boot loader name ("qemu"), rounded up to a page;
then each module, page-aligned.  The MBI's mods_addr is the array, mods_count the number.
svmemu computes the same addresses (the area's size as QEMU counts it), so modules and their
strings land where QEMU puts them; the kernel command line it points to stays in its block at
0x9500 (emu/loader/multiboot.py).  A file that cannot be read is an error (QEMU: status 1;
svmemu: status 2, one line).
"""
from __future__ import annotations

import struct

from emu.core.firmware.layout import LOW_RAM_END, ram_layout
from emu.errors import ImageError
from emu.loader.multiboot import BootImage, MBI_ADDR, MBI_AREA_END

PAGE = 0x1000
MB_MOD_SIZE = 16
QEMU_LOADER_NAME = b"qemu\0"       # counted as QEMU counts it, so addresses match QEMU's


class Module:
    __slots__ = ("path", "cmdline", "data")

    def __init__(self, path: str, cmdline: str, data: bytes) -> None:
        self.path = path
        self.cmdline = cmdline
        self.data = data


class ModuleLayout:
    """Where the modules go: ``mods_addr`` for the MBI, ``blobs`` (address, bytes) to copy."""

    __slots__ = ("mods_addr", "count", "blobs", "end")

    def __init__(self, mods_addr: int, count: int, blobs: list[tuple[int, bytes]],
                 end: int) -> None:
        self.mods_addr = mods_addr
        self.count = count
        self.blobs = blobs
        self.end = end


def split_initrd(spec: str) -> list[str]:
    """QEMU's option-value splitting: ',' separates, ',,' stands for a comma."""
    parts, cur, i = [], "", 0
    while i < len(spec):
        if spec[i] == ",":
            if spec[i + 1:i + 2] == ",":
                cur += ","
                i += 2
                continue
            parts.append(cur)
            cur = ""
        else:
            cur += spec[i]
        i += 1
    parts.append(cur)
    return parts


def read_modules(spec: str) -> list[Module]:
    """The modules ``spec`` names, read from their files."""
    mods = []
    for text in split_initrd(spec):
        path = text.split(" ", 1)[0]
        if not path:
            raise ImageError(f"--initrd: an empty module name in {spec!r}")
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise ImageError(f"cannot read module {path}: {e.strerror}") from None
        mods.append(Module(path, text, data))
    return mods


def _page_align(n: int) -> int:
    return (n + PAGE - 1) & ~(PAGE - 1)


def place_modules(image: BootImage, cmdline: str, spec: str, modules: list[Module],
                  ram_size: int) -> ModuleLayout:
    """QEMU's placement after ``image`` (``cmdline`` is the kernel's full command line as the
    MBI gives it, ``spec`` the --initrd text)."""
    if isinstance(image, BootImage):
        load_start, load_end = image.span()
    else:                                # any object with entry and segments (tests build them)
        load_start = min(a for a, _ in image.segments)
        load_end = max(a + len(b) for a, b in image.segments)
    base = load_start + _page_align(load_end - load_start)
    strings = b"".join(m.cmdline.encode("utf-8", "replace") + b"\0" for m in modules)
    info_size = MB_MOD_SIZE * len(modules) + len(cmdline.encode("utf-8", "replace")) + 1
    if spec:
        info_size += len(spec.encode("utf-8", "replace")) + 1
    info_size += len(QEMU_LOADER_NAME)
    pos = _page_align(base + info_size)
    array = b""
    str_addr = base + MB_MOD_SIZE * len(modules)
    blobs: list[tuple[int, bytes]] = []
    for m in modules:
        array += struct.pack("<4I", pos, pos + len(m.data), str_addr, 0)
        str_addr += len(m.cmdline.encode("utf-8", "replace")) + 1
        if m.data:
            blobs.append((pos, m.data))
        pos = _page_align(pos + len(m.data))
    end = pos
    if modules:
        blobs.insert(0, (base, array + strings))
        top = ram_layout(ram_size).firmware_top
        if end > top:
            raise ImageError(f"the modules do not fit: they would end at {end:#x}, usable RAM "
                             f"below 4 GiB ends at {top:#x}")
        for start, stop, what in ((MBI_ADDR, MBI_AREA_END, "the multiboot information area"),
                                  (LOW_RAM_END, 0x100000, "the EBDA/VGA/BIOS area below 1 MiB")):
            if base < stop and end > start:
                raise ImageError(f"the modules ({base:#x}-{end:#x}) would overlap {what}")
    return ModuleLayout(base, len(modules), blobs, end)
