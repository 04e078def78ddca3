"""NRIP's fast path must agree with a full decode wherever it answers at all."""
from __future__ import annotations

import capstone
import pytest
from hypothesis import given, strategies as st

from svm_ext.extension import fixed_length
from tests.tinyimage import asm64

CS64 = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
INSNS = ["vmrun", "vmmcall", "vmload", "vmsave", "stgi", "clgi", "skinit", "invlpga", "rdtscp",
         "monitor", "mwait", "xsetbv", "swapgs", "cpuid", "rdtsc", "rdmsr", "wrmsr", "rdpmc",
         "invd", "wbinvd", "hlt", "pause"]


def decoded(code: bytes) -> int:
    return next(CS64.disasm(code, 0, 1)).size


@pytest.mark.parametrize("insn", INSNS)
def test_fixed_length_matches_capstone(insn):
    code = asm64(insn, 0) + b"\x90" * 14
    assert fixed_length(code) == decoded(code)


@pytest.mark.parametrize("insn", ["lgdt [rax]", "invlpg [rbx + 8]", "mov cr3, rax", "in al, 0x60",
                                  "int 0x80", "out dx, eax", "db 0x66; cpuid"])
def test_anything_else_is_left_to_the_decoder(insn):
    code = asm64(insn.replace("db 0x66; ", ".byte 0x66\n"), 0) + b"\x90" * 14
    assert fixed_length(code) in (0, decoded(code))


@given(st.binary(min_size=15, max_size=15))
def test_never_disagrees_on_random_bytes(code):
    n = fixed_length(code)
    if n:
        assert n == decoded(code)
