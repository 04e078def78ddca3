"""mov_store_length (emu/arch/decode.py) answers what capstone answered for a kicked MMIO store:
the length of a MOV whose destination is memory, 0 for another instruction. Wherever it gives an
answer it must be capstone's, in every mode, with any prefixes, ModRM, SIB and displacement."""
from __future__ import annotations

import random

import pytest

from emu.arch.decode import decoder, mov_store_length

PREFIXES = (0x66, 0x67, 0x2E, 0x3E, 0x26, 0x64, 0x65, 0x36, 0xF0, 0xF3, 0xF2)


def capstone_store_length(code: bytes, mode_bits: int) -> int:
    for ins in decoder(mode_bits).disasm(code, 0x1000, 1):
        if ins.mnemonic in ("mov", "movabs") and "[" in ins.op_str.split(",")[0]:
            return ins.size
    return 0


def _encodings(mode_bits: int, n: int, seed: int):
    rng = random.Random(seed)
    for _ in range(n):
        pre = bytes(rng.choice(PREFIXES) for _ in range(rng.choice((0, 0, 1, 2))))
        rex = bytes([0x40 | rng.randrange(16)]) if mode_bits == 64 and rng.random() < 0.5 else b""
        op = rng.choice((0x88, 0x89, 0xC6, 0xC7, 0x8B, 0x8C, 0xA3))
        yield pre + rex + bytes([op]) + bytes(rng.randrange(256) for _ in range(14))


@pytest.mark.parametrize("mode_bits", (16, 32, 64))
def test_every_answer_is_capstones(mode_bits):
    answered = 0
    for code in _encodings(mode_bits, 4000, mode_bits):
        code = code[:15]
        mine = mov_store_length(code, mode_bits)
        if mine is not None:
            answered += 1
            assert mine == capstone_store_length(code, mode_bits), code.hex()
    assert answered > (100 if mode_bits == 16 else 500)     # the common forms: answered here


@pytest.mark.parametrize("code, mode_bits, length", [
    ("c7 80 00 03 00 00 0b 00 00 00", 64, 10),      # mov dword ptr [rax + 0x300], 0xb
    ("89 04 25 b0 00 e0 fe", 64, 7),                # mov [0xfee000b0], eax (SIB, no base)
    ("89 05 10 00 00 00", 64, 6),                   # mov [rip + 0x10], eax
    ("66 c7 00 34 12", 32, 5),                      # mov word ptr [eax], 0x1234
    ("48 89 c3", 64, 0),                            # mov rbx, rax: no memory operand
])
def test_known_stores(code, mode_bits, length):
    assert mov_store_length(bytes.fromhex(code), mode_bits) == length


def test_what_it_leaves_to_the_disassembler():
    assert mov_store_length(bytes.fromhex("a3 00 00 e0 fe"), 32) is None          # moffs form
    assert mov_store_length(bytes.fromhex("89 07 00 00"), 16) is None             # 16-bit addressing
    assert mov_store_length(bytes.fromhex("f3 89 07"), 64) is None                # XRELEASE hint
