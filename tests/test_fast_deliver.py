"""Exceptions delivered through the IDT in C (emu/engine/deliver.c, emu/core/fast_deliver.py)
leave exactly what the Python Deliverer leaves: each guest runs with the C delivery on and forced
off (only it: the other C paths stay), and what it printed, its exit, its registers and whole
CPU state, RAM (stack frames included) and the virtual TSC must be the same, while C really did
deliver most of the exceptions. A trace, which disarms the C paths, still sees every one."""
from __future__ import annotations

import io
from dataclasses import dataclass

import pytest

from emu.core.machine import Machine
from emu.core.trace import Tracer
from emu.engine import replay
from emu.engine.hw_switch import OFF_V_TPR
from emu.loader.asm import assemble_source
from emu.loader.multiboot import parse_image
from svm_ext.extension import SvmExtension

pytestmark = pytest.mark.skipif(not replay.available(), reason="the C engine was not built")

RAM = 128 << 20
_NOISE_FROM = OFF_V_TPR + 1      # context bytes past it hold host addresses (test_fast_switch)

# L1 takes, in loops: #GP(0) from RDMSR and WRMSR of MSRs nobody implements (the MSR exit), #PF
# with CR2 on a not-present page, #UD through a gate with IST 2, #DE through a trap gate, INT3
# and INT 0x80 (software interrupts: Python's), and #GP from RDMSR at CPL 3, delivered at CPL 0
# on the TSS's RSP0. Every frame is folded into r15, printed at the end.
L1_GUEST = r"""
.include "prelude.inc"

.equ NP_PAGE, 0x4000000

.macro pd_entry addr
    lea rdi, [rip + pd0]
    add rdi, \addr >> 18
.endm

.macro fold_fault
    add r15, [rip + fault_vector]
    rol r15, 7
    add r15, [rip + fault_err]
    add r15, [rip + fault_cr2]
    add r15, rsp
.endm

main:
    xor r15, r15
    mov r14, 150
.Lmsr:
    lea ecx, [r14 + 0x3000]
    expect_fault .Lmsr_read_done
    rdmsr
.Lmsr_read_done:
    fold_fault
    mov eax, r14d
    mov edx, 0x55
    expect_fault .Lmsr_write_done
    wrmsr
.Lmsr_write_done:
    fold_fault
    dec r14
    jnz .Lmsr
    check_eq [fault_vector], 13, "WRMSR of an unknown MSR raises #GP"
    check_eq [fault_err], 0, "#GP error code 0"

    pd_entry NP_PAGE
    and qword ptr [rdi], -2
    mov rax, cr3
    mov cr3, rax
    mov r14, 100
.Lpf:
    lea rbx, [r14 * 8 + NP_PAGE + 0x100]
    expect_fault .Lpf_done
    mov rax, [rbx]
.Lpf_done:
    fold_fault
    dec r14
    jnz .Lpf
    check_eq [fault_vector], 14, "#PF on a not-present page"
    check_eq [fault_cr2], NP_PAGE + 0x108, "#PF CR2"

    set_idt_handler 6, ud_ist, 2
    mov r14, 100
.Lud:
    ud2
    add r15, [rip + ud_rsp]
    dec r14
    jnz .Lud
    check_eq [ud_count], 100, "#UD through an IST gate"

    lea rdi, [rip + idt]
    mov byte ptr [rdi + 5], 0x8f            # vector 0: a trap gate
    mov r14, 60
.Lde:
    xor edx, edx
    xor ecx, ecx
    mov eax, r14d
    expect_fault .Lde_done
    div ecx
.Lde_done:
    fold_fault
    dec r14
    jnz .Lde
    check_eq [fault_vector], 0, "#DE through a trap gate"

    set_idt_handler 3, soft_handler
    set_idt_handler 0x80, soft_handler
    lea rdi, [rip + idt]
    or byte ptr [rdi + 3 * 16 + 5], 0x60    # DPL 3: reachable by INT3
    mov r14, 40
.Lsoft:
    int3
    int 0x80
    dec r14
    jnz .Lsoft
    check_eq [soft_count], 80, "INT3 and INT 0x80 reach their gates"

    # Ring 3: a GDT with user data (0x30) and 64-bit user code (0x38), the first 2 MiB
    # user-accessible, and #GP from RDMSR at CPL 3 delivered on RSP0.
    lea rsi, [rip + gdt]
    lea rdi, [rip + user_gdt]
    mov ecx, 6
    rep movsq
    mov rax, 0x00CFF3000000FFFF
    mov [rdi], rax
    mov rax, 0x00AFFB000000FFFF
    mov [rdi + 8], rax
    lea rax, [rip + user_gdt]
    mov [rip + user_gdt_ptr + 2], rax
    lgdt [rip + user_gdt_ptr]
    or qword ptr [rip + pml4], 4
    or qword ptr [rip + pdpt], 4
    or qword ptr [rip + pd0], 4
    mov rax, cr3
    mov cr3, rax
    set_idt_handler 13, user_gp
    mov r14, 100
.Luser:
    mov [rip + kernel_rsp], rsp
    push 0x33
    lea rax, [rip + user_stack_top]
    push rax
    pushfq
    push 0x3b
    lea rax, [rip + user_code]
    push rax
    iretq
.Luser_back:
    mov ax, SEL_DATA
    mov ss, ax
    dec r14
    jnz .Luser
    check_eq [user_count], 100, "#GP at CPL 3 delivered at CPL 0"

    print "checksum "
    mov rdi, r15
    call puthex64
    call newline
    ret

user_code:
    mov ecx, 0x10
    rdmsr
    jmp user_code

user_gp:                                    # frame: err, RIP, CS, RFLAGS, RSP, SS
    add r15, [rsp]
    add r15, [rsp + 8]
    add r15, [rsp + 16]
    add r15, [rsp + 24]
    add r15, [rsp + 32]
    add r15, [rsp + 40]
    add r15, rsp
    inc qword ptr [rip + user_count]
    mov rsp, [rip + kernel_rsp]
    jmp .Luser_back

ud_ist:
    mov [rip + ud_rsp], rsp
    inc qword ptr [rip + ud_count]
    add qword ptr [rsp], 2
    iretq

soft_handler:
    inc qword ptr [rip + soft_count]
    add r15, rsp
    add r15, [rsp]
    iretq

.data
.balign 16
user_gdt:       .space 64
user_gdt_ptr:   .word 63
                .quad 0
kernel_rsp:     .quad 0
ud_rsp:         .quad 0
ud_count:       .quad 0
soft_count:     .quad 0
user_count:     .quad 0
.balign 16
user_stack:     .space 4096
user_stack_top:
"""

