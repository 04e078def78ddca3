"""Reading the image a user names: an assembly source is assembled, anything else read as bytes.

Only a regular file is read (a FIFO would block forever, /dev/zero never ends), and at most as
many bytes as the guest has RAM: a kernel cannot be larger than the memory it is loaded into.
"""
from __future__ import annotations

import os
import stat

from emu.errors import ImageError


def load_image_bytes(path: str, limit: int) -> tuple[bytes, str]:
    """The image's bytes and the name to show for it; `limit` is the guest's RAM size."""
    if path.endswith((".S", ".s", ".asm")):
        from emu.loader.asm import assemble_source
        return assemble_source(path), path
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            raise ImageError(f"cannot read {path}: not a regular file")
        if info.st_size > limit:
            raise ImageError(f"cannot load {path}: {info.st_size} bytes do not fit in "
                             f"{limit >> 20} MiB of RAM")
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError as e:
        raise ImageError(f"cannot read {path}: {e.strerror}")
    if len(data) > limit:                       # it grew while we read it
        raise ImageError(f"cannot load {path}: larger than the {limit >> 20} MiB of RAM")
    return data, path


def image_symbols(path: str) -> dict[str, int]:
    """Symbols a user may name instead of addresses: the assembler's labels for a source, the
    symbol table of an ELF image; none for a flat image."""
    if path.endswith((".S", ".s", ".asm")):
        from emu.loader.asm import assemble
        return assemble(path).symbols
    try:
        from elftools.elf.elffile import ELFFile
        from elftools.elf.sections import SymbolTableSection
        with open(path, "rb") as f:
            if f.read(4) != b"\x7fELF":
                return {}
            f.seek(0)
            elf = ELFFile(f)
            return {s.name: s["st_value"] for sec in elf.iter_sections()
                    if isinstance(sec, SymbolTableSection) for s in sec.iter_symbols() if s.name}
    except Exception:
        return {}
