"""Two instructions whose stock Unicorn translation differs from the APM, fixed by the engine
patch 0005 (emu/engine/unicorn_build/): the image PUSHF stores has RF (and VM) clear even right
after an IRET that set RF, and SMSW to a 32-bit register outside 64-bit mode stores CR0[31:0]
(kvm-unit-tests realmode: 'rflags.rf' and 'smsw')."""
from __future__ import annotations

import pytest

from emu.engine.unicorn_build import loader as engine_loader
from emu.loader.asm import GUESTS_DIR
from tests.conftest import parse_tap
from tests.harness import boot

GUEST = r'''
main:
    # IRETQ to the next instruction with RF set in the RFLAGS image; PUSHFQ there.
    mov rax, rsp
    push 0x10
    push rax
    pushfq
    or qword ptr [rsp], 0x10000
    push 0x08
    lea rax, [rip + after_iret]
    push rax
    iretq
after_iret:
    pushfq
    pop rax
    mov [rip + pushed], rax
    check_mask [pushed], 0x10000, 0, "PUSHF right after an IRET that set RF stores RF=0"

    # SMSW EAX in compatibility mode (a 32-bit code segment): CR0[31:0], PG included.
    mov rax, cr0
    mov [rip + cr0_value], rax
    push 0x18
    lea rax, [rip + compat]
    push rax
    retfq
.code32
compat:
    mov eax, 0x12345678
    smsw eax
    mov [smsw_value], eax
    ljmp 0x08, back64
.code64
back64:
    mov eax, [rip + smsw_value]
    mov [rip + smsw_value], rax
    check_eq [smsw_value], [cr0_value], "SMSW r32 outside 64-bit mode stores CR0[31:0]"
    ret

.bss
.align 8
pushed:     .space 8
cr0_value:  .space 8
smsw_value: .space 8
'''


def test_pushf_clears_rf_and_smsw_r32_stores_all_of_cr0(tmp_path):
    if not engine_loader.has_fix("pushf-rf-smsw"):
        pytest.skip("needs svmemu's engine (patch 0005); the stock one keeps both differences")
    path = tmp_path / "pushf_smsw.S"
    path.write_text(f'.include "{GUESTS_DIR}/prelude.inc"\n' + GUEST)
    b = boot(str(path), nested=False)
    checks = parse_tap(b.serial)
    assert b.result.reason == "exit" and b.result.status == 1, b.serial
    assert len(checks) == 2 and all(c.ok for c in checks.values()), b.serial
