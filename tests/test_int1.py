"""INT1 (ICEBP, opcode F1): a trap-like #DB (AMD APM vol. 3, INT1; vol. 2, 8.2.2 and 13.1.1.3).
The pushed RIP is the next instruction's, DR6 is not changed by it (no BS even with RFLAGS.TF
set), it is delivered after MOV SS like any other instruction's #DB and the single-step trap
that MOV SS held back is not added to it. The expected sequences are kvm-unit-tests'
x86/debug.c checks (singlestep_with_movss_blocking_and_icebp, icebp), written down from the APM
rules above."""
from __future__ import annotations

from pathlib import Path

from tests.conftest import parse_tap
from tests.harness import DB_RECORDER, boot, source

GUEST = r'''
.include "prelude.inc"

main:
    set_idt_handler 1, db_handler

    # A lone INT1: one #DB, taken with RIP after it, DR6 as software left it.
    xor eax, eax
    mov dr6, rax
    .byte 0xf1
lone_after:
    check_eq [db_count], 1, "lone INT1: one #DB"
    lea rax, [rip + lone_after]
    check_eq [db_rip], rax, "lone INT1: RIP pushed is the next instruction"
    check_eq [db_dr6], 0xFFFF0FF0, "lone INT1: DR6 unchanged (no BS)"

    # With two CS prefixes the instruction is three bytes long.
    mov qword ptr [rip + db_count], 0
    .byte 0x2e, 0x2e, 0xf1
prefixed_after:
    check_eq [db_count], 1, "prefixed INT1: one #DB"
    lea rax, [rip + prefixed_after]
    check_eq [db_rip], rax, "prefixed INT1: RIP pushed is after the prefixes and F1"

    # TF set by POPF, then MOV SS (its single-step trap is held back), then two INT1s: two
    # INT1 #DBs with DR6 = active-low only, then single steps after AND, PUSH and POPF.
    mov qword ptr [rip + db_count], 0
    pushfq
    pop rax
    or rax, 0x100
    push rax
    mov ax, ss
    popfq
    mov ss, ax
    .byte 0xf1
ss_first:
    .byte 0xf1
ss_second:
    and rax, ~0x100
ss_and:
    push rax
ss_push:
    popfq
ss_popf:
    check_eq [db_count], 5, "MOV SS + TF + INT1 INT1: five #DBs"
    lea rax, [rip + ss_first]
    check_eq [db_rip], rax, "#DB 1 after the first INT1"
    check_eq [db_dr6], 0xFFFF0FF0, "#DB 1 DR6 without BS"
    lea rax, [rip + ss_second]
    check_eq [db_rip + 8], rax, "#DB 2 after the second INT1"
    check_eq [db_dr6 + 8], 0xFFFF0FF0, "#DB 2 DR6 without BS"
    lea rax, [rip + ss_and]
    check_eq [db_rip + 16], rax, "#DB 3 single step after AND"
    check_eq [db_dr6 + 16], 0xFFFF4FF0, "#DB 3 DR6.BS"
    lea rax, [rip + ss_push]
    check_eq [db_rip + 24], rax, "#DB 4 single step after PUSH"
    lea rax, [rip + ss_popf]
    check_eq [db_rip + 32], rax, "#DB 5 single step after POPF"
    check_eq [db_dr6 + 32], 0xFFFF4FF0, "#DB 5 DR6.BS"

    # UD2 is still an undefined opcode.
    expect_fault ud_resume
    ud2
ud_resume:
    check_eq [fault_vector], 6, "UD2 still raises #UD"
    ret

''' + DB_RECORDER


def test_int1_is_a_trap_like_db(tmp_path: Path) -> None:
    b = boot(source(tmp_path, GUEST), nested=False)
    checks = parse_tap(b.serial)
    assert b.result.reason == "exit" and b.result.status == 1, b.serial
    assert len(checks) == 16 and all(c.ok for c in checks.values()), b.serial


NESTED = r'''
.include "prelude.inc"
.include "svm.inc"

main:
    set_idt_handler 1, db_handler
    call svm_enable

    # L1 intercepts ICEBP: the exit is the instruction intercept, RIP at INT1, NRIP after it.
    lea rdi, [rip + l2_entry]
    call vmcb_init
    mov rdi, VMCB
    or dword ptr [rdi + V_INTERCEPT_MISC2], 1 << 8
    or dword ptr [rdi + V_INTERCEPT_EXC], 1 << 1
    mov rax, VMCB
    vmrun
    check_eq "qword ptr [rdi + V_EXITCODE]", 0x88, "ICEBP intercept: VMEXIT_ICEBP"
    lea rax, [rip + l2_entry]
    check_eq "qword ptr [rdi + V_RIP]", rax, "ICEBP intercept: RIP at INT1"
    lea rax, [rip + l2_after]
    check_eq "qword ptr [rdi + V_NRIP]", rax, "ICEBP intercept: NRIP after INT1"

    # L1 intercepts #DB only: the #DB exit, RIP still at INT1.
    lea rdi, [rip + l2_entry]
    call vmcb_init
    mov rdi, VMCB
    or dword ptr [rdi + V_INTERCEPT_EXC], 1 << 1
    mov rax, VMCB
    vmrun
    check_eq "qword ptr [rdi + V_EXITCODE]", 0x41, "#DB intercept: VMEXIT_EXCP1"
    lea rax, [rip + l2_entry]
    check_eq "qword ptr [rdi + V_RIP]", rax, "#DB intercept: RIP at INT1"

    # Neither: L2 takes its #DB through the IDT and goes on to its VMMCALL.
    lea rdi, [rip + l2_entry]
    call vmcb_init
    mov rdi, VMCB
    mov rax, VMCB
    vmrun
    check_eq "qword ptr [rdi + V_EXITCODE]", 0x81, "no intercept: L2 reaches VMMCALL"
    check_eq [db_count], 1, "no intercept: L2 took one #DB"
    lea rax, [rip + l2_after]
    check_eq [db_rip], rax, "no intercept: #DB RIP after INT1"
    ret

db_handler:
    push rax
    inc qword ptr [rip + db_count]
    mov rax, [rsp + 8]
    mov [rip + db_rip], rax
    pop rax
    iretq

l2_entry:
    .byte 0xf1
l2_after:
    vmmcall

.bss
.align 8
db_count:       .space 8
db_rip:         .space 8
'''


def test_int1_in_l2_meets_l1s_intercepts(tmp_path: Path) -> None:
    b = boot(source(tmp_path, NESTED))
    checks = parse_tap(b.serial)
    assert b.result.reason == "exit" and b.result.status == 1, b.serial
    assert len(checks) == 8 and all(c.ok for c in checks.values()), b.serial
