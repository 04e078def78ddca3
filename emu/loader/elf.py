"""ELF kernels for multiboot, loaded the way QEMU 7.2's ``-kernel`` loads them.

QEMU takes segments at their physical address (p_paddr), ignores PT_LOAD entries with p_memsz 0,
and zero-fills p_memsz beyond p_filesz. It accepts only e_machine EM_386 and refuses EM_X86_64
("Cannot load x86-64 image, give a 32bit one"); we load those too, because a 64-bit kernel linked
as ELF64 with a 32-bit multiboot entry is a common, valid way to build one (README notes that
QEMU will not boot such an image).  The entry is e_entry, except that when it falls inside
the file part of an executable segment whose p_vaddr differs from p_paddr it is moved to the
physical address (QEMU's rule for kernels linked at a higher virtual address).
"""
from __future__ import annotations

import io
import struct

from emu.errors import ImageError

EM_386 = 3
EM_X86_64 = 62
PT_LOAD = 1
PF_X = 1


def load_elf(data: bytes, name: str, limit: int = 1 << 32) -> tuple[int, list[tuple[int, bytes]]]:
    """Entry point and (physical address, bytes with zero-filled bss) per loadable segment.
    A segment must end below `limit` (the RAM below 4 GiB), checked before its bss is allocated."""
    from elftools.common.exceptions import ELFError, ELFParseError
    from elftools.elf.elffile import ELFFile

    if len(data) < 52 or data[:4] != b"\x7fELF":
        raise ImageError(f"{name}: not ELF (or truncated before the end of the ELF header)")
    if data[4] not in (1, 2):
        raise ImageError(f"{name}: bad ELF class {data[4]} (neither 32- nor 64-bit)")
    if data[5] != 1:
        raise ImageError(f"{name}: bad ELF file: not little-endian")
    try:
        elf = ELFFile(io.BytesIO(data))
        machine = elf.header["e_machine"]
        entry = int(elf.header["e_entry"])
        phoff = int(elf.header["e_phoff"])
        phnum = int(elf.header["e_phnum"])
        phentsize = int(elf.header["e_phentsize"])
        if phnum and (phoff + phnum * phentsize > len(data) or phentsize
                      < (56 if elf.elfclass == 64 else 32)):
            raise ImageError(f"{name}: program headers lie beyond the end of the file")
        headers = [elf.get_segment(i).header for i in range(phnum)]
    except ImageError:
        raise
    except (ELFError, ELFParseError, struct.error, ValueError, KeyError, IndexError,
            TypeError, OverflowError, AttributeError, AssertionError) as e:
        raise ImageError(f"{name}: bad or truncated ELF file ({type(e).__name__}: {e})") from None
    if machine not in ("EM_386", "EM_X86_64"):
        raise ImageError(f"{name}: bad ELF machine {machine} (a multiboot kernel is i386)")
    segments: list[tuple[int, bytes]] = []
    for ph in headers:
        if ph["p_type"] != "PT_LOAD":
            continue
        offset, filesz, memsz = int(ph["p_offset"]), int(ph["p_filesz"]), int(ph["p_memsz"])
        paddr, vaddr = int(ph["p_paddr"]), int(ph["p_vaddr"])
        if memsz == 0:
            continue
        if filesz > memsz:
            raise ImageError(f"{name}: a segment's file size exceeds its memory size")
        if offset + filesz > len(data):
            raise ImageError(f"{name}: a segment lies beyond the end of the file (truncated?)")
        if paddr + memsz > 1 << 32:
            raise ImageError(f"{name}: segment at {paddr:#x} is beyond 4 GiB")
        if paddr + memsz > limit:
            raise ImageError(f"{name}: segment {paddr:#x}-{paddr + memsz:#x} lies outside RAM "
                             f"(below 4 GiB it ends at {limit:#x})")
        if (vaddr != paddr and vaddr <= entry < vaddr + filesz
                and int(ph["p_flags"]) & PF_X):
            entry = entry - vaddr + paddr
        segments.append((paddr, data[offset:offset + filesz] + bytes(memsz - filesz)))
    if not segments:
        raise ImageError(f"{name}: ELF file has no loadable segment")
    if elf.elfclass == 32:
        entry &= 0xFFFFFFFF
    if entry >= 1 << 32:
        raise ImageError(f"{name}: entry point {entry:#x} is beyond 4 GiB")
    return entry, segments
