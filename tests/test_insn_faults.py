"""Faults the stock Unicorn translation misses, raised by engine patches 0013 and 0016-0019
(emu/engine/unicorn_build/): a misaligned MOVAPS/MOVDQA/MOVNTPS is #GP(0) (APM vol. 4), MOVBE
with a register operand is #UD (vol. 3, MOVBE), a near JMP/CALL/RET to a non-canonical target
is #GP(0) at the branch with the stack untouched (vol. 3, JMP, CALL, RET), a null selector
with RPL != CPL loaded into SS in 64-bit mode is #GP(0), and an IRET to CPL 3 that nulls GS
keeps its base, as AMD processors without NullSelectorClearsBase do (vol. 3, IRET).
kvm-unit-tests' emulator test checks the same five."""
from __future__ import annotations

import pytest

from emu.engine.unicorn_build import loader as engine_loader
from emu.loader.asm import GUESTS_DIR
from tests.conftest import parse_tap
from tests.harness import boot

GUEST = r'''
.equ MSR_GS_BASE, 0xc0000101
.equ USER_DATA, 0x30 | 3
.equ USER_CODE64, 0x38 | 3

main:
    mov rax, cr4
    or rax, 0x600                           # OSFXSR | OSXMMEXCPT
    mov cr4, rax

    # --- 16-byte aligned moves ---
    expect_fault 1f
movaps_load:
    movaps xmm0, [rip + buf + 8]
1:
    check_eq [fault_vector], 13, "misaligned MOVAPS load: #GP"
    check_eq [fault_err], 0, "misaligned MOVAPS load: error code 0"
    lea rax, [rip + movaps_load]
    check_eq [fault_rip], rax, "misaligned MOVAPS load: RIP at the instruction"
    expect_fault 1f
    movdqa [rip + buf + 4], xmm0
1:
    check_eq [fault_vector], 13, "misaligned MOVDQA store: #GP"
    expect_fault 1f
    movntps [rip + buf + 1], xmm0
1:
    check_eq [fault_vector], 13, "misaligned MOVNTPS: #GP"
    expect_fault 1f
    movaps xmm0, [rip + buf + 16]
    movapd [rip + buf + 32], xmm0
    movups xmm1, [rip + buf + 8]
    movdqu [rip + buf + 3], xmm1
1:
    check_eq [fault_vector], -1, "aligned MOVAPS/MOVAPD and misaligned MOVUPS/MOVDQU run"

    # --- MOVBE ---
    mov dword ptr [rip + word_be], 0x11223344
    movbe eax, [rip + word_be]
    check_eq rax, 0x44332211, "MOVBE r32, m32 swaps the bytes"
    expect_fault 1f
    .byte 0x0f, 0x38, 0xf0, 0xc0            # movbe eax, eax: no such form
1:
    check_eq [fault_vector], 6, "MOVBE with a register operand: #UD"

    # --- near branches to a non-canonical address ---
    mov rbx, 0xaaaaaaaaaaaaaaaa
    mov r14, rsp
    expect_fault 1f
jmp_nc:
    jmp rbx
1:
    check_eq [fault_vector], 13, "JMP to a non-canonical address: #GP"
    check_eq [fault_err], 0, "JMP to a non-canonical address: error code 0"
    lea rax, [rip + jmp_nc]
    check_eq [fault_rip], rax, "JMP to a non-canonical address: RIP at the JMP"
    expect_fault 1f
call_nc:
    call rbx
1:
    mov r15, rsp
    check_eq [fault_vector], 13, "CALL to a non-canonical address: #GP"
    lea rax, [rip + call_nc]
    check_eq [fault_rip], rax, "CALL to a non-canonical address: RIP at the CALL"
    check_eq r15, r14, "CALL to a non-canonical address pushes nothing"
    push rbx
    expect_fault 1f
ret_nc:
    ret
1:
    mov r15, rsp
    add rsp, 8
    check_eq [fault_vector], 13, "RET to a non-canonical address: #GP"
    lea rax, [rip + ret_nc]
    check_eq [fault_rip], rax, "RET to a non-canonical address: RIP at the RET"
    lea rax, [r14 - 8]
    check_eq r15, rax, "RET to a non-canonical address pops nothing"

    # --- a null SS at CPL 0 needs RPL 0 ---
    xor eax, eax
    mov ss, ax
    mov r15d, 0xffff
    mov r15w, ss
    check_eq r15, 0, "MOV of selector 0 to SS at CPL 0 loads it"
    mov eax, 3
    expect_fault 1f
    mov ss, ax
1:
    mov r15d, 0xffff
    mov r15w, ss
    check_eq [fault_vector], 13, "MOV of null selector 3 to SS at CPL 0: #GP"
    check_eq [fault_err], 0, "MOV of null selector 3 to SS at CPL 0: error code 0"
    check_eq r15, 0, "MOV of null selector 3 to SS at CPL 0 leaves SS"
    mov ax, SEL_DATA
    mov ss, ax

    # --- IRET to CPL 3 nulls GS (DPL 0) and keeps its base ---
    # A GDT with user segments, and user access to the first GiB.
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
    mov rax, cr3
    mov cr3, rax
    set_idt_handler 13, gp_from_user
    mov ax, SEL_DATA
    mov gs, ax
    mov ecx, MSR_GS_BASE
    lea rax, [rip + magic]
    mov rdx, rax
    shr rdx, 32
    wrmsr
    xor r12, r12
    mov r13, -1
    mov [rip + kernel_rsp], rsp
    push USER_DATA
    lea rax, [rip + user_stack_top]
    push rax
    pushfq
    push USER_CODE64
    lea rax, [rip + user_code]
    push rax
    iretq
user_code:
    mov r12, gs:[0]
    mov r13d, 0
    mov r13w, gs
    hlt                                     # privileged: #GP back to CPL 0
back_in_kernel:
    check_eq r13, 0, "IRET to CPL 3 loads GS (DPL 0) with a null selector"
    mov rax, 0x5eed5eed5eed5eed
    check_eq r12, rax, "the nulled GS keeps its base (MSR_GS_BASE)"
    ret

gp_from_user:
    mov ax, SEL_DATA
    mov ds, ax
    mov es, ax
    mov rsp, [rip + kernel_rsp]
    jmp back_in_kernel

.data
.align 8
magic:          .quad 0x5eed5eed5eed5eed
user_gdt:       .space 6 * 8
                .quad 0x00cff2000000ffff    # 0x30: user data
                .quad 0x00affa000000ffff    # 0x38: user 64-bit code
user_gdt_end:
user_gdt_ptr:   .word user_gdt_end - user_gdt - 1
                .quad user_gdt

.bss
.align 16
buf:            .space 64
word_be:        .space 8
kernel_rsp:     .space 8
                .space 4096
user_stack_top:
'''

FIXES = ("sse-aligned-moves", "movbe-register-ud", "iret-null-keeps-base", "noncanonical-branch",
         "null-ss-rpl")


def test_faults_the_stock_translation_misses(tmp_path):
    if not all(engine_loader.has_fix(f) for f in FIXES):
        pytest.skip("needs svmemu's engine (patches 0013, 0016-0019)")
    path = tmp_path / "insn_faults.S"
    path.write_text(f'.include "{GUESTS_DIR}/prelude.inc"\n' + GUEST)
    b = boot(str(path), nested=False)
    checks = parse_tap(b.serial)
    assert b.result.reason == "exit" and b.result.status == 1, b.serial
    assert len(checks) == 23 and all(c.ok for c in checks.values()), b.serial
