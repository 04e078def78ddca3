"""IRETQ to CPL 3 nulls the data segment registers whose DPL is below the new CPL (AMD APM
vol. 3, IRET), and in long mode nulling FS or GS leaves its base, as loading a null selector
there does on AMD processors: the kernel's per-CPU base survives a round trip through user
mode (kvm-unit-tests' run_in_user relies on it)."""
from __future__ import annotations

from pathlib import Path

from tests.conftest import parse_tap
from tests.harness import boot, source

GUEST = r'''
.include "prelude.inc"
.equ SEL_UCODE64, 0x33
.equ SEL_UDATA, 0x3B
.equ MSR_GS_BASE, 0xC0000101

main:
    call ring3_setup
    mov ax, SEL_DATA
    mov ds, ax
    mov gs, ax
    lea rax, [rip + percpu]
    mov [rip + percpu], rax
    mov rdx, rax
    shr rdx, 32
    mov ecx, MSR_GS_BASE
    wrmsr

    mov [rip + ring0_rsp], rsp
    lea rax, [rsp - 512]
    push SEL_UDATA
    push rax
    push 2
    push SEL_UCODE64
    lea rax, [rip + ring3]
    push rax
    iretq
ring3:
    mov ax, gs
    mov [rip + gs_in_user], ax
    mov ax, ds
    mov [rip + ds_in_user], ax
    mov rax, gs:[0]
    mov [rip + gs_read_in_user], rax
    int 0x81
back:
    mov ax, SEL_DATA
    mov ss, ax
    mov ds, ax
    mov es, ax
    check_eq [gs_in_user], 0, "IRET to CPL 3 nulled GS (DPL 0 data)"
    check_eq [ds_in_user], 0, "IRET to CPL 3 nulled DS (DPL 0 data)"
    lea rax, [rip + percpu]
    check_eq [gs_read_in_user], rax, "GS base kept at CPL 3"
    mov ecx, MSR_GS_BASE
    rdmsr
    shl rdx, 32
    or rax, rdx
    mov [rip + gs_base_after], rax
    lea rax, [rip + percpu]
    check_eq [gs_base_after], rax, "GS base kept after the round trip"
    ret

# A GDT with ring-3 code and data after the prelude's, the first 16 MiB user-accessible, and a
# DPL 3 gate for `int 0x81` back to CPL 0.
ring3_setup:
    lea rsi, [rip + gdt]
    lea rdi, [rip + gdt3]
    mov ecx, 6
    rep movsq
    mov rax, 0x00affa000000ffff
    mov [rip + gdt3 + 0x30], rax
    mov rax, 0x00cff2000000ffff
    mov [rip + gdt3 + 0x38], rax
    lea rax, [rip + gdt3]
    mov [rip + gdt3_ptr + 2], rax
    lgdt [rip + gdt3_ptr]
    or qword ptr [rip + pml4], 4
    or qword ptr [rip + pdpt], 4
    lea rdi, [rip + pd0]
    mov ecx, 8
1:  or qword ptr [rdi], 4
    add rdi, 8
    dec ecx
    jnz 1b
    mov rax, cr3
    mov cr3, rax
    set_idt_handler 0x81, ring3_return
    lea rax, [rip + idt]
    mov byte ptr [rax + 0x81 * 16 + 5], 0xEE
    ret

ring3_return:
    mov rsp, [rip + ring0_rsp]
    jmp back

.align 8
gdt3_ptr:
    .word 0x3F
    .quad 0

.bss
.align 16
gdt3:               .space 64
percpu:             .space 8
ring0_rsp:          .space 8
gs_in_user:         .space 8
ds_in_user:         .space 8
gs_read_in_user:    .space 8
gs_base_after:      .space 8
'''


def test_iret_to_cpl3_keeps_gs_base(tmp_path: Path) -> None:
    b = boot(source(tmp_path, GUEST), nested=False)
    checks = parse_tap(b.serial)
    assert b.result.reason == "exit" and b.result.status == 1, b.serial
    assert len(checks) == 4 and all(c.ok for c in checks.values()), b.serial
