"""L1's x2APIC writes answered in C (emu/core/apic_fast.py) leave exactly what the Python path
leaves: a guest drives the TSC-deadline timer, EOIs, the TPR and self-IPIs through the x2APIC
MSRs with the C hook on and off (the Python path, the reference), and what it printed, its
registers, RAM, the virtual TSC and the APIC's state must be the same, while C really answered
most of the writes."""
from __future__ import annotations

from dataclasses import dataclass

import pytest

from emu.core.machine import TSC_STEP, Machine
from emu.engine import replay
from emu.engine.hw_switch import OFF_V_TPR
from emu.loader.asm import assemble_source
from emu.loader.multiboot import parse_image
from svm_ext.extension import SvmExtension

pytestmark = pytest.mark.skipif(not replay.available(), reason="the C engine was not built")

RAM = 128 << 20
ROUNDS = 120
_NOISE_FROM = OFF_V_TPR + 1      # context bytes past it hold host addresses (test_fast_switch)

# Each round: a TSC deadline 50-4145 ticks ahead, waited for in a loop (the run must stop at
# it); one already past (the interrupt right after the WRMSR); one armed, read back and
# disarmed; then with the TPR raised, three self-IPIs (ICR with the self shorthand, ICR to
# physical APIC 0, SELF_IPI) held in IRR and read there, and let in by lowering the TPR in two
# steps (0x60 first; its handler's EOI finds 0x55 still below the TPR). The handlers read ISR
# and the TSC; everything is folded into the printed checksum.
GUEST = r"""
.include "prelude.inc"

.macro fold reg
    mov rdi, \reg
    call fold_in
.endm

.macro wrmsr_imm msr, value
    mov ecx, \msr
    mov eax, \value
    xor edx, edx
    wrmsr
.endm

.macro record value
    push rdi
    mov rdi, \value
    call hfold
    pop rdi
.endm

main:
    set_idt_handler 0x40, timer_isr
    set_idt_handler 0x55, ipi55_isr
    set_idt_handler 0x60, ipi60_isr
    mov ecx, 0x1b
    rdmsr
    or eax, 0xc00
    wrmsr
    wrmsr_imm 0x80f, 0x1ff
    wrmsr_imm 0x832, 0x40040        # LVT timer: TSC-deadline mode, vector 0x40
    xor r15, r15
    mov r14, ROUNDS
    sti
.Lloop:
    mov rbx, [count]
    rdtsc
    shl rdx, 32
    or rax, rdx
    mov rcx, r14
    imul rcx, rcx, 97
    and rcx, 0xfff
    lea rax, [rax + rcx + 50]
    mov rdx, rax
    shr rdx, 32
    mov ecx, 0x6e0
    wrmsr
1:  cmp [count], rbx
    je 1b
    mov rbx, [count]
    rdtsc
    mov ecx, 0x6e0
    wrmsr
    nop
    mov rax, [count]
    sub rax, rbx
    fold rax
    rdtsc
    add eax, 100000
    adc edx, 0
    mov ecx, 0x6e0
    wrmsr
    rdmsr
    fold rax
    xor eax, eax
    xor edx, edx
    wrmsr
    rdmsr
    fold rax
    cli
    wrmsr_imm 0x808, 0xf0
    wrmsr_imm 0x830, 0x40055        # fixed, self shorthand, vector 0x55
    wrmsr_imm 0x830, 0x60           # fixed, physical destination 0 (EDX), vector 0x60
    wrmsr_imm 0x83f, 0x55
    mov ecx, 0x822
    rdmsr
    fold rax
    mov ecx, 0x823
    rdmsr
    fold rax
    wrmsr_imm 0x808, 0x50
    sti
    nop
    cli
    wrmsr_imm 0x808, 0
    sti
    nop
    mov rax, [hsum]
    fold rax
    dec r14
    jnz .Lloop
    cli
    mov rax, [count]
    fold rax
    print "checksum "
    mov rdi, r15
    call puthex64
    call newline
    ret

.macro handler name, vector, isr_msr
\name:
    push rax
    push rcx
    push rdx
    inc qword ptr [count]
    record \vector
    mov ecx, \isr_msr
    rdmsr
    record rax
    rdtsc
    record rax
    xor eax, eax
    xor edx, edx
    mov ecx, 0x80b
    wrmsr
    pop rdx
    pop rcx
    pop rax
    iretq
.endm

handler timer_isr, 0x40, 0x812
handler ipi55_isr, 0x55, 0x822
handler ipi60_isr, 0x60, 0x823

hfold:
    push rax
    mov rax, [hsum]
    imul rax, rax, 31
    add rax, rdi
    mov [hsum], rax
    pop rax
    ret

fold_in:
    imul r15, r15, 31
    add r15, rdi
    ret

.bss
count: .space 8
hsum: .space 8
.text
"""


