"""ELF32/ELF64 kernels for multiboot: PT_LOAD segments at their physical addresses.

pyelftools does the parsing (it knows every ELF corner we would otherwise get wrong); this module
only turns its errors and odd inputs into one-sentence ImageErrors.
"""
from __future__ import annotations

import io

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from ..errors import ImageError

EM_386 = "EM_386"
EM_X86_64 = "EM_X86_64"


def load_elf(data: bytes, name: str) -> tuple[int, list[tuple[int, bytes]]]:
    """(entry, [(physical address, bytes incl. zeroed bss)])."""
    try:
        elf = ELFFile(io.BytesIO(data))
        if elf["e_machine"] not in (EM_386, EM_X86_64):
            raise ImageError(f"{name}: ELF for {elf['e_machine']}, not x86")
        segments = []
        entry = elf["e_entry"]
        phys_entry = None
        for seg in elf.iter_segments():
            if seg["p_type"] != "PT_LOAD" or seg["p_memsz"] == 0:
                continue
            filesz, memsz = seg["p_filesz"], seg["p_memsz"]
            if filesz > memsz:
                raise ImageError(f"{name}: a PT_LOAD segment has p_filesz > p_memsz")
            if seg["p_offset"] + filesz > len(data):
                raise ImageError(f"{name}: ELF is truncated (a segment runs past the file end)")
            blob = seg.data()[:filesz] + bytes(memsz - filesz)
            segments.append((seg["p_paddr"], blob))
            vaddr = seg["p_vaddr"]
            if vaddr <= entry < vaddr + memsz:
                phys_entry = seg["p_paddr"] + (entry - vaddr)
    except ImageError:
        raise
    except ELFError as e:
        raise ImageError(f"{name}: bad ELF ({e})")
    except Exception as e:  # pyelftools reports truncation through many exception types
        raise ImageError(f"{name}: bad or truncated ELF ({type(e).__name__}: {e})")
    if not segments:
        raise ImageError(f"{name}: ELF has no loadable segments")
    if phys_entry is None:
        phys_entry = entry
    if phys_entry >> 32:
        raise ImageError(f"{name}: entry point {phys_entry:#x} is above 4 GiB")
    return phys_entry, segments

