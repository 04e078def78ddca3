"""Physical memory for the debugger: `monitor xp/Nfu ADDR` (QEMU's monitor command of the same
name and format letters) and the physical mode of m/M packets (`maintenance packet
Qqemu.PhyMemMode:1`).

Physical means system-physical: the machine's RAM as the bus sees it, below every paging layer,
L1's and the nested one alike (gdb's own `x` reads through the current world's paging).
"""
from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from emu.errors import SvmemuError, Unsupported

if TYPE_CHECKING:
    from emu.core.memory import GuestMemory

_UNITS = {"b": 1, "h": 2, "w": 4, "g": 8}
_PER_LINE = {1: 8, 2: 8, 4: 4, 8: 2}
MAX_ITEMS = 4096


def parse_format(fmt: str) -> tuple[int, str, int]:
    """`/Nfu` -> (count, format letter, unit size); QEMU's defaults: 1, x, w."""
    count, letter, unit = 1, "x", 4
    text = fmt[1:] if fmt.startswith("/") else fmt
    digits = ""
    while text and text[0].isdigit():
        digits, text = digits + text[0], text[1:]
    if digits:
        count = int(digits)
    for ch in text:
        if ch in _UNITS:
            unit = _UNITS[ch]
        elif ch in "xduc":
            letter = ch
        else:
            raise SvmemuError(f"xp: unknown format letter {ch!r} (formats x d u c, units b h w g)")
    if not 0 < count <= MAX_ITEMS:
        raise SvmemuError(f"xp: count must be between 1 and {MAX_ITEMS}")
    if letter == "c":
        unit = 1
    return count, letter, unit


def read(mem: "GuestMemory", pa: int, length: int) -> bytes:
    try:
        return mem.read_phys(pa, length)
    except Unsupported:
        raise SvmemuError(f"cannot read physical address {pa:#x}+{length}: no RAM there")


def write(mem: "GuestMemory", pa: int, data: bytes) -> None:
    try:
        mem.write_phys(pa, data)
    except Unsupported:
        raise SvmemuError(f"cannot write physical address {pa:#x}+{len(data)}: no RAM there")


def dump(mem: "GuestMemory", pa: int, fmt: str) -> str:
    count, letter, unit = parse_format(fmt)
    data = read(mem, pa, count * unit)
    code = {1: "B", 2: "H", 4: "I", 8: "Q"}[unit]
    values = struct.unpack(f"<{count}{code}", data)
    per_line = _PER_LINE[unit] if letter != "c" else 16
    lines = []
    for i in range(0, count, per_line):
        chunk = values[i:i + per_line]
        if letter == "c":
            text = "".join(chr(v) if 32 <= v < 127 else "." for v in chunk)
        elif letter == "x":
            text = " ".join(f"{v:#0{2 + 2 * unit}x}" for v in chunk)
        elif letter == "d":
            bits = 8 * unit
            text = " ".join(str(v - (1 << bits) if v >> (bits - 1) else v) for v in chunk)
        else:
            text = " ".join(str(v) for v in chunk)
        lines.append(f"{pa + i * unit:016x}: {text}")
    return "\n".join(lines)