@dataclass
class Outcome:
    reason: str
    status: int
    output: bytes
    ram: bytes
    context: bytes
    tsc: int
    apic: dict
    answered: tuple[int, int, int, int]
    fired: tuple[int, int] = (0, 0)


def run(image: bytes, fast: bool, fire: bool = True, svm: bool = False) -> Outcome:
    m = Machine(RAM, stdout=None, extensions=[SvmExtension()] if svm else [])
    assert m.replay is not None
    m.replay.enabled = fast
    m.apic_fast.fire_allowed = m.apic_fast.fire_allowed and fire
    m.load_multiboot(parse_image(image, "guest", RAM), "guest ")
    res = m.run(timeout=120)
    return Outcome(res.reason, res.status, bytes(m.serial.output), bytes(m.ram),
                   bytes(m.ctx.save().view)[:_NOISE_FROM], m.tsc, m.apic.state(),
                   m.apic_fast.answered,
                   (m.apic_fast.fired_timer, m.apic_fast.taken_now))


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> tuple[Outcome, Outcome]:
    src = tmp_path_factory.mktemp("apic_fast") / "apic_fast.S"
    src.write_text(GUEST.replace("ROUNDS", str(ROUNDS)))
    image = assemble_source(str(src))
    return run(image, True), run(image, False)


def test_timer_taken_at_the_deadline_same_in_c_and_python(tmp_path):
    """The waited-for deadline's interrupt taken in C where the run reaches it (engine patch
    0028), and a past deadline's taken in C right after its WRMSR, leave what the stop and
    Python's interrupt point leave, every other C path on. The 8259 masks the PIT first: a
    device timer that could fall due keeps the stop."""
    src = tmp_path / "apic_fire.S"
    src.write_text(GUEST.replace("ROUNDS", str(ROUNDS))
                   .replace("main:\n", "main:\n    mov al, 0xff\n    out 0x21, al\n", 1))
    image = assemble_source(str(src))
    fast, stop = run(image, True), run(image, True, fire=False)
    assert stop.fired == (0, 0)
    fired, taken_now = fast.fired
    assert taken_now >= ROUNDS - 5, fast.fired
    assert run(image, False).output == fast.output
    if not fired:
        pytest.skip("this engine has no deadline callback")
    assert fired >= ROUNDS - 5, fast.fired
    for name in ("reason", "status", "output", "context", "tsc", "apic", "answered"):
        assert getattr(fast, name) == getattr(stop, name), name
    assert fast.ram == stop.ram


def test_x2apic_writes_same_in_c_and_python(outcomes):
    fast, slow = outcomes
    assert slow.answered == (0, 0, 0, 0)
    assert fast.reason == "exit" and b"checksum 0x" in fast.output, fast.output
    for name in ("reason", "status", "output", "context", "tsc", "apic"):
        assert getattr(fast, name) == getattr(slow, name), name
    assert fast.ram == slow.ram


def test_c_answered_most_writes(outcomes):
    fast, _ = outcomes
    eoi, tpr, ipi, deadline = fast.answered
    # per round: 4 interrupts (two timer, 0x60, 0x55: its two IPIs are one IRR bit) and their
    # EOIs, 3 TPR writes, 3 self-IPIs, 4 deadline writes
    assert eoi >= 4 * ROUNDS - 5, fast.answered
    assert tpr >= 3 * ROUNDS - 5, fast.answered
    assert ipi >= 3 * ROUNDS - 5, fast.answered
    assert deadline >= 4 * ROUNDS - 5, fast.answered


