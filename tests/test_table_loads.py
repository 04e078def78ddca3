"""LGDT, LIDT, LLDT and LTR of a base that is not canonical raise #GP and load nothing (AMD APM
vol. 3 on each; a CPU without 5-level paging: bits 63:47 must be equal), which Unicorn's helpers
do not check (emu/core/table_loads.py; kvm-unit-tests la57). The prelude's own LGDT/LIDT/LTR at
boot are the canonical cases: they still load."""
from __future__ import annotations

from emu.loader.asm import GUESTS_DIR
from tests.conftest import parse_tap
from tests.harness import boot

GUEST = r'''
main:
    lgdt [rip + test_gdt_ptr]

    expect_fault 1f
    mov ax, 0x18
    ltr ax
1:
    check_eq [fault_vector], 13, "LTR of a TSS with a non-canonical base: #GP"
    check_eq [fault_err], 0x18, "LTR: the selector is the error code"
    movzx eax, byte ptr [rip + test_gdt + 0x18 + 5]
    check_eq rax, 0x89, "LTR: the descriptor is not marked busy"

    expect_fault 1f
    mov ax, 0x28
    lldt ax
1:
    check_eq [fault_vector], 13, "LLDT of an LDT with a non-canonical base: #GP"
    check_eq [fault_err], 0x28, "LLDT: the selector is the error code"
    sldt ax
    movzx eax, ax
    check_eq rax, 0, "LLDT: LDTR is unchanged"

    sgdt [rip + saved_dt]
    expect_fault 1f
    lgdt [rip + bad_gdt_ptr]
1:
    check_eq [fault_vector], 13, "LGDT of a base canonical only under 57 bits: #GP"
    check_eq [fault_err], 0, "LGDT: error code 0"
    sgdt [rip + now_dt]
    mov rax, [rip + saved_dt + 2]
    check_eq [now_dt + 2], rax, "LGDT: GDTR is unchanged"

    sidt [rip + saved_dt]
    expect_fault 1f
    lidt [rip + bad_idt_ptr]
1:
    check_eq [fault_vector], 13, "LIDT of a non-canonical base: #GP"
    sidt [rip + now_dt]
    mov rax, [rip + saved_dt + 2]
    check_eq [now_dt + 2], rax, "LIDT: IDTR is unchanged"

    lgdt [rip + gdt_ptr]
    ret

.data
.align 16
test_gdt:
    .quad 0
    .quad 0x00af9a000000ffff                # 0x08: 64-bit code
    .quad 0x00cf92000000ffff                # 0x10: data
    .quad 0xAA0089AAAAAA0067, 0xAAAAAAAA    # 0x18: available 64-bit TSS, base 0xAAAA...
    .quad 0xAA0082AAAAAA0067, 0xAAAAAAAA    # 0x28: LDT, base 0xAAAA...
test_gdt_end:
test_gdt_ptr:
    .word test_gdt_end - test_gdt - 1
    .quad test_gdt
bad_gdt_ptr:
    .word 0x37
    .quad 0xFFAAAAAAAAAAAAAA
bad_idt_ptr:
    .word 0xFFF
    .quad 0xAAAAAAAAAAAAAAAA
.bss
.align 8
saved_dt:   .space 16
now_dt:     .space 16
'''


def test_non_canonical_table_bases_fault(tmp_path):
    path = tmp_path / "table_loads.S"
    path.write_text(f'.include "{GUESTS_DIR}/prelude.inc"\n' + GUEST)
    b = boot(str(path), nested=False)
    checks = parse_tap(b.serial)
    assert b.result.reason == "exit" and b.result.status == 1, b.serial
    assert len(checks) == 11 and all(c.ok for c in checks.values()), b.serial
