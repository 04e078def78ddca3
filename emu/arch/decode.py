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
# The instructions that load SS and so hold debug traps back for one instruction (APM vol. 2,
# 13.1.3.3): MOV Sreg, r/m (8E /r, SS is Sreg 2) and POP SS (17, not in 64-bit mode).
OPCODE_MOV_SREG = 0x8E
OPCODE_POP_SS = 0x17
SREG_SS = 2


def loads_ss(code: bytes, mode_bits: int) -> bool:
    """Does `code` begin with MOV SS or POP SS?"""
    op = split_prefixes(code, mode_bits).opcode
    if not op:
        return False
    if op[0] == OPCODE_POP_SS:
        return mode_bits != 64
    return op[0] == OPCODE_MOV_SREG and len(op) > 1 and (op[1] >> 3) & 7 == SREG_SS


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


# MOV to memory through ModRM (APM vol. 3, MOV): opcode -> immediate bytes (C7: with a 32-bit
# operand; a 16-bit operand takes 2).
_MOV_MODRM_STORES = {0x88: 0, 0x89: 0, 0xC6: 1, 0xC7: 4}
_NOT_DECIDED_PREFIXES = frozenset({0xF0, 0xF2, 0xF3})     # LOCK, and the XACQUIRE/XRELEASE hints


def mov_store_length(code: bytes, mode_bits: int) -> int | None:
    """Length of `code`'s first instruction when it is MOV r/m, reg or MOV r/m, imm with a memory
    operand and 32- or 64-bit addressing; 0 when it is one of these opcodes with a register
    operand; None when this cannot tell (another opcode, 16-bit addressing, LOCK/REP prefixes,
    too few bytes), so the caller decodes fully. Answers without a disassembler: a kicked MMIO
    store is common at boot, and loading one costs more than the rest of a short run."""
    p = split_prefixes(code, mode_bits)
    op = p.opcode
    if len(op) < 2 or op[0] not in _MOV_MODRM_STORES or _NOT_DECIDED_PREFIXES & set(p.prefixes):
        return None
    modrm = op[1]
    mod, reg, rm = modrm >> 6, (modrm >> 3) & 7, modrm & 7
    if op[0] in (0xC6, 0xC7) and reg != 0:
        return None                   # not MOV (C6/C7 F8 are XABORT/XBEGIN, the rest #UD)
    if mod == 3:
        return 0
    addr32 = mode_bits == 64 or (mode_bits == 16) == (0x67 in p.prefixes)
    if not addr32:
        return None
    n = 2
    if rm == 4:
        if len(op) < 3:
            return None
        n += 1
        if mod == 0 and op[2] & 7 == 5:
            n += 4
    if mod == 0 and rm == 5:
        n += 4
    n += {0: 0, 1: 1, 2: 4}[mod]
    imm = _MOV_MODRM_STORES[op[0]]
    if op[0] == 0xC7 and not p.rex & 0x8 and (mode_bits == 16) != (0x66 in p.prefixes):
        imm = 2
    length = p.length + n + imm
    return length if length <= min(len(code), MAX_INSN_LENGTH) else None