# Two CPUs in x2APIC mode: the boot CPU starts CPU 1 (INIT and SIPI through the ICR MSR), then
# sends it PINGS fixed IPIs by physical destination, each answered by an IPI back from CPU 1's
# handler; the boot CPU waits for the answer in HLT in even rounds and spinning on memory in odd
# ones (as kvm-unit-tests' vmexit_ipi), while CPU 1 idles in HLT. Every TSC read is folded into
# the printed checksum.
SMP_GUEST = r"""
.include "prelude.inc"

.equ TRAMPOLINE, 0x7000
.equ TRAMP_GDTPTR, 0x7f00
.equ VEC_PING, 0x40
.equ VEC_PONG, 0x41
.equ PINGS, 60

.macro wrmsr_imm msr, lo, hi
    mov ecx, \msr
    mov eax, \lo
    mov edx, \hi
    wrmsr
.endm

.macro x2apic_on
    mov ecx, 0x1b
    rdmsr
    or eax, 0xc00
    wrmsr
    wrmsr_imm 0x80f, 0x1ff, 0
.endm

main:
    mov al, 0xff
    out 0x21, al
    out 0xa1, al
    set_idt_handler VEC_PING, ping_handler
    set_idt_handler VEC_PONG, pong_handler
    x2apic_on
    lea rsi, [rip + ap_tramp]
    mov edi, TRAMPOLINE
    mov ecx, ap_tramp_end - ap_tramp
    rep movsb
    lea rsi, [rip + gdt_ptr]
    mov edi, TRAMP_GDTPTR
    mov ecx, 6
    rep movsb
    wrmsr_imm 0x830, 0xc4500, 0
    mov ecx, 10000
.Ldelay:
    pause
    loop .Ldelay
    wrmsr_imm 0x830, 0xc4600 + (TRAMPOLINE >> 12), 0
.Lwait_ap:
    pause
    cmp qword ptr [rip + arrived], 1
    jne .Lwait_ap
    xor r15, r15
    xor ebx, ebx
    sti
.Lping:
    mov r12, [rip + pongs]
    wrmsr_imm 0x830, 0x4000 + VEC_PING, 1
    test ebx, 1
    jnz .Lspin
.Lwait_hlt:
    cli
    cmp [rip + pongs], r12
    jne .Lponged
    sti
    hlt
    jmp .Lwait_hlt
.Lspin:
    cmp [rip + pongs], r12
    je .Lspin
.Lponged:
    sti
    rdtsc
    imul r15, r15, 31
    add r15, rax
    inc ebx
    cmp ebx, PINGS
    jb .Lping
    cli
    imul r15, r15, 31
    add r15, [rip + pings]
    imul r15, r15, 31
    add r15, [rip + pong_tsc]
    print "checksum "
    mov rdi, r15
    call puthex64
    call newline
    ret

ping_handler:
    push rax
    push rcx
    push rdx
    lock inc qword ptr [rip + pings]
    wrmsr_imm 0x830, 0x4000 + VEC_PONG, 0
    wrmsr_imm 0x80b, 0, 0
    pop rdx
    pop rcx
    pop rax
    iretq

pong_handler:
    push rax
    push rcx
    push rdx
    lock inc qword ptr [rip + pongs]
    rdtsc
    add [rip + pong_tsc], rax
    wrmsr_imm 0x80b, 0, 0
    pop rdx
    pop rcx
    pop rax
    iretq

ap_tramp:
    .byte 0xfa                             # cli
    .byte 0x31, 0xc0                       # xor ax, ax
    .byte 0x8e, 0xd8                       # mov ds, ax
    .byte 0x66, 0x0f, 0x01, 0x16           # lgdt [TRAMP_GDTPTR] (32-bit base)
    .word TRAMP_GDTPTR
    .byte 0x0f, 0x20, 0xc0                 # mov eax, cr0
    .byte 0x0c, 0x01                       # or al, 1 (PE)
    .byte 0x0f, 0x22, 0xc0                 # mov cr0, eax
    .byte 0x66, 0xea                       # ljmp SEL_CODE32:ap_start32 (32-bit offset)
    .long ap_start32
    .word SEL_CODE32
ap_tramp_end:

.code32
ap_start32:
    mov ax, SEL_DATA
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov eax, cr4
    or eax, 0x20
    mov cr4, eax
    mov eax, offset pml4
    mov cr3, eax
    mov ecx, MSR_EFER
    rdmsr
    or eax, 0x100
    wrmsr
    mov eax, cr0
    and eax, 0x9fffffff
    or eax, 0x80010001
    mov cr0, eax
    ljmp SEL_CODE64:ap_start64

.code64
ap_start64:
    mov ax, SEL_DATA
    mov ds, ax
    mov es, ax
    mov ss, ax
    lea rsp, [rip + ap_stack_top]
    lidt [rip + idt_ptr]
    x2apic_on
    lock inc qword ptr [rip + arrived]
    sti
.Lap_idle:
    hlt
    jmp .Lap_idle

.bss
.align 16
ap_stack: .space 4096
ap_stack_top:
arrived: .space 8
pings: .space 8
pongs: .space 8
pong_tsc: .space 8
.text
"""