# L2 (nested paging on, L1 intercepting neither MSRs nor exceptions) takes #GP from RDMSR and
# WRMSR of unknown MSRs and #PF on a not-present page, through the IDT it shares with L1: L0
# decides each and delivers it into L2. Then VMMCALL back to L1.
L2_GUEST = r"""
.include "prelude.inc"
.include "svm.inc"

.equ NP_PAGE, 0x4000000

main:
    call svm_enable
    lea rdi, [rip + l2_entry]
    call vmcb_init
    call npt_init
    lea rdi, [rip + pd0]
    add rdi, NP_PAGE >> 18
    and qword ptr [rdi], -2
    mov rax, cr3
    mov cr3, rax
    xor r15, r15
    run_l2 1
    check_exit 0x81, "L2 ends with VMMCALL"
    check_eq [l2_faults], 300, "L2 saw every fault"
    print "checksum "
    mov rdi, [rip + l2_sum]
    call puthex64
    call newline
    ret

l2_entry:
    mov r14, 100
.Ll2:
    lea ecx, [r14 + 0x3000]
    expect_fault .Ll2_read
    rdmsr
.Ll2_read:
    call l2_fold
    expect_fault .Ll2_write
    wrmsr
.Ll2_write:
    call l2_fold
    lea rbx, [r14 * 8 + NP_PAGE]
    expect_fault .Ll2_pf
    mov rax, [rbx]
.Ll2_pf:
    call l2_fold
    dec r14
    jnz .Ll2
    vmmcall

l2_fold:
    mov rax, [rip + fault_vector]
    add [rip + l2_sum], rax
    rol qword ptr [rip + l2_sum], 5
    mov rax, [rip + fault_cr2]
    add [rip + l2_sum], rax
    add [rip + l2_sum], rsp
    inc qword ptr [rip + l2_faults]
    ret

.data
l2_sum:     .quad 0
l2_faults:  .quad 0
"""


