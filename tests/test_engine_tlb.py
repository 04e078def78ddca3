"""The engine's software TLB under a working set larger than its startup size (patch 0014).

Unicorn resizes its TLB only at flushes; 0014 also grows a table that keeps evicting entries
while nothing flushes it. Accesses across the resizes must stay exact (stores, loads, a store
that spans two pages, code on a page of the set), and a grown table must then hold the set:
an entry is still there after one sweep of all the others, which the startup table of 256
entries cannot do (x86 lets a TLB keep a translation whose PTE changed until INVLPG, so both
answers are architectural; which one comes back shows the table's reach)."""
from __future__ import annotations

import pytest
from unicorn.x86_const import UC_X86_REG_R12, UC_X86_REG_R13, UC_X86_REG_R15

from emu.arch.bits import PTE_P, PTE_PS, PTE_RW
from emu.core.machine import Machine
from emu.engine.unicorn_build import loader
from svm_ext.extension import SvmExtension
from tests.nested_image import EXIT_PASS
from tests.tinyimage import long_mode_image

PAGE = 0x1000
LARGE = 0x200000
SET_START = 0x1000000            # 16 MiB .. 48 MiB: 8192 pages, 2 MiB-mapped (tinyimage's PD)
SET_END = 0x3000000
PD = 0x22000                     # tinyimage's page directory: PD[i] maps i * 2 MiB
SUM_AT = 0x800                   # each page's counter
ROUNDS = 4

SWEEP = f"""
        xor r12, r12
        mov r14, {ROUNDS}
    round:
        mov rbx, {SET_START}
    sweep:
        add qword ptr [rbx + {SUM_AT}], rbx
        add r12, qword ptr [rbx + {SUM_AT}]
        mov qword ptr [rbx + {PAGE - 4}], rbx   # 4 bytes on this page, 4 on the next
        mov rax, qword ptr [rbx + {PAGE - 4}]
        cmp rax, rbx
        jne bad
        add rbx, {PAGE}
        cmp rbx, {SET_END}
        jb sweep
        dec r14
        jnz round
"""

# The first page of the set remapped onto the 2 MiB frame just past the set, whose counter
# offset holds 0: first without INVLPG (either answer is allowed), then with it (0 required).
REMAP = f"""
        mov rbx, {PD + SET_START // LARGE * 8}
        mov rax, {SET_END | PTE_P | PTE_RW | PTE_PS}
        mov qword ptr [rbx], rax
        mov rbx, {SET_START}
        mov r13, qword ptr [rbx + {SUM_AT}]
        invlpg [rbx]
        mov r15, qword ptr [rbx + {SUM_AT}]
        {EXIT_PASS}
    bad:
        hlt
"""


def _run(body: str) -> Machine:
    m = Machine(64 << 20, stdout=None, extensions=[SvmExtension()])
    m.load_multiboot(long_mode_image(body), "tlb-test")
    res = m.run(timeout=60)
    assert res.reason == "exit", res
    return m


def _expected_sum() -> int:
    pages = range(SET_START, SET_END, PAGE)
    return sum(k * p for k in range(1, ROUNDS + 1) for p in pages)


def test_a_sweep_larger_than_the_tlb_stays_exact_across_resizes():
    m = _run(SWEEP + REMAP)
    assert m.uc.reg_read(UC_X86_REG_R12) == _expected_sum()
    for p in (SET_START + PAGE, SET_START + 4097 * PAGE, SET_END - PAGE):
        assert int.from_bytes(m.ram[p + SUM_AT:p + SUM_AT + 8], "little") == ROUNDS * p
    assert m.uc.reg_read(UC_X86_REG_R15) == 0        # INVLPG: the new mapping, always


@pytest.mark.skipif(not loader.has_fix("tlb-grows-under-pressure"),
                    reason="the stock engine's TLB keeps its startup size without flushes")
def test_the_grown_tlb_holds_the_whole_sweep():
    m = _run(SWEEP + REMAP)
    assert m.uc.reg_read(UC_X86_REG_R13) == ROUNDS * SET_START   # the old frame, still cached


def test_code_on_a_page_of_the_set_is_rewritten_after_the_resizes():
    """A function on a page of the swept set, called after the sweep and rewritten by a store
    through the grown table: the call after the store runs the new code."""
    func = SET_START + 123 * PAGE
    body = SWEEP + f"""
        mov rbx, {func}
        mov dword ptr [rbx], 0x1234b8          # mov eax, 0x1234
        mov byte ptr [rbx + 5], 0xc3            # ret
        call rbx
        mov r13, rax
        mov dword ptr [rbx + 1], 0x5678
        call rbx
        mov r15, rax
        {EXIT_PASS}
    bad:
        hlt
    """
    m = _run(body)
    assert m.uc.reg_read(UC_X86_REG_R13) == 0x1234
    assert m.uc.reg_read(UC_X86_REG_R15) == 0x5678
