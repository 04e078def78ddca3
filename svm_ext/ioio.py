"""IOIO intercepts (APM vol. 2, 15.10): which L2 port accesses exit to L1, and EXITINFO1/2.

The hardware checks the IOPM before the instruction does anything; the machine gives us that
order (emu/engine/io_trap.py): the access is not performed, the instruction is undone, and the exit
happens with RIP at the IN/OUT. EXITINFO1 needs the instruction's prefixes, so it is decoded here
(a few opcodes, no general decoder needed).
"""
from __future__ import annotations

from emu.arch.value import Value
from emu.arch.vmcb import ioio_exitinfo1

_PREFIX_SEG = {0x26: 0, 0x2E: 1, 0x36: 2, 0x3E: 3, 0x64: 4, 0x65: 5}   # ES CS SS DS FS GS
_OTHER_PREFIXES = frozenset({0xF0, 0xF2, 0xF3, 0x66, 0x67}) | frozenset(_PREFIX_SEG)
SEG_ES, SEG_DS = 0, 3
_IN = frozenset({0xE4, 0xE5, 0xEC, 0xED, 0x6C, 0x6D})
_STRING = frozenset({0x6C, 0x6D, 0x6E, 0x6F})
_IMM8 = frozenset({0xE4, 0xE5, 0xE6, 0xE7})
IO_OPCODES = _IN | _STRING | _IMM8 | {0xEE, 0xEF}


class IoInstruction(Value):
    __slots__ = ("length", "is_in", "string", "rep", "addr_size", "seg")

    def __init__(self, length: int, is_in: bool, string: bool, rep: bool, addr_size: int,
                 seg: int) -> None:
        self.length = length
        self.is_in = is_in
        self.string = string
        self.rep = rep
        self.addr_size = addr_size  # 16, 32 or 64
        self.seg = seg              # effective segment of the memory operand (INS: ES; OUTS:
                                    # DS unless overridden)

    def exitinfo1(self, port: int, size: int) -> int:
        """EXITINFO1 for this access. SEG (bits 12:10) is a decode assist, which svmemu does not
        report in CPUID 0x8000000A, so it is left 0."""
        return ioio_exitinfo1(port, size, self.is_in, self.addr_size, self.string, self.rep)


def decode(code: bytes, mode_bits: int) -> IoInstruction | None:
    """Decode the I/O instruction at the start of `code` in a 16/32/64-bit code segment; None if
    it is not one (which would mean the hook and the bytes disagree)."""
    i, rep, addr_override, seg = 0, False, False, None
    while i < len(code) and i < 15:
        b = code[i]
        if mode_bits == 64 and 0x40 <= b <= 0x4F:
            i += 1              # REX: no bearing on I/O instructions
            continue
        if b not in _OTHER_PREFIXES:
            break
        if b in (0xF2, 0xF3):
            rep = True
        elif b == 0x67:
            addr_override = True
        elif b in _PREFIX_SEG:
            seg = _PREFIX_SEG[b]
        i += 1
    if i >= len(code) or code[i] not in IO_OPCODES:
        return None
    op = code[i]
    length = i + 1 + (1 if op in _IMM8 else 0)
    if mode_bits == 64:
        addr_size = 32 if addr_override else 64
    elif mode_bits == 32:
        addr_size = 16 if addr_override else 32
    else:
        addr_size = 32 if addr_override else 16
    string = op in _STRING
    if op in (0x6C, 0x6D):
        seg = SEG_ES            # INS always stores through ES
    elif seg is None:
        seg = SEG_DS
    return IoInstruction(length, op in _IN, string, rep and string, addr_size, seg)
