"""DR7 data breakpoints (AMD APM vol. 2, 13.1.1.5 and 13.1.3.2): R/Wn = 01b breaks on writes,
11b on reads or writes, over the LENn bytes (1, 2, 4 or 8) at DRn; the #DB is a trap (RIP at
the next instruction) with DR6.Bn set, once per instruction, and after MOV SS it waits for the
instruction that follows (13.1.3.3). A disabled breakpoint raises nothing."""
from __future__ import annotations

from pathlib import Path

from unicorn.x86_const import UC_X86_REG_DR7

from emu.core import snapshot
from tests.conftest import parse_tap
from tests.harness import boot, source

# LENn encodings: 00b 1 byte, 01b 2, 11b 4, 10b 8.
_LEN = {1: 0, 2: 1, 4: 3, 8: 2}
_REG = {1: "al", 2: "ax", 4: "eax", 8: "rax"}
_PTR = {1: "byte", 2: "word", 4: "dword", 8: "qword"}


def _dr7(n: int, rw: int, length: int) -> int:
    return 0x400 | (1 << (2 * n)) | (rw << (16 + 4 * n)) | (_LEN[length] << (18 + 4 * n))


def _case(k: int, n: int, rw: int, length: int) -> str:
    """A write, then a read, of the watched bytes, then a write just past them."""
    reads = 1 if rw == 3 else 0
    return f'''
    lea rax, [rip + target]
    mov dr{n}, rax
    mov eax, {_dr7(n, rw, length):#x}
    mov dr7, rax
    mov qword ptr [rip + db_count], 0
    mov eax, 0x5A
write_{k}:
    mov {_PTR[length]} ptr [rip + target], {_REG[length]}
write_{k}_end:
    check_eq [db_count], 1, "len {length} rw {rw}: a write raises one #DB"
    lea rax, [rip + write_{k}_end]
    check_eq [db_rip], rax, "len {length} rw {rw}: a trap, RIP after the write"
    check_mask [db_dr6], 0xF, {1 << n}, "len {length} rw {rw}: DR6.B{n} alone"
    mov {_REG[length]}, {_PTR[length]} ptr [rip + target]
    check_eq [db_count], {1 + reads}, "len {length} rw {rw}: a read raises {reads}"
    mov byte ptr [rip + target + {length}], 1
    check_eq [db_count], {1 + reads}, "len {length} rw {rw}: a byte past the range raises none"
'''


def _guest() -> tuple[str, int]:
    cases = [(n, rw, length) for n, rw in ((0, 1), (2, 3)) for length in (1, 2, 4, 8)]
    body = "".join(_case(k, n, rw, length) for k, (n, rw, length) in enumerate(cases))
    checks = 5 * len(cases) + 9
    return GUEST.replace("CASES", body), checks


GUEST = r'''
.include "prelude.inc"

main:
    set_idt_handler 1, db_handler
    xor eax, eax
    mov dr6, rax
CASES
    # A write breakpoint on a read-modify-write: the instruction takes effect once.
    lea rax, [rip + target]
    mov dr1, rax
    mov eax, 0xD00404          # L1, R/W1 = 01b, LEN1 = 11b (4 bytes)
    mov dr7, rax
    mov qword ptr [rip + db_count], 0
    mov dword ptr [rip + target], 41
    check_eq [db_count], 1, "write breakpoint: the store to set up raised one #DB"
    add dword ptr [rip + target], 1
    check_eq [db_count], 2, "ADD to memory: one #DB"
    mov eax, [rip + target]
    check_eq rax, 42, "ADD to memory added once"

    # Disabled again: nothing.
    mov eax, 0x400
    mov dr7, rax
    mov dword ptr [rip + target], 7
    check_eq [db_count], 2, "disabled breakpoint raises nothing"

    # MOV SS reading a watched selector: the #DB comes after the next instruction.
    mov ax, ss
    mov [rip + ss_slot], ax
    lea rax, [rip + ss_slot]
    mov dr3, rax
    mov eax, 0x30000480        # G3, R/W3 = 11b, LEN3 = 00b
    mov dr7, rax
    mov qword ptr [rip + db_count], 0
    mov ss, [rip + ss_slot]
    nop
after_shadow:
    check_eq [db_count], 1, "MOV SS + read breakpoint: one #DB"
    lea rax, [rip + after_shadow]
    check_eq [db_rip], rax, "held past the instruction after MOV SS"
    # Single-stepping the write: one #DB reports both, DR6.BS and DR6.B3.
    lea rax, [rip + target]
    mov dr3, rax
    mov qword ptr [rip + db_count], 0
    pushfq
    or qword ptr [rsp], 0x100
    popfq
    mov byte ptr [rip + target], 3
    pushfq
    and qword ptr [rsp], ~0x100
    popfq
    check_eq [db_count], 4, "TF + write breakpoint: one #DB per instruction (MOV to POPF)"
    check_mask [db_dr6], 0x400F, 0x4000, "the last #DB: single step only"
    check_mask [db_dr6_tf], 0x400F, 0x4008, "the write's #DB: DR6.BS and DR6.B3"
    mov eax, 0x400
    mov dr7, rax
    ret

db_handler:
    push rax
    inc qword ptr [rip + db_count]
    mov rax, [rsp + 8]
    mov [rip + db_rip], rax
    mov rax, dr6
    mov [rip + db_dr6], rax
    cmp qword ptr [rip + db_count], 1
    jne 1f
    mov [rip + db_dr6_tf], rax
1:
    xor eax, eax
    mov dr6, rax
    pop rax
    iretq

.data
.align 16
target:         .space 16
ss_slot:        .space 8

.bss
.align 8
db_count:       .space 8
db_rip:         .space 8
db_dr6:         .space 8
db_dr6_tf:      .space 8
'''


