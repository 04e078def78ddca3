"""Single-stepping instructions L0 performs itself (CPUID, RDMSR, RDTSC: intercepted, answered in
Python or in the C fast exits): Unicorn stops before them and never sees them complete, yet with
RFLAGS.TF set each owes its single-step #DB right after it, with DR6.BS (AMD APM vol. 2,
13.1.1.3), as kvm-unit-tests' debug test checks for CPUID and IN."""
from __future__ import annotations

from pathlib import Path

from tests.conftest import parse_tap
from tests.harness import DB_RECORDER, boot, source

GUEST = r'''
.include "prelude.inc"

main:
    set_idt_handler 1, db_handler

    # The same CPUID, RDMSR and RDTSC unstepped a few times first, so that the C fast exits
    # hold answers for them.
    mov r12d, 4
1:  call emulated
    dec r12d
    jnz 1b
    check_eq [db_count], 0, "no #DB without TF"

    pushfq
    pop rax
    or rax, 0x100
    push rax
    popfq
    and rax, ~0x100
step_cpuid:
    push rax
    xor eax, eax
    cpuid
step_rdmsr:
    mov ecx, 0xC0000100
    rdmsr
step_rdtsc:
    rdtsc
step_popf:
    popfq
step_end:
    check_eq [db_count], 8, "eight single-step #DBs"
    lea rax, [rip + step_cpuid]
    check_eq [db_rip], rax, "#DB after AND"
    lea rax, [rip + step_rdmsr]
    check_eq [db_rip + 24], rax, "#DB after CPUID"
    check_eq [db_dr6 + 24], 0xFFFF4FF0, "#DB after CPUID has DR6.BS"
    lea rax, [rip + step_rdmsr + 5]
    check_eq [db_rip + 32], rax, "#DB after MOV ECX"
    lea rax, [rip + step_rdtsc]
    check_eq [db_rip + 40], rax, "#DB after RDMSR"
    check_eq [db_dr6 + 40], 0xFFFF4FF0, "#DB after RDMSR has DR6.BS"
    lea rax, [rip + step_popf]
    check_eq [db_rip + 48], rax, "#DB after RDTSC"
    check_eq [db_dr6 + 48], 0xFFFF4FF0, "#DB after RDTSC has DR6.BS"
    lea rax, [rip + step_end]
    check_eq [db_rip + 56], rax, "#DB after POPF"
    ret

emulated:
    push rax
    push rbx
    push rcx
    push rdx
    xor eax, eax
    cpuid
    mov ecx, 0xC0000100
    rdmsr
    rdtsc
    pop rdx
    pop rcx
    pop rbx
    pop rax
    ret

''' + DB_RECORDER


def test_single_step_traps_after_instructions_l0_performs(tmp_path: Path) -> None:
    b = boot(source(tmp_path, GUEST), nested=False)
    checks = parse_tap(b.serial)
    assert b.result.reason == "exit" and b.result.status == 1, b.serial
    assert len(checks) == 11 and all(c.ok for c in checks.values()), b.serial
    fx = b.machine.replay.fast if b.machine.replay is not None else None
    if fx is not None:          # the unstepped ones were answered in C
        assert fx.cpuid > 0 and fx.rdtsc > 0 and fx.rdmsr > 0


HLT_GUEST = r'''
.include "prelude.inc"
.equ APIC, 0xFEE00000

main:
    set_idt_handler 1, db_handler
    set_idt_handler 0xEE, timer_handler
    mov r15d, APIC
    mov dword ptr [r15 + 0xF0], 0x1FF           # SVR: software enable
    cli
    mov dword ptr [r15 + 0x320], 0xEE           # LVT timer: one-shot, vector 0xEE
    mov dword ptr [r15 + 0x3E0], 0xB            # divide by 1
    mov dword ptr [r15 + 0x380], 100000         # initial count

    # TF on, STI, HLT: #DB after STI, then HLT's #DB once the timer ends the halt and before
    # the timer's interrupt, then single steps after AND, PUSH, POPF.
    pushfq
    pop rax
    or rax, 0x100
    push rax
    popfq
    sti
hlt_at:
    hlt
hlt_after:
    and rax, ~0x100
    push rax
    popfq
    cli
    check_eq [log_len], 6, "six events"
    lea rax, [rip + hlt_at]
    check_eq [log_rip], rax, "#DB after STI"
    lea rax, [rip + hlt_after]
    check_eq [log_rip + 8], rax, "#DB after HLT, at the next instruction"
    check_eq [log_kind + 8], 1, "HLT's #DB comes first"
    check_eq [log_kind + 16], 0xEE, "then the timer interrupt that ended the halt"
    check_eq [log_rip + 16], rax, "the interrupt returns after HLT"
    check_eq [log_dr6 + 8], 0xFFFF4FF0, "HLT's #DB has DR6.BS"
    ret

db_handler:
    push rax
    push rbx
    push rcx
    mov rbx, [rip + log_len]
    and ebx, 7
    lea rcx, [rip + log_kind]
    mov qword ptr [rcx + rbx * 8], 1
    mov rax, [rsp + 24]
    lea rcx, [rip + log_rip]
    mov [rcx + rbx * 8], rax
    mov rax, dr6
    lea rcx, [rip + log_dr6]
    mov [rcx + rbx * 8], rax
    inc qword ptr [rip + log_len]
    xor eax, eax
    mov dr6, rax
    pop rcx
    pop rbx
    pop rax
    iretq

timer_handler:
    push rax
    push rbx
    push rcx
    mov rbx, [rip + log_len]
    and ebx, 7
    lea rcx, [rip + log_kind]
    mov qword ptr [rcx + rbx * 8], 0xEE
    mov rax, [rsp + 24]
    lea rcx, [rip + log_rip]
    mov [rcx + rbx * 8], rax
    inc qword ptr [rip + log_len]
    mov dword ptr [r15 + 0xB0], 0               # EOI (r15 holds the APIC page)
    pop rcx
    pop rbx
    pop rax
    iretq

.bss
.align 8
log_len:        .space 8
log_kind:       .space 64
log_rip:        .space 64
log_dr6:        .space 64
'''


def test_single_step_trap_of_hlt_comes_when_the_halt_ends(tmp_path: Path) -> None:
    b = boot(source(tmp_path, HLT_GUEST), nested=False)
    checks = parse_tap(b.serial)
    assert b.result.reason == "exit" and b.result.status == 1, b.serial
    assert len(checks) == 7 and all(c.ok for c in checks.values()), b.serial