def run_smp(image: bytes, fast: bool) -> tuple:
    m = Machine(RAM, stdout=None, cpus=2)
    assert m.replay is not None
    for cpu in m.cpu_list:
        cpu.replay.enabled = fast
    m.load_multiboot(parse_image(image, "guest", RAM), "guest ")
    res = m.run(timeout=120)
    cpus = tuple((c.tsc, bytes(c.ctx.save().view)[:_NOISE_FROM], c.apic.state())
                 for c in m.cpu_list)
    return (res.reason, res.status, bytes(m.serial.output), bytes(m.ram), cpus), \
        tuple((*c.apic_fast.answered, c.apic_fast.answered_hlt) for c in m.cpu_list)


def test_ipis_between_two_cpus_same_in_c_and_python(tmp_path):
    src = tmp_path / "apic_fast_smp.S"
    src.write_text(SMP_GUEST)
    image = assemble_source(str(src))
    (fast, answered), (slow, none) = run_smp(image, True), run_smp(image, False)
    assert none == ((0, 0, 0, 0, 0), (0, 0, 0, 0, 0))
    assert fast[0] == "exit" and b"checksum 0x" in fast[2], fast[2]
    for i, name in enumerate(("reason", "status", "output", "ram", "cpus")):
        assert fast[i] == slow[i], name
    # the boot CPU's pings and CPU 1's pongs went through C, both CPUs' EOIs, and the boot
    # CPU's HLTs in even rounds (CPU 1 finds the next ping waiting when it resumes)
    (eoi0, _, sent0, _, hlt0), (eoi1, _, sent1, _, _) = answered
    assert sent0 >= 55 and sent1 >= 55 and eoi0 >= 55 and eoi1 >= 55, answered
    assert hlt0 >= 25, answered


