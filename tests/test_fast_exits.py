"""L1's RDTSC and CPUID answered in C (emu/core/fast_exits.py) leave exactly what the Python
handlers leave: each guest runs with the C hook and with it off (the Python path, the reference),
and what it printed, its registers, RAM and the virtual TSC must be the same, while C really did
answer most of the exits."""
from __future__ import annotations

from dataclasses import dataclass

import pytest

from bench import workloads
from emu.core.machine import Machine
from emu.engine import replay
from emu.engine.hw_switch import OFF_V_TPR
from emu.loader.asm import assemble_source
from emu.loader.multiboot import parse_image
from svm_ext.extension import SvmExtension

pytestmark = pytest.mark.skipif(not replay.available(), reason="the C engine was not built")

RAM = 128 << 20
_NOISE_FROM = OFF_V_TPR + 1      # context bytes past it hold host addresses (test_fast_switch)

# Loops over CPUID leaves (plain, subleaf-indexed, out of range, with junk in the upper halves
# of RAX/RCX), CPUID 1 before and after CR4.OSXSAVE changes, RDTSC, RDTSCP (left to Python),
# RDTSC in 32-bit compatibility code, and an interleaved WRMSR of the TSC. Every result is
# folded into a checksum and printed, so any difference shows in the output.
GUEST = r"""
.include "prelude.inc"

.macro fold reg
    mov rdi, \reg
    call fold_in
.endm

main:
    xor r15, r15
    mov r14, 200
.Lloop:
    mov rax, 0
    cpuid
    fold rax
    fold rbx
    mov eax, 1
    cpuid
    fold rcx
    fold rdx
    mov rax, 0xdead000000000007
    mov rcx, 0xbeef000000000000
    cpuid
    fold rbx
    mov eax, 7
    mov ecx, 1
    cpuid
    fold rax
    mov eax, 0xd
    mov ecx, 1
    cpuid
    fold rax
    mov eax, 0x80000001
    cpuid
    fold rcx
    fold rdx
    mov eax, 0x4fffffff
    cpuid
    fold rax
    rdtsc
    fold rax
    fold rdx
    rdtsc
    fold rax
    rdtscp
    fold rax
    fold rcx
    dec r14
    jnz .Lloop

    # CR4.OSXSAVE changes what CPUID 1 says: the C table must not answer from before.
    mov eax, 1
    cpuid
    fold rcx
    mov rax, cr4
    or rax, 0x40000
    mov cr4, rax
    mov eax, 1
    cpuid
    fold rcx
    mov rax, cr4
    mov rdx, 0xfffffffffffbffff
    and rax, rdx
    mov cr4, rax
    mov eax, 1
    cpuid
    fold rcx

    # The TSC written by WRMSR, then read back by RDTSC.
    mov ecx, 0x10
    mov eax, 0x12345678
    mov edx, 0x9
    wrmsr
    rdtsc
    fold rax
    fold rdx

    # RDTSC and CPUID in 32-bit code (compatibility mode: CS base from the descriptor cache).
    lea rax, [rip + .Lback64]
    mov [rip + back64], eax
    push SEL_CODE32
    lea rax, [rip + .Lcompat]
    push rax
    retfq
.code32
.Lcompat:
    rdtsc
    mov esi, eax
    mov edi, edx
    xor eax, eax
    cpuid
    mov ebp, ebx
    ljmp SEL_CODE64:.Lfar
.Lfar:
.code64
.Lback64:
    fold rsi
    fold rdi
    fold rbp

    print "checksum "
    mov rdi, r15
    call puthex64
    call newline
    ret

# r15 = r15 * 31 + rdi
fold_in:
    imul r15, r15, 31
    add r15, rdi
    ret

back64: .long 0
"""


@dataclass
class Outcome:
    reason: str
    status: int
    output: bytes
    ram: bytes
    context: bytes
    tsc: int
    answered: tuple[int, int]


def run(image: bytes, fast: bool, nested: bool = False) -> Outcome:
    ext = [SvmExtension("architectural")] if nested else []
    m = Machine(RAM, stdout=None, extensions=ext)
    assert m.replay is not None
    m.replay.enabled = fast
    m.load_multiboot(parse_image(image, "guest", RAM), "guest ")
    res = m.run(timeout=60)
    return Outcome(res.reason, res.status, bytes(m.serial.output), bytes(m.ram),
                   bytes(m.ctx.save().view)[:_NOISE_FROM], m.tsc, m.fast_exits.answered)


def same_with_and_without(image: bytes, nested: bool = False) -> Outcome:
    fast, slow = run(image, True, nested), run(image, False, nested)
    assert slow.answered == (0, 0)
    for name in ("reason", "status", "output", "context", "tsc"):
        assert getattr(fast, name) == getattr(slow, name), name
    if fast.ram != slow.ram:
        first = next(i for i, (a, b) in enumerate(zip(fast.ram, slow.ram)) if a != b)
        pytest.fail(f"RAM differs first at {first:#x}")
    return fast


def test_rdtsc_and_cpuid_loop_same_in_c_and_python(tmp_path):
    src = tmp_path / "fast_exits.S"
    src.write_text(GUEST)
    out = same_with_and_without(assemble_source(str(src)))
    assert b"checksum 0x" in out.output, out.output
    rdtsc, cpuid = out.answered
    # 200 iterations: 400 RDTSC and 1,400 CPUID; the first of each after a Python entry
    # (the RDTSCP, the serial port) goes to Python.
    assert rdtsc >= 300 and cpuid >= 1000, out.answered


def test_cr4_osxsave_seen_by_cpuid(tmp_path):
    """The checksum alone would not say which CPUID 1 answers were right: the three reads
    around the CR4 writes must show OSXSAVE off, on, off (CPUID 1 ECX bit 27)."""
    src = tmp_path / "osxsave.S"
    src.write_text("""
.include "prelude.inc"
main:
    mov eax, 1
    cpuid
    mov r12, rcx
    mov rax, cr4
    or rax, 0x40000
    mov cr4, rax
    mov eax, 1
    cpuid
    mov r13, rcx
    mov rax, cr4
    mov rdx, 0xfffffffffffbffff
    and rax, rdx
    mov cr4, rax
    mov eax, 1
    cpuid
    mov r14, rcx
    check_mask r12, 1 << 27, 0, "OSXSAVE clear at first"
    check_mask r13, 1 << 27, 1 << 27, "OSXSAVE set after CR4.OSXSAVE=1"
    check_mask r14, 1 << 27, 0, "OSXSAVE clear again"
    ret
""")
    out = same_with_and_without(assemble_source(str(src)))
    assert b"fail 0" in out.output and b"pass 3" in out.output, out.output


@pytest.mark.parametrize("key", ["switch", "msr"])
def test_nested_benchmark_loops_same(key):
    """L1 reading the TSC between world switches the C replay takes: both C paths together."""
    w = workloads.by_key(key)
    out = same_with_and_without(workloads.build(w, 200), nested=True)
    assert out.status == workloads.EXIT_PASS_STATUS, out.output
