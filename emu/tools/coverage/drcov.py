"""drcov version 2 coverage files (DynamoRIO's format, which Lighthouse loads).

Layout: text header lines ("DRCOV VERSION: 2", "DRCOV FLAVOR: ...", "Module Table: version 2,
count N", "Columns: ...", one line per module), then "BB Table: N bbs" and N binary entries
{u32 offset from the module base, u16 size, u16 module id}, little-endian.

A module here is an address space (L1, or L2 with its ASID), not a loaded file: L1 and L2 code at
the same virtual address land in different modules. With several CPUs a module is a CPU's
address space (`IMAGE@cpu1.L2.asid1`), so each CPU's coverage can be loaded alone. A module covers at most one 4 GiB window (its
offsets are 32-bit), so a space whose code spans more gets one module per window. Each block is
recorded once (drcov lists covered blocks, not hit counts).
"""
from __future__ import annotations

import os
import struct
from typing import TYPE_CHECKING

from unicorn import UC_HOOK_BLOCK

from emu.errors import OptionError
from .base import CoverageOutput, is_l0

if TYPE_CHECKING:
    from unicorn import Uc
    from emu.core.machine import Machine

VERSION = 2
FLAVOR = "svmemu"
BB_ENTRY = struct.Struct("<IHH")
_WINDOW = 32            # bits of a module's offset
_PAGE = 0xFFF
_MAX_BB = 0xFFFF


class DrcovOutput(CoverageOutput):
    name = "drcov"

    def __init__(self, path: str, image_name: str) -> None:
        super().__init__(path, image_name)
        self.blocks: dict[str, set[tuple[int, int]]] = {}

    def hooks(self, cpu: "Machine", index: int) -> list[int]:
        return [cpu.uc.hook_add(UC_HOOK_BLOCK, self._on_block, index)]

    def _on_block(self, uc: "Uc", address: int, size: int, index: int) -> None:
        if is_l0(address):
            return
        space = self._spaces[index] or self.space(index)
        bucket = self.blocks.get(space)
        if bucket is None:
            bucket = self.blocks[space] = set()
        bucket.add((address, size))

    def modules(self) -> list[tuple[str, int, int, list[tuple[int, int]]]]:
        """(module name, base, end, blocks) in a stable order: by space, then address."""
        groups: dict[tuple[str, int], list[tuple[int, int]]] = {}
        for space, blocks in self.blocks.items():
            for addr, size in blocks:
                groups.setdefault((space, addr >> _WINDOW), []).append((addr, size))
        out = []
        base_name = os.path.basename(self.image_name)
        for (space, _window), blocks in sorted(groups.items()):
            blocks.sort()
            base = blocks[0][0] & ~_PAGE
            end = (max(a + s for a, s in blocks) + _PAGE) & ~_PAGE
            out.append((f"{base_name}@{space}", base, end, blocks))
        return out

    def render(self) -> bytes:
        mods = self.modules()
        lines = [f"DRCOV VERSION: {VERSION}", f"DRCOV FLAVOR: {FLAVOR}",
                 f"Module Table: version 2, count {len(mods)}",
                 "Columns: id, base, end, entry, checksum, timestamp, path"]
        entries = []
        for mid, (name, base, end, blocks) in enumerate(mods):
            lines.append(f"{mid:3d}, {base:#018x}, {end:#018x}, {0:#018x}, {0:#010x}, "
                         f"{0:#010x}, {name}")
            for addr, size in blocks:
                entries.append(BB_ENTRY.pack(addr - base, min(size, _MAX_BB), mid))
        lines.append(f"BB Table: {len(entries)} bbs")
        # Module paths are file names: bytes that are not UTF-8 go back out as they came in.
        return ("\n".join(lines) + "\n").encode("utf-8", "surrogateescape") + b"".join(entries)

    def close(self) -> None:
        try:
            with open(self.path, "wb") as f:
                f.write(self.render())
        except OSError as e:
            raise OptionError(f"cannot write coverage file {self.path}: {e.strerror}")