# The TSC-deadline timer fires at its virtual time: each round arms a deadline 3000 ticks ahead
# and spins; the handler's first RDTSC, less the deadline, is how late the interrupt came. The
# guest prints the smallest and largest lateness (unsigned: one early interrupt is huge).
TIMING_GUEST = r"""
.include "prelude.inc"

main:
    mov al, 0xff
    out 0x21, al                    # the PIT masked: only the APIC timer
    set_idt_handler 0x40, timer_isr
    mov ecx, 0x1b
    rdmsr
    or eax, 0xc00
    wrmsr
    mov ecx, 0x80f
    mov eax, 0x1ff
    xor edx, edx
    wrmsr
    mov ecx, 0x832
    mov eax, 0x40040                # LVT timer: TSC-deadline mode, vector 0x40
    wrmsr
    mov r14, ROUNDS
    xor r13, r13                    # largest lateness
    mov r12, -1                     # smallest
    sti
.Lloop:
    mov rbx, [count]
    rdtsc
    shl rdx, 32
    or rax, rdx
    add rax, 3000
    mov [deadline], rax
    mov rdx, rax
    shr rdx, 32
    mov ecx, 0x6e0
    wrmsr
1:  cmp [count], rbx
    je 1b
    mov rax, [taken]
    sub rax, [deadline]
    cmp rax, r13
    cmova r13, rax
    cmp rax, r12
    cmovb r12, rax
    dec r14
    jnz .Lloop
    cli
    print "late "
    mov rdi, r12
    call puthex64
    print " "
    mov rdi, r13
    call puthex64
    call newline
    ret

timer_isr:
    push rax
    push rdx
    push rcx
    rdtsc
    shl rdx, 32
    or rax, rdx
    mov [taken], rax
    inc qword ptr [count]
    xor eax, eax
    xor edx, edx
    mov ecx, 0x80b
    wrmsr
    pop rcx
    pop rdx
    pop rax
    iretq

.bss
count: .space 8
deadline: .space 8
taken: .space 8
.text
"""


def test_deadline_interrupt_comes_at_its_virtual_time(tmp_path):
    """Taken in C at the run's deadline, the timer interrupt reaches the handler right at its
    deadline in every round: the handler's read is late by its three pushes and the RDTSC's
    own step (TSC_STEP, counted before the value is read), as on the Python path."""
    src = tmp_path / "timing.S"
    src.write_text(TIMING_GUEST.replace("ROUNDS", "200"))
    image = assemble_source(str(src))
    fast, slow = run(image, True), run(image, False)
    assert fast.output == slow.output and fast.tsc == slow.tsc
    line = next(x for x in fast.output.decode().splitlines() if x.startswith("late "))
    low, high = (int(v, 16) for v in line.split()[1:])
    assert low == high and TSC_STEP < low <= TSC_STEP + 4, line
    if fast.fired[0] == 0:
        pytest.skip("this engine has no deadline callback")
    assert fast.fired[0] >= 195, fast.fired


# L1 with EFER.SVME clears GIF (CLGI) and lets a TSC deadline pass: the interrupt must wait
# for STGI (APM vol. 2, 15.17), whichever path runs the timer.
GIF_GUEST = r"""
.include "prelude.inc"

main:
    mov al, 0xff
    out 0x21, al
    set_idt_handler 0x40, timer_isr
    mov ecx, 0x1b
    rdmsr
    or eax, 0xc00
    wrmsr
    mov ecx, 0x832
    mov eax, 0x40040
    xor edx, edx
    wrmsr
    mov ecx, 0xc0000080
    rdmsr
    or eax, 0x1000                  # EFER.SVME
    wrmsr
    sti
    clgi
    rdtsc
    add eax, 500
    adc edx, 0
    mov ecx, 0x6e0
    wrmsr
    mov ecx, 20000
1:  dec ecx
    jnz 1b
    mov rbx, [count]                # 0: held while GIF = 0
    stgi
    nop
    mov rax, [count]                # 1: taken at STGI
    shl rbx, 4
    or rbx, rax
    cli
    print "gif "
    mov rdi, rbx
    call puthex64
    call newline
    ret

timer_isr:
    push rax
    push rcx
    push rdx
    inc qword ptr [count]
    xor eax, eax
    xor edx, edx
    mov ecx, 0x80b
    wrmsr
    pop rdx
    pop rcx
    pop rax
    iretq

.bss
count: .space 8
.text
"""


def test_timer_waits_for_gif(tmp_path):
    src = tmp_path / "gif.S"
    src.write_text(GIF_GUEST)
    image = assemble_source(str(src))
    fast, slow = run(image, True, svm=True), run(image, False, svm=True)
    assert b"gif 0x0000000000000001" in fast.output, fast.output
    assert fast.output == slow.output and fast.tsc == slow.tsc
