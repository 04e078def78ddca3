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

import struct

from emu.errors import ImageError

EM_386 = 3
EM_X86_64 = 62
PT_LOAD = 1
PF_X = 1


# The ELF header after e_ident, and a program header, for each class (the System V gABI).
_EHDR = {1: struct.Struct("<HHIIIIIHHH"), 2: struct.Struct("<HHIQQQIHHH")}
_PHDR32 = struct.Struct("<IIIIIIII")     # type offset vaddr paddr filesz memsz flags align
_PHDR64 = struct.Struct("<IIQQQQQQ")     # type flags offset vaddr paddr filesz memsz align
_MACHINES = {EM_386: "EM_386", EM_X86_64: "EM_X86_64"}


def _program_headers(data: bytes, elfclass: int, phoff: int, phnum: int, phentsize: int
                     ) -> list[dict[str, int]]:
    headers = []
    for i in range(phnum):
        at = phoff + i * phentsize
        if elfclass == 1:
            t, off, va, pa, fsz, msz, flags, _ = _PHDR32.unpack_from(data, at)
        else:
            t, flags, off, va, pa, fsz, msz, _ = _PHDR64.unpack_from(data, at)
        headers.append({"p_type": t, "p_offset": off, "p_vaddr": va, "p_paddr": pa,
                        "p_filesz": fsz, "p_memsz": msz, "p_flags": flags})
    return headers


def load_elf(data: bytes, name: str, limit: int = 1 << 32
             ) -> tuple[int, list[tuple[int, bytes, int]]]:
    """Entry point and (physical address, file bytes, memory size) per loadable segment; the
    bytes beyond the file part (bss) are zero. The bss is described, not allocated: a
    kvm-unit-tests kernel's is 12 MiB, and RAM a machine has just mapped is zero already.
    Parsed with struct: an ELF library's import alone would be a noticeable part of a short
    run's start."""
    if len(data) < 52 or data[:4] != b"\x7fELF":
        raise ImageError(f"{name}: not ELF (or truncated before the end of the ELF header)")
    if data[4] not in (1, 2):
        raise ImageError(f"{name}: bad ELF class {data[4]} (neither 32- nor 64-bit)")
    if data[5] != 1:
        raise ImageError(f"{name}: bad ELF file: not little-endian")
    elfclass = data[4]
    try:
        (_, e_machine, _, entry, phoff, _, _, _, phentsize,
         phnum) = _EHDR[elfclass].unpack_from(data, 16)
        if phnum and (phoff + phnum * phentsize > len(data) or phentsize
                      < (56 if elfclass == 2 else 32)):
            raise ImageError(f"{name}: program headers lie beyond the end of the file")
        headers = _program_headers(data, elfclass, phoff, phnum, phentsize)
    except ImageError:
        raise
    except struct.error as e:
        raise ImageError(f"{name}: bad or truncated ELF file ({type(e).__name__}: {e})") from None
    machine = _MACHINES.get(e_machine, e_machine)
    if machine not in ("EM_386", "EM_X86_64"):
        raise ImageError(f"{name}: bad ELF machine {machine} (a multiboot kernel is i386)")
    segments: list[tuple[int, bytes, int]] = []
    for ph in headers:
        if ph["p_type"] != PT_LOAD:
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
        segments.append((paddr, data[offset:offset + filesz], memsz))
    if not segments:
        raise ImageError(f"{name}: ELF file has no loadable segment")
    if elfclass == 1:
        entry &= 0xFFFFFFFF
    if entry >= 1 << 32:
        raise ImageError(f"{name}: entry point {entry:#x} is beyond 4 GiB")
    return entry, segments
