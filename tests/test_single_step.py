"""Single-stepping and instruction breakpoints across world switches (AMD APM vol. 2, 13.1 and
15.5-15.6): for L1 the whole of L2's run is the one instruction VMRUN, so its single-step #DB
comes after the #VMEXIT, at the instruction after VMRUN; #VMEXIT turns the host's breakpoints
off (DR7 = 0x400); RF set to pass a breakpoint on VMRUN is clear once VMRUN completes."""
from __future__ import annotations

from pathlib import Path

from emu.loader.asm import GUESTS_DIR
from tests.conftest import parse_tap
from tests.harness import boot

GUEST = r'''
.include "prelude.inc"
.include "svm.inc"

main:
    set_idt_handler 1, db_handler
    call svm_enable
    lea rdi, [rip + l2_entry]
    call vmcb_init
    mov rdi, VMCB

    # Four VMRUNs from one address, the last with RFLAGS.TF set by the POPF before it (so the
    # VMRUN is the instruction stepped). The first three make the switch repeat (svmemu replays
    # repeated switches in C), the fourth must still trap.
    xor r12d, r12d
.Lstep_loop:
    lea rax, [rip + l2_entry]
    mov [rdi + V_RIP], rax
    pushfq
    cmp r12, 3
    jne 1f
    or qword ptr [rsp], 0x100
1:  mov rax, VMCB
    popfq
    vmrun
after_step:
    inc r12
    cmp r12, 4
    jb .Lstep_loop
    check_eq "qword ptr [rdi + V_EXITCODE]", 0x81, "L2 ran to its VMMCALL"
    check_eq [db_count], 1, "one #DB for the single-stepped VMRUN"
    lea rsi, [rip + after_step]
    check_eq [db_rip], rsi, "the #DB is taken after the #VMEXIT, at the instruction after VMRUN"
    check_mask [db_dr6], 0x4000, 0x4000, "DR6.BS says single step"
    check_eq [db_world], 0x81, "the #DB comes once the #VMEXIT has written vmcb12"

    # An instruction breakpoint on VMRUN: the handler sets RF, VMRUN runs; the #VMEXIT leaves
    # DR7 = 0x400, so the second VMRUN from the same address is not stopped.
    mov qword ptr [rip + db_count], 0
    lea rax, [rip + bp_vmrun]
    mov dr0, rax
    mov eax, 0x403                      # L0, G0: execute breakpoint on DR0
    mov dr7, rax
    xor r12d, r12d
.Lbp_loop:
    lea rax, [rip + l2_entry]
    mov [rdi + V_RIP], rax
    mov rax, VMCB
bp_vmrun:
    vmrun
    pushfq
    pop rbx
    mov [rip + rflags_after], rbx
    inc r12
    cmp r12, 2
    jb .Lbp_loop
    check_eq [db_count], 1, "the breakpoint on VMRUN fires once"
    check_mask [db_dr6], 0x4001, 1, "DR6.B0 says breakpoint 0"
    check_mask [rflags_after], 0x10000, 0, "RF is clear after VMRUN completes"
    mov rax, dr7
    mov [rip + dr7_after], rax
    check_mask [dr7_after], 0xFF, 0, "#VMEXIT disabled the host's breakpoints"

    # A VMRUN that fails its consistency checks (ASID 0) is stepped like any instruction.
    mov qword ptr [rip + db_count], 0
    mov dword ptr [rdi + V_ASID], 0
    mov rax, VMCB
    pushfq
    or qword ptr [rsp], 0x100
    popfq
    vmrun
after_invalid:
    nop
    check_eq "qword ptr [rdi + V_EXITCODE]", -1, "ASID 0: VMEXIT_INVALID"
    check_eq [db_count], 1, "one #DB for the failed VMRUN"
    lea rsi, [rip + after_invalid]
    check_eq [db_rip], rsi, "the #DB is at the instruction after the failed VMRUN"
    ret

# #DB: count it, keep RIP and DR6, reset DR6; pass a breakpoint (RF), stop stepping (TF).
db_handler:
    push rax
    inc qword ptr [rip + db_count]
    mov rax, [rsp + 8]
    mov [rip + db_rip], rax
    mov rax, VMCB
    mov rax, [rax + V_EXITCODE]
    mov [rip + db_world], rax
    mov rax, dr6
    mov [rip + db_dr6], rax
    test eax, 1
    jz 1f
    bts qword ptr [rsp + 24], 16
1:  btr qword ptr [rsp + 24], 8
    mov eax, 0xFFFF0FF0
    mov dr6, rax
    pop rax
    iretq

l2_entry:
    vmmcall

.bss
.align 8
db_count:       .space 8
db_rip:         .space 8
db_dr6:         .space 8
db_world:       .space 8
rflags_after:   .space 8
dr7_after:      .space 8
'''


def _write(tmp_path: Path) -> str:
    path = tmp_path / "single_step.S"
    path.write_text(GUEST.replace('.include "prelude.inc"', f'.include "{GUESTS_DIR}/prelude.inc"')
                    .replace('.include "svm.inc"', f'.include "{GUESTS_DIR}/svm.inc"'))
    return str(path)


def test_single_step_and_breakpoints_across_vmrun(tmp_path):
    b = boot(_write(tmp_path))
    checks = parse_tap(b.serial)
    assert b.result.reason == "exit" and b.result.status == 1, b.serial
    assert len(checks) == 12 and all(c.ok for c in checks.values()), b.serial
    replay = b.machine.replay
    if replay is not None:            # the repeated switches did run in C before the stepped one
        assert replay.replays > 0
