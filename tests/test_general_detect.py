"""DR7.GD, general detect (AMD APM vol. 2, 13.1.1.4-5): the next MOV from or to a debug register
raises #DB before it executes (RIP at the MOV), with DR6.BD set, and GD is clear once the #DB is
delivered, so the handler reads the debug registers freely and the MOV then runs. Without GD
debug-register accesses raise nothing."""
from __future__ import annotations

from pathlib import Path

from tests.conftest import parse_tap
from tests.harness import boot, source

GUEST = r'''
.include "prelude.inc"

main:
    set_idt_handler 1, db_handler

    xor eax, eax
    mov dr6, rax
    mov rax, dr7
    check_eq [db_count], 0, "no #DB without GD"

    # A read of DR0 under GD.
    mov eax, 0x2400
    mov dr7, rax
gd_read:
    mov rbx, dr0
    check_eq [db_count], 1, "MOV from DR0 under GD: one #DB"
    lea rax, [rip + gd_read]
    check_eq [db_rip], rax, "the #DB is a fault: RIP at the MOV"
    check_mask [db_dr6], 0x2000, 0x2000, "DR6.BD set"
    check_mask [db_dr7], 0x2000, 0, "GD clear in the handler"

    # A write of DR7 under GD: the write does not happen before the #DB.
    mov qword ptr [rip + db_count], 0
    mov eax, 0x2400
    mov dr7, rax
    mov eax, 0x401
gd_write:
    mov dr7, rax
    check_eq [db_count], 1, "MOV to DR7 under GD: one #DB"
    lea rax, [rip + gd_write]
    check_eq [db_rip], rax, "RIP at the MOV to DR7"
    check_eq [db_dr7], 0x400, "GD clear, the new DR7 not yet written"
    mov rax, dr7
    mov [rip + dr7_after], rax
    check_eq [dr7_after], 0x401, "the MOV ran after the handler"
    mov eax, 0x400
    mov dr7, rax
    ret

# #DB: count it, keep RIP, DR6 and DR7 (GD must be clear here), clear DR6.
db_handler:
    push rax
    inc qword ptr [rip + db_count]
    mov rax, [rsp + 8]
    mov [rip + db_rip], rax
    mov rax, dr6
    mov [rip + db_dr6], rax
    mov rax, dr7
    mov [rip + db_dr7], rax
    xor eax, eax
    mov dr6, rax
    pop rax
    iretq

.bss
.align 8
db_count:       .space 8
db_rip:         .space 8
db_dr6:         .space 8
db_dr7:         .space 8
dr7_after:      .space 8
'''


def test_general_detect_faults_on_debug_register_access(tmp_path: Path) -> None:
    b = boot(source(tmp_path, GUEST), nested=False)
    checks = parse_tap(b.serial)
    assert b.result.reason == "exit" and b.result.status == 1, b.serial
    assert len(checks) == 9 and all(c.ok for c in checks.values()), b.serial
