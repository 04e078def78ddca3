"""A non-canonical reference through SS raises #SS(0), any other #GP(0) (AMD APM vol. 2, 8.2.13
and 8.2.14; vol. 3, the exception lists of PUSH, POP, CALL, MOV...). SS is the segment of the
implicit stack accesses, of an operand based on RSP or RBP without an override, and of one with
an SS override; DS: on an RBP-based operand makes it a data reference again. In L2, L1's
exception intercepts see the vector the APM gives: VMEXIT_EXCP12 (0x4C), not EXCP13 (0x4D)."""
from __future__ import annotations

from pathlib import Path

from tests.conftest import parse_tap
from tests.harness import boot, source

# Faults land on IST2 (the faulting RSP may be non-canonical); the handler records the vector
# and error code and returns to `resume_at` with the RSP saved before the attempt.
MACROS = r'''
.equ NC, 0xaaaaaaaaaaaaaaaa

.macro arm resume
    mov [rip + saved_rsp], rsp
    mov [rip + saved_rbp], rbp
    lea rax, [rip + \resume]
    mov [rip + resume_at], rax
    mov qword ptr [rip + got_vec], -1
    mov qword ptr [rip + got_err], -1
.endm

.macro expect vec, what
    mov rbp, [rip + saved_rbp]
    check_eq [got_vec], \vec, "\what: vector"
    check_eq [got_err], 0, "\what: error code 0"
.endm
'''

HANDLERS = r'''
ss_handler:
    mov qword ptr [rip + got_vec], 12
    jmp fault_common
gp_handler:
    mov qword ptr [rip + got_vec], 13
fault_common:
    pop qword ptr [rip + got_err]
    push rax
    mov rax, [rip + resume_at]
    mov [rsp + 8], rax
    mov rax, [rip + saved_rsp]
    mov [rsp + 32], rax
    pop rax
    iretq
'''

DATA = r'''
.bss
.align 8
saved_rsp:  .space 8
saved_rbp:  .space 8
resume_at:  .space 8
got_vec:    .space 8
got_err:    .space 8
'''

L1 = r'''
.include "prelude.inc"
''' + MACROS + r'''

main:
    set_idt_handler 12, ss_handler, 2
    set_idt_handler 13, gp_handler, 2

    arm 1f
    mov rsp, NC
    push rax
1:
    expect 12, "PUSH, RSP non-canonical"

    arm 1f
    mov rsp, NC
    pop rax
1:
    expect 12, "POP, RSP non-canonical"

    arm 1f
    mov rsp, NC
    call 1f
1:
    expect 12, "CALL, RSP non-canonical"

    arm 1f
    mov rcx, NC
    or qword ptr [rsp + rcx], 0
1:
    expect 12, "OR [RSP+RCX], address non-canonical"

    arm 1f
    mov rbp, NC
    mov rax, [rbp + 8]
1:
    expect 12, "MOV [RBP+8], RBP non-canonical"

    arm 1f
    mov rbp, NC
    .byte 0x3e                      # DS: (the assembler leaves an explicit DS: out)
    mov rax, [rbp + 8]
1:
    expect 13, "MOV DS:[RBP+8]"

    arm 1f
    mov rcx, NC
    mov rax, [rcx]
1:
    expect 13, "MOV [RCX]"

    arm 1f
    mov r13, NC
    mov rax, [r13 + 8]
1:
    expect 13, "MOV [R13+8] (REX.B: not RBP)"

    arm 1f
    mov rcx, NC
    mov rax, ss:[rcx]
1:
    expect 12, "MOV SS:[RCX]"

    arm 1f
    .byte 0x36, 0x48, 0xa1          # SS: MOV RAX, [moffs64]
    .quad NC
1:
    expect 12, "MOV RAX, SS:[moffs64]"

    arm 1f
    .byte 0x48, 0xa1                # MOV RAX, [moffs64]
    .quad NC
1:
    expect 13, "MOV RAX, [moffs64]"
    ret
''' + HANDLERS + DATA


def test_noncanonical_stack_references_raise_ss(tmp_path: Path) -> None:
    b = boot(source(tmp_path, L1), nested=False)
    checks = parse_tap(b.serial)
    assert b.result.reason == "exit" and b.result.status == 1, b.serial
    assert len(checks) == 22 and all(c.ok for c in checks.values()), b.serial


NESTED = r'''
.include "prelude.inc"
.include "svm.inc"
''' + MACROS + r'''
.macro exit_of entry, code, what
    lea rdi, [rip + \entry]
    call vmcb_init
    mov rdi, VMCB
    or dword ptr [rdi + V_INTERCEPT_EXC], (1 << 12) | (1 << 13)
    mov rax, VMCB
    vmrun
    check_eq "qword ptr [rdi + V_EXITCODE]", \code, "\what: exit code"
    check_eq "qword ptr [rdi + V_EXITINFO1]", 0, "\what: EXITINFO1 (error code) 0"
    lea rax, [rip + \entry\()_at]
    check_eq "qword ptr [rdi + V_RIP]", rax, "\what: RIP at the instruction"
.endm

main:
    call svm_enable
    exit_of l2_push, 0x4c, "L2 PUSH, RSP non-canonical"
    exit_of l2_rbp, 0x4c, "L2 MOV [RBP], RBP non-canonical"
    exit_of l2_ds_rbp, 0x4d, "L2 MOV DS:[RBP]"
    exit_of l2_rcx, 0x4d, "L2 MOV [RCX]"
    ret

l2_push:
    mov rsp, NC
l2_push_at:
    push rax
l2_rbp:
    mov rbp, NC
l2_rbp_at:
    mov rax, [rbp]
l2_ds_rbp:
    mov rbp, NC
l2_ds_rbp_at:
    .byte 0x3e                      # DS:
    mov rax, [rbp]
l2_rcx:
    mov rcx, NC
l2_rcx_at:
    mov rax, [rcx]
'''


def test_l1_intercepts_see_ss_for_stack_references(tmp_path: Path) -> None:
    b = boot(source(tmp_path, NESTED))
    checks = parse_tap(b.serial)
    assert b.result.reason == "exit" and b.result.status == 1, b.serial
    assert len(checks) == 12 and all(c.ok for c in checks.values()), b.serial
