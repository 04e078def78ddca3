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
from emu.loader.multiboot import BootImage, parse_image
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
    python_exits: int


def run(image: "bytes | BootImage", fast: bool, nested: bool = False) -> Outcome:
    ext = [SvmExtension("architectural")] if nested else []
    m = Machine(RAM, stdout=None, extensions=ext)
    assert m.replay is not None
    m.replay.enabled = fast
    if isinstance(image, bytes):
        image = parse_image(image, "guest", RAM)
    m.load_multiboot(image, "guest ")
    res = m.run(timeout=60)
    return Outcome(res.reason, res.status, bytes(m.serial.output), bytes(m.ram),
                   bytes(m.ctx.save().view)[:_NOISE_FROM], m.tsc, m.fast_exits.answered,
                   m.replay.fallbacks)


def same_with_and_without(image: "bytes | BootImage", nested: bool = False) -> Outcome:
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


# ---- L2's RDTSC: answered by programs, between world switches the C replay takes -----------------
TRIPS = 300
LOG = 0x600000
L1_TIMING = f"""
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
""" + "mov al, 0\n out 0xf4, al\n"
L2_TIMING = """
l2: rdtsc
    shl rdx, 32
    or rax, rdx
    mov [r14 + r13 * 8], rax
    inc r13
    vmmcall
    jmp l2
"""


@pytest.mark.parametrize("offset", [0, 0x123456789A, (1 << 64) - 0x10000])
def test_l2_rdtsc_programs_same_in_c_and_python(offset):
    import struct
    from tests.nested_image import nested_image, vmcb12
    image = nested_image(L1_TIMING, L2_TIMING, vmcb12(tsc_offset=offset))
    out = same_with_and_without(image, nested=True)
    assert out.reason == "exit" and out.status == 1, out
    l2 = struct.unpack_from(f"<{TRIPS}Q", out.ram, LOG)
    l1 = struct.unpack_from(f"<{TRIPS}Q", out.ram, LOG + 0x4000)
    # L2 reads L1's TSC plus its offset, one read later than L1's previous one.
    assert all((b - offset) % (1 << 64) > a for a, b in zip(l1, l2[1:]))
    # Most of L2's and L1's reads were answered in C (programs recorded on the second trip).
    assert out.answered[0] > 2 * TRIPS - 20, out.answered


L1_GIF = f"""
    mov r14, {LOG}
    xor r13, r13
again:
    clgi
    mov rax, rdi
    vmrun
    stgi
    add qword ptr [rdi + 0x578], 3
    rdtsc
    shl rdx, 32
    or rax, rdx
    mov [r14 + 0x4000 + r13 * 8], rax
    cmp r13, {TRIPS}
    jb again
""" + "mov al, 0\n out 0xf4, al\n"


def test_clgi_vmrun_stgi_loop_stays_in_c():
    """A hypervisor's CLGI / VMRUN / #VMEXIT / STGI loop with RDTSC on both sides: the same with
    the C path on and off, and after the first trips nothing of it reaches Python."""
    import struct
    from tests.nested_image import nested_image, vmcb12
    image = nested_image(L1_GIF, L2_TIMING, vmcb12(tsc_offset=0x5000))
    fast = run(image, True, nested=True)
    slow = run(image, False, nested=True)
    for name in ("reason", "status", "output", "context", "tsc", "ram"):
        assert getattr(fast, name) == getattr(slow, name), name
    assert fast.reason == "exit" and fast.status == 1, fast
    l2 = struct.unpack_from(f"<{TRIPS}Q", fast.ram, LOG)
    assert all(b > a for a, b in zip(l2, l2[1:]))
    assert fast.python_exits < 40, fast.python_exits


# MOV to and from CR8 through several registers (REX.B, REX.W spellings), the TPR read back
# through the APIC's MMIO page after a CR8 write and written there before a CR8 read (the C
# copy of the TPR must follow both ways), and a 32-bit MOV CR8 spelling (LOCK MOV CR0, left to
# Python). Everything read is folded into the printed checksum.
CR8_GUEST = r"""
.include "prelude.inc"

.macro fold reg
    mov rdi, \reg
    call fold_in
.endm

main:
    xor r15, r15
    mov r14, 300
    mov r12, 0xfee00000
.Lloop:
    mov rax, r14
    and rax, 15
    mov cr8, rax
    mov rbx, cr8
    fold rbx
    mov r9, 3
    mov cr8, r9
    mov r10, cr8
    fold r10
    .byte 0x4c, 0x0f, 0x22, 0xc1          # mov cr8, rcx (REX.W.R)
    mov ecx, [r12 + 0x80]                 # the TPR through MMIO
    fold rcx
    mov dword ptr [r12 + 0x80], 0x70
    mov rdx, cr8
    fold rdx
    rdtsc
    fold rax
    dec r14
    jnz .Lloop
    xor eax, eax
    mov cr8, rax
    print "checksum "
    mov rdi, r15
    call puthex64
    call newline
    ret

fold_in:
    imul r15, r15, 31
    add r15, rdi
    ret
"""


def test_cr8_same_in_c_and_python(tmp_path):
    src = tmp_path / "cr8.S"
    src.write_text(CR8_GUEST)
    out = same_with_and_without(assemble_source(str(src)))
    assert b"checksum 0x" in out.output, out.output
    m = Machine(RAM, stdout=None)
    m.load_multiboot(parse_image(assemble_source(str(src)), "guest", RAM), "guest ")
    m.run(timeout=60)
    # 300 iterations of 5 MOV CR8; those right after an MMIO access or RDTSC exit go to Python
    assert m.fast_exits.answered_cr8 >= 600, m.fast_exits.answered_cr8