# The APIC timer, periodic, 200 interrupts taken in HLT and between instructions of a loop.
TIMER_GUEST = r"""
.include "prelude.inc"

.equ APIC, 0xFEE00000

main:
    set_idt_handler 0x40, timer_handler
    mov rbx, APIC
    mov dword ptr [rbx + 0xF0], 0x1FF           # software enable
    mov dword ptr [rbx + 0x3E0], 0xB            # divide by 1
    mov dword ptr [rbx + 0x320], 0x20040        # vector 0x40, periodic
    mov dword ptr [rbx + 0x380], 20000
    xor r15, r15
    sti
.Lwait:
    add r15, 3
    rol r15, 1
    cmp qword ptr [rip + ticks], 100
    jb .Lwait
.Lhalt:
    hlt
    cmp qword ptr [rip + ticks], 200
    jb .Lhalt
    cli
    mov dword ptr [rbx + 0x320], 0x10000        # masked
    check_eq [ticks], 200, "200 timer interrupts"
    print "checksum "
    mov rdi, [rip + frames]
    call puthex64
    call newline
    ret

timer_handler:
    inc qword ptr [rip + ticks]
    push rax
    mov rax, [rsp + 8]
    add [rip + frames], rax
    mov rax, [rsp + 24]
    add [rip + frames], rax
    add [rip + frames], rsp
    mov rax, APIC
    mov dword ptr [rax + 0xB0], 0
    pop rax
    iretq

.data
ticks:  .quad 0
frames: .quad 0
"""


@dataclass
class Outcome:
    reason: str
    status: int
    output: bytes
    ram: bytes
    context: bytes
    tsc: int
    delivered: tuple[int, int]


def run(image: bytes, c_delivery: bool, nested: bool = False,
        tracer: Tracer | None = None) -> Outcome:
    ext = [SvmExtension("architectural")] if nested else []
    m = Machine(RAM, stdout=None, extensions=ext, tracer=tracer)
    m.fast_deliver.allowed = c_delivery
    m.load_multiboot(parse_image(image, "guest", RAM), "guest ")
    res = m.run(timeout=60)
    return Outcome(res.reason, res.status, bytes(m.serial.output), bytes(m.ram),
                   bytes(m.ctx.save().view)[:_NOISE_FROM], m.tsc, m.fast_deliver.delivered)


def same_with_and_without(image: bytes, nested: bool = False) -> Outcome:
    fast, slow = run(image, True, nested), run(image, False, nested)
    assert slow.delivered == (0, 0)
    assert fast.reason == "exit" and b"not ok" not in fast.output, fast.output
    for name in ("reason", "status", "output", "context", "tsc"):
        assert getattr(fast, name) == getattr(slow, name), name
    if fast.ram != slow.ram:
        first = next(i for i, (a, b) in enumerate(zip(fast.ram, slow.ram)) if a != b)
        pytest.fail(f"RAM differs first at {first:#x}")
    return fast


def _image(tmp_path, name: str, source: str) -> bytes:
    src = tmp_path / name
    src.write_text(source)
    return assemble_source(str(src))


def test_l1_exceptions_same_in_c_and_python(tmp_path):
    out = same_with_and_without(_image(tmp_path, "l1.S", L1_GUEST))
    assert b"checksum 0x" in out.output and b"not ok" not in out.output, out.output
    delivered, msr_gp = out.delivered
    # 300 unknown-MSR #GPs, 100 #PF, 100 #UD, 60 #DE, 100 CPL-3 #GPs; the first of a kind
    # after a Python entry, or on a page whose Accessed/Dirty bit is not set yet, is Python's.
    assert msr_gp >= 250, out.delivered
    assert delivered >= 550, out.delivered


def test_l2_exceptions_same_in_c_and_python(tmp_path):
    out = same_with_and_without(_image(tmp_path, "l2.S", L2_GUEST), nested=True)
    assert b"checksum 0x" in out.output and b"not ok" not in out.output, out.output
    assert out.delivered[0] >= 250, out.delivered       # 300 faults in L2, under nested paging


def test_a_trace_sees_every_exception(tmp_path):
    """The exc trace disarms the C paths: every delivery is Python's and is traced."""
    image = _image(tmp_path, "l1.S", L1_GUEST)
    text = io.StringIO()
    traced = run(image, True, tracer=Tracer(frozenset({"exc"}), text))
    plain = run(image, False)
    assert traced.delivered == (0, 0)
    assert traced.output == plain.output and traced.reason == plain.reason == "exit"
    lines = [line for line in text.getvalue().splitlines() if " delivered " in line]
    # 300 + 100 + 100 + 60 + 80 + 100 exceptions and software interrupts
    assert len(lines) == 740, len(lines)


def test_timer_interrupts_same_in_c_and_python(tmp_path):
    out = same_with_and_without(_image(tmp_path, "timer.S", TIMER_GUEST))
    assert b"checksum 0x" in out.output and b"not ok" not in out.output, out.output
    assert out.delivered[0] >= 150, out.delivered        # 200 interrupts


@pytest.mark.parametrize("guest", ["exceptions.S", "apic.S", "pic_ioapic.S", "hpet.S",
                                   "svm_interrupts.S"])
def test_bundled_guests_same_in_c_and_python(guest):
    out = same_with_and_without(assemble_source(f"guests/{guest}"), nested=guest.startswith("svm"))
    assert out.delivered[0] > 0, out.delivered
