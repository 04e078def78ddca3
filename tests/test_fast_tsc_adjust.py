"""RDTSC answered in C on a machine of several CPUs after the guest wrote its TSC: the writer's
TSC is the machine's time plus its own adjustment (Machine._read_tsc, `tsc_adjust`), in L1 and
in L2's replayed reads alike, and L2's under a TSC ratio scales that 64-bit count (a TSC
written back below the time makes the adjustment wrap). Each guest runs with the C hook and
without it (the reference): every TSC value it read must be the same, while C answered most."""
from __future__ import annotations

import struct

import pytest

from emu.core.cpu_models import parse_cpu
from emu.core.machine import Machine
from emu.engine import replay
from svm_ext.extension import SvmExtension
from tests.nested_image import nested_image, vmcb12

pytestmark = pytest.mark.skipif(not replay.available(), reason="the C engine was not built")

RAM = 128 << 20
TRIPS = 200
LOG = 0x600000
AHEAD, BACK = 0x0000_7000_0000_0000, 1
RATIO_HALF = 1 << 31            # 0.5 in the TSC ratio's 8.32 fixed point


def _l1(written: int, ratio: int) -> str:
    """L1 writes its TSC (and the TSC ratio L2 runs with), then L2 and L1 read the TSC in
    turn (L1_TIMING of test_fast_exits)."""
    return f"""
    mov ecx, 0x10
    mov eax, {written & 0xFFFFFFFF}
    mov edx, {written >> 32}
    wrmsr
    mov ecx, 0xC0000104
    mov eax, {ratio & 0xFFFFFFFF}
    mov edx, {ratio >> 32}
    wrmsr
    mov r14, {LOG}
    xor r13, r13
again:
    mov rax, rdi
    vmrun
    add qword ptr [rdi + 0x578], 3
    rdtsc
    shl rdx, 32
    or rax, rdx
    mov [r14 + 0x4000 + r13 * 8], rax
    cmp r13, {TRIPS}
    jb again
    mov al, 0
    out 0xf4, al
"""


L2_TIMING = """
l2: rdtsc
    shl rdx, 32
    or rax, rdx
    mov [r14 + r13 * 8], rax
    inc r13
    vmmcall
    jmp l2
"""


def run(fast: bool, offset: int, written: int, ratio: int
        ) -> tuple[list[int], list[int], int, int]:
    ext = SvmExtension("architectural")
    m = Machine(RAM, stdout=None, extensions=[ext], cpus=2, cpu=parse_cpu("EPYC,+svm,+tsc-scale"))
    m.replay.enabled = fast
    m.load_multiboot(nested_image(_l1(written, ratio), L2_TIMING, vmcb12(tsc_offset=offset)),
                     "guest ")
    res = m.run(timeout=60)
    assert res.reason == "exit" and res.status == 1, res
    ram = bytes(m.ram)
    return (list(struct.unpack_from(f"<{TRIPS}Q", ram, LOG)),
            list(struct.unpack_from(f"<{TRIPS}Q", ram, LOG + 0x4000)), m.tsc,
            m.fast_exits.answered[0])


@pytest.mark.parametrize("offset", [0, 0x123456789A])
@pytest.mark.parametrize("written,ratio", [(AHEAD, 1 << 32), (BACK, RATIO_HALF)])
def test_rdtsc_after_a_tsc_write_same_in_c_and_python(offset, written, ratio):
    l2, l1, tsc, answered = run(True, offset, written, ratio)
    assert (l2, l1, tsc) == run(False, offset, written, ratio)[:3]
    assert l1[1] >= written and all(b > a for a, b in zip(l1[1:], l1[2:]))
    # L2's reads move by its share of the time between them: no jump
    steps = [(b - a) % (1 << 64) for a, b in zip(l2[1:], l2[2:])]
    assert max(steps) < 1 << 20, max(steps)
    assert answered > 2 * TRIPS - 20, answered
