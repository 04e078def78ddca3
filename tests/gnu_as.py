"""GNU binutils as the reference assembler: a source built with `as` + `ld` + `objcopy` into the
same flat image svmemu's assembler writes (sections laid out as emu/loader/gas/link.py says)."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from emu.loader.gas.link import linker_script

HAVE_BINUTILS = all(shutil.which(t) for t in ("as", "ld", "objcopy"))


class GnuAsError(Exception):
    """GNU as or ld refused the source (the message is theirs)."""


def gnu_image(source: str, workdir: Path, include_dirs: list[str], bits: int = 64) -> bytes:
    """The image GNU as + ld make of `source` (text), loaded at the image base."""
    src = workdir / "ref.S"
    src.write_text(source)
    obj, elf, img = workdir / "ref.o", workdir / "ref.elf", workdir / "ref.bin"
    (workdir / "link.ld").write_text(linker_script())
    steps = [["as", f"--{bits}", *[f"-I{d}" for d in include_dirs], "-o", str(obj), str(src)],
             ["ld", "-m", "elf_x86_64" if bits == 64 else "elf_i386", "-T", str(workdir / "link.ld"),
              "-o", str(elf), str(obj)],
             ["objcopy", "-O", "binary", str(elf), str(img)]]
    for cmd in steps:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if r.returncode:
            raise GnuAsError(f"{cmd[0]}: {r.stderr.strip()}")
    return img.read_bytes() if img.exists() else b""