def test_data_breakpoints_trap_after_the_access(tmp_path: Path) -> None:
    text, count = _guest()
    b = boot(source(tmp_path, text), nested=False)
    checks = parse_tap(b.serial)
    assert b.result.reason == "exit" and b.result.status == 1, b.serial
    assert len(checks) == count and all(c.ok for c in checks.values()), b.serial
    assert not b.machine.data_breakpoints.active      # DR7 enables none at the end: no hook


NESTED = r'''
.include "prelude.inc"
.include "svm.inc"

main:
    call svm_enable

    # L2 arms a 4-byte write breakpoint and writes there; L1 intercepts #DB: the exit comes
    # after the write, with DR6.B0 in the VMCB.
    lea rdi, [rip + l2_entry]
    call vmcb_init
    mov rdi, VMCB
    or dword ptr [rdi + V_INTERCEPT_EXC], 1 << 1
    mov rax, VMCB
    vmrun
    check_eq "qword ptr [rdi + V_EXITCODE]", 0x41, "#DB intercept: VMEXIT_EXCP1"
    lea rax, [rip + l2_after]
    check_eq "qword ptr [rdi + V_RIP]", rax, "#DB intercept: RIP after the write"
    check_mask "qword ptr [rdi + V_DR6]", 0xF, 1, "#DB intercept: DR6.B0 in the VMCB"
    check_eq [target], 0x5A, "the write took effect"
    mov rax, dr7
    mov [rip + l1_dr7], rax
    check_eq [l1_dr7], 0x400, "L1's DR7 after #VMEXIT"
    mov dword ptr [rip + target], 1
    check_eq [target], 1, "L1 writes the same bytes freely"
    ret

l2_entry:
    lea rax, [rip + target]
    mov dr0, rax
    mov eax, 0xD0401           # L0, R/W0 = 01b, LEN0 = 11b (4 bytes)
    mov dr7, rax
    mov dword ptr [rip + target], 0x5A
l2_after:
    vmmcall

.data
.align 16
target:         .space 8

.bss
.align 8
l1_dr7:         .space 8
'''


def test_data_breakpoint_in_l2_meets_l1s_db_intercept(tmp_path: Path) -> None:
    b = boot(source(tmp_path, NESTED))
    checks = parse_tap(b.serial)
    assert b.result.reason == "exit" and b.result.status == 1, b.serial
    assert len(checks) == 6 and all(c.ok for c in checks.values()), b.serial
    assert not b.machine.data_breakpoints.active      # #VMEXIT loaded L1's DR7: no hook


ARMED = r'''
.include "prelude.inc"

main:
    lea rax, [rip + target]
    mov dr0, rax
    mov eax, 0x30402           # G0, R/W0 = 11b, LEN0 = 00b
    mov dr7, rax
    ret

.data
target:         .space 8
'''


def test_snapshot_restore_brings_the_hook_back_with_dr7(tmp_path: Path) -> None:
    b = boot(source(tmp_path, ARMED), nested=False)
    m = b.machine
    assert b.result.reason == "exit", b.serial
    assert m.data_breakpoints.active                  # DR7 enables a read/write breakpoint
    snap = snapshot.take(m)
    m.uc.reg_write(UC_X86_REG_DR7, 0x400)
    m.data_breakpoints.sync()
    assert not m.data_breakpoints.active
    snapshot.restore(m, snap)
    assert m.data_breakpoints.active


ALIASED = r'''
.include "prelude.inc"

main:
    set_idt_handler 1, db_handler
    # PML4[1] maps linear 512 GiB up onto the same physical memory as PML4[0].
    mov rax, [rip + pml4]
    mov [rip + pml4 + 8], rax
    mov rax, cr3
    mov cr3, rax
    lea rbx, [rip + target]
    mov rax, 0x8000000000
    add rbx, rax
    mov dr0, rbx
    mov eax, 0xD0401           # L0, R/W0 = 01b, LEN0 = 11b (4 bytes)
    mov dr7, rax
    mov dword ptr [rbx], 5
    check_eq [db_count], 1, "a write at the breakpoint's linear address (not its physical one)"
    mov byte ptr [rip + spare], 1    # same page offset, another page: nothing
    check_eq [db_count], 1, "the same page offset elsewhere raises nothing"
    mov eax, 0x400
    mov dr7, rax
    ret

db_handler:
    inc qword ptr [rip + db_count]
    iretq

.data
.align 4096
target:         .space 4096
spare:          .space 8

.bss
.align 8
db_count:       .space 8
'''


def test_breakpoint_addresses_are_linear(tmp_path: Path) -> None:
    b = boot(source(tmp_path, ALIASED), nested=False)
    checks = parse_tap(b.serial)
    assert b.result.reason == "exit" and b.result.status == 1, b.serial
    assert len(checks) == 2 and all(c.ok for c in checks.values()), b.serial
