"""L1's x2APIC writes answered in C (emu/core/apic_fast.py) leave exactly what the Python path
leaves: a guest drives the TSC-deadline timer, EOIs, the TPR and self-IPIs through the x2APIC
MSRs with the C hook on and off (the Python path, the reference), and what it printed, its
registers, RAM, the virtual TSC and the APIC's state must be the same, while C really answered
most of the writes."""
from __future__ import annotations

from dataclasses import dataclass

import pytest

from emu.core.machine import Machine
from emu.engine import replay
from emu.engine.hw_switch import OFF_V_TPR
from emu.loader.asm import assemble_source
from emu.loader.multiboot import parse_image

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


def run(image: bytes, fast: bool) -> Outcome:
    m = Machine(RAM, stdout=None)
    assert m.replay is not None
    m.replay.enabled = fast
    m.load_multiboot(parse_image(image, "guest", RAM), "guest ")
    res = m.run(timeout=120)
    return Outcome(res.reason, res.status, bytes(m.serial.output), bytes(m.ram),
                   bytes(m.ctx.save().view)[:_NOISE_FROM], m.tsc, m.apic.state(),
                   m.apic_fast.answered)


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> tuple[Outcome, Outcome]:
    src = tmp_path_factory.mktemp("apic_fast") / "apic_fast.S"
    src.write_text(GUEST.replace("ROUNDS", str(ROUNDS)))
    image = assemble_source(str(src))
    return run(image, True), run(image, False)


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
