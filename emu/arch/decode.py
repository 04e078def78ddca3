"""Instruction prefixes, for the handlers that must look at an instruction's bytes (INTn, MOV CR8,
the intercepts Unicorn reports under another name). One place, so the rule "legacy prefixes in
any order, then at most one REX, only in 64-bit code" is written once."""
from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    import capstone

LEGACY_PREFIXES = frozenset({0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65, 0x66, 0x67, 0xF0, 0xF2, 0xF3})
MAX_INSN_LENGTH = 15
# INT1 (the APM's name; also ICEBP): one byte, the only encoding of the instruction.
OPCODE_INT1 = 0xF1


class Prefixed(NamedTuple):
    opcode: bytes       # the bytes from the opcode on
    prefixes: bytes     # the legacy prefixes
    rex: int            # the REX byte, or 0
    length: int         # bytes before the opcode (legacy prefixes and REX)


def split_prefixes(code: bytes, mode_bits: int) -> Prefixed:
    i = 0
    while i < len(code) and i < MAX_INSN_LENGTH - 1 and code[i] in LEGACY_PREFIXES:
        i += 1
    legacy, rex = code[:i], 0
    if mode_bits == 64 and i < len(code) and code[i] & 0xF0 == 0x40:
        rex = code[i]
        i += 1
    return Prefixed(code[i:], legacy, rex, i)


_DECODERS: "dict[tuple[int, bool], capstone.Cs]" = {}


def decoder(mode_bits: int, detail: bool = False) -> "capstone.Cs":
    """A capstone decoder for 16-, 32- or 64-bit code, made once per mode (and per `detail`:
    operand details cost every decode, so only callers that read operands ask for them).
    capstone is imported on the first call: most runs never decode, and its import costs a
    noticeable part of a short run's start."""
    d = _DECODERS.get((mode_bits, detail))
    if d is None:
        import capstone
        modes = {64: capstone.CS_MODE_64, 32: capstone.CS_MODE_32, 16: capstone.CS_MODE_16}
        d = _DECODERS[(mode_bits, detail)] = capstone.Cs(capstone.CS_ARCH_X86, modes[mode_bits])
        d.detail = detail
    return d
