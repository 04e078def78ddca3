"""The stack references of a far RET, an IRET and a far CALL to the same privilege are made at
the current privilege level (engine patch 0031): at CPL 3 they are user references, and a stack
in a supervisor-only page is #PF with error code U=1 (APM vol. 2, 5.6), CR2 the stack address,
RIP the instruction, nothing loaded or written. QEMU 5.0 made them as supervisor references: a
user RETF read a supervisor page and a user far CALL wrote its return address into one."""
from __future__ import annotations

import pytest

from emu.engine.unicorn_build import loader as engine_loader
from emu.loader.asm import GUESTS_DIR
from tests.conftest import parse_tap
from tests.harness import boot

GUEST = r'''
.equ USER_DATA, 0x30 | 3
.equ USER_CODE64, 0x38 | 3
.equ KPAGE, 0x800000                        # 2 MiB page 4: kept supervisor-only
.equ PF_USER_READ, 0x5                      # P | U
.equ PF_USER_WRITE, 0x7                     # P | W | U

main:
    lea rsi, [rip + gdt]
    lea rdi, [rip + user_gdt]
    mov ecx, 6
    rep movsq
    lgdt [rip + user_gdt_ptr]
    or qword ptr [rip + pml4], 4
    or qword ptr [rip + pdpt], 4
    lea rdi, [rip + pd0]
    mov ecx, 512
2:
    or qword ptr [rdi], 4
    add rdi, 8
    dec ecx
    jnz 2b
    and qword ptr [rip + pd0 + 32], -5         # clear U/S
    mov rax, cr3
    mov cr3, rax
    set_idt_handler 14, pf_from_user
    # a return frame in the supervisor page: RIP = escaped, CS = user code
    lea rax, [rip + escaped]
    mov [KPAGE], rax
    mov qword ptr [KPAGE + 8], USER_CODE64
    mov qword ptr [KPAGE + 16], 0x202
    mov qword ptr [KPAGE + 24], KPAGE + 64
    mov qword ptr [KPAGE + 32], USER_DATA

    lea rax, [rip + user_retf]
    lea rbx, [rip + after_retf]
    call to_user
after_retf:
    check_eq [pf_err], PF_USER_READ, "user RETF from a supervisor stack: #PF, U=1 read"
    check_eq [pf_cr2], KPAGE, "user RETF from a supervisor stack: CR2 = RSP"
    lea rax, [rip + retf_insn]
    check_eq [pf_rip], rax, "user RETF from a supervisor stack: RIP at the RETF"
    check_eq [escapes], 0, "user RETF from a supervisor stack: no return"

    lea rax, [rip + user_iret]
    lea rbx, [rip + after_iret]
    call to_user
after_iret:
    check_eq [pf_err], PF_USER_READ, "user IRETQ from a supervisor stack: #PF, U=1 read"
    lea rax, [rip + iret_insn]
    check_eq [pf_rip], rax, "user IRETQ from a supervisor stack: RIP at the IRETQ"
    check_eq [escapes], 0, "user IRETQ from a supervisor stack: no return"

    mov qword ptr [KPAGE + 0x100 - 8], 0
    lea rax, [rip + user_lcall]
    lea rbx, [rip + after_lcall]
    call to_user
after_lcall:
    check_eq [pf_err], PF_USER_WRITE, "user far CALL onto a supervisor stack: #PF, U=1 write"
    mov eax, KPAGE + 0x100 - 4
    check_eq [pf_cr2], rax, "user far CALL onto a supervisor stack: CR2 = RSP - 4"
    lea rax, [rip + lcall_insn]
    check_eq [pf_rip], rax, "user far CALL onto a supervisor stack: RIP at the CALL"
    mov rax, [KPAGE + 0x100 - 8]
    check_eq rax, 0, "user far CALL onto a supervisor stack: nothing written"
    check_eq [escapes], 0, "user far CALL onto a supervisor stack: no call"
    ret

# rax = user code, rbx = where the #PF handler resumes (CPL 0)
to_user:
    mov [rip + pf_resume], rbx
    mov [rip + kernel_rsp], rsp
    mov qword ptr [rip + pf_err], -1
    push USER_DATA
    lea rcx, [rip + user_stack_top]
    push rcx
    push 0x202
    push USER_CODE64
    push rax
    iretq

user_retf:
    mov eax, KPAGE
    mov rsp, rax
retf_insn:
    retfq
user_iret:
    mov eax, KPAGE
    mov rsp, rax
iret_insn:
    iretq
user_lcall:
    mov eax, KPAGE + 0x100
    mov rsp, rax
    lea rbx, [rip + far_target]
lcall_insn:
    .byte 0xff, 0x1b                        # call far m16:32 at [rbx]
escaped:
    inc qword ptr [rip + escapes]
    hlt                                     # privileged: #GP, unexpected

pf_from_user:
    pop qword ptr [rip + pf_err]
    pop qword ptr [rip + pf_rip]
    mov rax, cr2
    mov [rip + pf_cr2], rax
    mov ax, SEL_DATA
    mov ds, ax
    mov es, ax
    mov rsp, [rip + kernel_rsp]
    add rsp, 8                              # to_user's return address
    jmp [rip + pf_resume]

.data
.align 8
far_target:     .long escaped
                .word USER_CODE64
user_gdt:       .space 6 * 8
                .quad 0x00cff2000000ffff    # 0x30: user data
                .quad 0x00affa000000ffff    # 0x38: user 64-bit code
user_gdt_end:
user_gdt_ptr:   .word user_gdt_end - user_gdt - 1
                .quad user_gdt

.bss
.align 16
pf_err:         .space 8
pf_rip:         .space 8
pf_cr2:         .space 8
pf_resume:      .space 8
kernel_rsp:     .space 8
escapes:        .space 8
                .space 4096
user_stack_top:
'''


def test_far_transfer_stack_references_at_cpl3(tmp_path):
    if not engine_loader.has_fix("far-stack-at-cpl"):
        pytest.skip("needs svmemu's engine (patch 0031)")
    path = tmp_path / "far_stack.S"
    path.write_text(f'.include "{GUESTS_DIR}/prelude.inc"\n' + GUEST)
    b = boot(str(path), nested=False)
    checks = parse_tap(b.serial)
    assert b.result.reason == "exit" and b.result.status == 1, b.serial
    assert len(checks) == 12 and all(c.ok for c in checks.values()), b.serial