# The ACPI PM timer (port 0x608 at svmemu's default PMBASE) read by IN of every width and at
# every byte offset, between RDTSCs and instructions: the C IN hook must return what
# PmBlock.read returns and move time as Python does. A serial write in the loop (a port the C
# hook leaves to Python) interleaves the two paths.
PM_GUEST = r"""
.include "prelude.inc"

.macro fold reg
    mov rdi, \reg
    call fold_in
.endm

main:
    xor r15, r15
    mov r14, 400
.Lloop:
    mov dx, 0x608
    in eax, dx
    fold rax
    in ax, dx
    fold rax
    mov dx, 0x609
    in al, dx
    fold rax
    mov dx, 0x60a
    in ax, dx
    fold rax
    mov dx, 0x60b
    in al, dx
    fold rax
    rdtsc
    fold rax
    test r14, 63
    jnz .Lnext
    mov dx, 0x3f8 + 7          # the UART's scratch register: Python
    mov al, 0x5a
    out dx, al
.Lnext:
    dec r14
    jnz .Lloop
    print "checksum "
    mov rdi, r15
    call puthex64
    call newline
    ret

fold_in:
    imul r15, r15, 31
    add r15, rdi
    ret
"""


def test_pm_timer_reads_same_in_c_and_python(tmp_path):
    src = tmp_path / "pm.S"
    src.write_text(PM_GUEST)
    image = assemble_source(str(src))
    out = same_with_and_without(image)
    assert b"checksum 0x" in out.output, out.output
    m = Machine(RAM, stdout=None)
    m.load_multiboot(parse_image(image, "guest", RAM), "guest ")
    m.run(timeout=60)
    assert m.fast_exits.answered_pm_timer >= 1500, m.fast_exits.answered_pm_timer


# MOV to CR4 toggling PGE (a TLB flush) and OSXSAVE (which CPUID 1 mirrors) through RAX and R9
# (REX.B), CPUID 1 read after each write, and TSC reads: the C path must write CR4 as Python
# does. A write of a bit the model reserves (LA57) is left to Python, which raises #GP.
CR4_GUEST = r"""
.include "prelude.inc"

.macro fold reg
    mov rdi, \reg
    call fold_in
.endm

main:
    xor r15, r15
    mov r14, 200
.Lloop:
    mov rax, cr4
    xor rax, 0x80
    mov cr4, rax
    mov r9, cr4
    xor r9, 0x40000
    mov cr4, r9
    mov eax, 1
    cpuid
    fold rcx
    mov rax, cr4
    fold rax
    rdtsc
    fold rax
    dec r14
    jnz .Lloop
    mov rax, cr4
    or rax, 0x1000                 # CR4.LA57: reserved on this model
    expect_fault .Lafter
    mov cr4, rax
.Lafter:
    mov rax, cr4
    fold rax
    print "checksum "
    mov rdi, r15
    call puthex64
    call newline
    ret

fold_in:
    imul r15, r15, 31
    add r15, rdi
    ret
"""


def test_cr4_writes_same_in_c_and_python(tmp_path):
    src = tmp_path / "cr4.S"
    src.write_text(CR4_GUEST)
    image = assemble_source(str(src))
    out = same_with_and_without(image)
    assert b"checksum 0x" in out.output, out.output
    m = Machine(RAM, stdout=None)
    m.load_multiboot(parse_image(image, "guest", RAM), "guest ")
    m.run(timeout=60)
    assert m.fast_exits.answered_cr4 >= 300, m.fast_exits.answered_cr4


# L1's RDMSR of the MSRs MsrFile reads from the CPU (FS/GS bases, the syscall MSRs), written by
# WRMSR (Python) and by segment loads, read back between RDTSCs; EFER and PAT (other owners)
# interleaved, so C and Python answer in turn. Everything read is folded into the checksum.
RDMSR_GUEST = r"""
.include "prelude.inc"

.macro fold reg
    mov rdi, \reg
    call fold_in
.endm

.macro rd msr
    mov ecx, \msr
    rdmsr
    fold rax
    fold rdx
.endm

main:
    xor r15, r15
    mov r14, 100
.Lloop:
    mov ecx, 0xC0000100
    mov rax, r14
    mov edx, 0xffff8000
    wrmsr
    mov ecx, 0x174
    mov eax, 0x12345
    xor edx, edx
    wrmsr
    mov ecx, 0xC0000081
    mov eax, r14d
    mov edx, 0x00230010
    wrmsr
    rd 0xC0000100
    rd 0xC0000101
    rd 0xC0000102
    rd 0xC0000081
    rd 0xC0000082
    rd 0xC0000083
    rd 0xC0000084
    rd 0x174
    rd 0x175
    rd 0x176
    rd 0xC0000080
    rd 0x277
    rdtsc
    fold rax
    mov ax, 0
    mov fs, ax
    rd 0xC0000100
    dec r14
    jnz .Lloop
    print "checksum "
    mov rdi, r15
    call puthex64
    call newline
    ret

fold_in:
    imul r15, r15, 31
    add r15, rdi
    ret
"""


def test_rdmsr_of_cpu_msrs_same_in_c_and_python(tmp_path):
    src = tmp_path / "rdmsr.S"
    src.write_text(RDMSR_GUEST)
    out = same_with_and_without(assemble_source(str(src)))
    assert b"checksum 0x" in out.output, out.output
    m = Machine(RAM, stdout=None)
    m.load_multiboot(parse_image(assemble_source(str(src)), "guest", RAM), "guest ")
    m.run(timeout=60)
    # 100 iterations of 11 RDMSRs C may answer; those right after a Python entry (WRMSR, the
    # EFER and PAT reads) go to Python.
    assert m.fast_exits.answered_rdmsr >= 600, m.fast_exits.answered_rdmsr
