"""Virtual time (emu/core/timebase.py): the engine's count of instructions retired (patch 0005,
emu/engine/insn_counter.py), exact where a block is left early and at its deadline; the TSC a
guest reads is that count plus each exit's fixed cost plus RDTSC's step, the same through C
and Python, and the same on every run."""
from __future__ import annotations

import struct

import pytest
from unicorn import UC_ARCH_X86, UC_HOOK_CODE, UC_HOOK_INTR, UC_HOOK_MEM_READ, UC_MODE_64, Uc, UcError
from unicorn.x86_const import UC_X86_REG_RCX, UC_X86_REG_RIP

from emu.arch.vmcb import VMEXIT_CPUID, VMEXIT_CR0_WRITE
from emu.core.machine import TSC_STEP, Machine
from emu.core.timebase import EXIT_COSTS
from emu.engine import replay
from emu.engine.insn_counter import NO_DEADLINE, InsnCounter
from emu.engine.unicorn_build import loader
from emu.loader.asm import GUESTS_DIR, assemble_source
from emu.loader.multiboot import parse_image
from tests.harness import boot

counting = pytest.mark.skipif(not loader.has_fix("insn-counter"),
                              reason="the stock engine has no instruction count")
CODE = 0x1000


def engine(code: bytes) -> tuple[Uc, InsnCounter]:
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.mem_map(0, 0x10000)
    uc.mem_write(CODE, code)
    return uc, InsnCounter(uc)


# ---- the engine's count ------------------------------------------------------------------------
NOPS_INCS = b"\x90" * 5 + b"\x48\xff\xc0" * 3          # 8 instructions


@counting
def test_count_of_straight_line_code_and_of_a_count_bound():
    uc, c = engine(NOPS_INCS)
    uc.emu_start(CODE, CODE + len(NOPS_INCS))
    assert c.read() == 8
    uc, c = engine(NOPS_INCS)
    uc.emu_start(CODE, CODE + len(NOPS_INCS), count=5)      # Unicorn's own bound: a hook stops
    assert c.read() == 5 and uc.reg_read(UC_X86_REG_RIP) == CODE + 5


@counting
def test_a_faulting_instruction_and_those_after_it_do_not_count():
    # UD2 (raised by the translator, no state to restore) after 3 NOPs, in the middle of a block
    uc, c = engine(b"\x90" * 3 + b"\x0f\x0b" + b"\x90" * 4)
    uc.hook_add(UC_HOOK_INTR, lambda u, intno, d: u.emu_stop())
    with pytest.raises(UcError):
        uc.emu_start(CODE, CODE + 0x100)
    assert c.read() == 3 and uc.reg_read(UC_X86_REG_RIP) == CODE + 3


@counting
def test_a_load_stopped_by_its_hook_does_not_count():
    code = b"\x90" * 3 + b"\x48\x8b\x04\x25\x00\x30\x00\x00" + b"\x90" * 4   # mov rax, [0x3000]
    uc, c = engine(code)
    uc.hook_add(UC_HOOK_MEM_READ, lambda u, *a: u.emu_stop())
    uc.emu_start(CODE, CODE + len(code))
    assert c.read() == 3 and uc.reg_read(UC_X86_REG_RIP) == CODE + 3      # the load runs again


@counting
def test_a_hook_moving_rip_counts_only_what_ran():
    uc, c = engine(b"\x90" * 10)

    def jump(u, address, size, data):
        if address == CODE + 3:
            u.reg_write(UC_X86_REG_RIP, CODE + 8)
    uc.hook_add(UC_HOOK_CODE, jump)
    uc.emu_start(CODE, CODE + 10)
    assert c.read() == 5 and uc.reg_read(UC_X86_REG_RIP) == CODE + 10   # 0..2, then 8, 9


@counting
@pytest.mark.parametrize("deadline", [1, 2, 777, 1999])
def test_a_deadline_stops_exactly_there_inside_a_loop(deadline):
    loop = b"\x48\xff\xc9\x75\xfb"                         # dec rcx; jnz (2 instructions)
    uc, c = engine(loop)
    uc.reg_write(UC_X86_REG_RCX, 1000)
    c.set_deadline(deadline)
    uc.emu_start(CODE, CODE + len(loop))
    assert c.read() == deadline
    assert uc.reg_read(UC_X86_REG_RCX) == 1000 - (deadline + 1) // 2
    c.clear_deadline()
    uc.emu_start(uc.reg_read(UC_X86_REG_RIP), CODE + len(loop))
    assert c.read() == 2000 and uc.reg_read(UC_X86_REG_RCX) == 0


@counting
def test_deadline_at_the_count_stops_before_anything_runs():
    uc, c = engine(b"\x90" * 20)
    c.set_deadline(0)
    uc.emu_start(CODE, CODE + 20)
    assert c.read() == 0 and uc.reg_read(UC_X86_REG_RIP) == CODE
    assert NO_DEADLINE == (1 << 64) - 1


# ---- the TSC a guest reads ---------------------------------------------------------------------
DELTAS = r"""
main:
    rdtsc
    mov r8, rax
    nop
    nop
    nop
    rdtsc
    sub rax, r8
    mov [rip + plain], rax
    rdtsc
    mov r8, rax
    xor eax, eax
    cpuid
    rdtsc
    sub rax, r8
    mov [rip + with_cpuid], rax
    rdtsc
    mov r8, rax
    mov rax, 0
    mov cr8, rax
    rdtsc
    sub rax, r8
    mov [rip + with_cr8], rax
    check_eq [plain], {plain}, "RDTSC to RDTSC: 4 instructions and one read's step"
    check_eq [with_cpuid], {cpuid}, "a CPUID exit costs its fixed ticks, not an instruction"
    check_eq [with_cr8], {cr8}, "a MOV CR8 exit costs its fixed ticks"
    ret
.data
plain: .quad 0
with_cpuid: .quad 0
with_cr8: .quad 0
.text
"""


def _deltas_guest(tmp_path) -> bytes:
    cpuid, cr8 = EXIT_COSTS[VMEXIT_CPUID], EXIT_COSTS[VMEXIT_CR0_WRITE + 8]
    body = DELTAS.format(plain=4 + TSC_STEP, cpuid=2 + cpuid + TSC_STEP,
                         cr8=2 + cr8 + TSC_STEP)
    path = tmp_path / "deltas.S"
    path.write_text(f'.include "{GUESTS_DIR}/prelude.inc"\n' + body)
    return assemble_source(str(path))


def _run(image: bytes, fast: bool) -> tuple[str, int]:
    m = Machine(128 << 20, stdout=None)
    if m.replay is not None:
        m.replay.enabled = fast
    m.load_multiboot(parse_image(image, "guest", 128 << 20), "guest")
    m.run(timeout=60)
    return bytes(m.serial.output).decode(), m.tsc


@counting
def test_tsc_is_instructions_plus_exit_costs_plus_reads(tmp_path):
    out, _ = _run(_deltas_guest(tmp_path), True)
    assert "fail 0" in out and "pass 3" in out, out


@counting
@pytest.mark.skipif(not replay.available(), reason="the C engine was not built")
def test_tsc_same_through_c_and_python_and_on_every_run(tmp_path):
    image = _deltas_guest(tmp_path)
    runs = [_run(image, True), _run(image, True), _run(image, False)]
    assert runs[0] == runs[1] == runs[2]


# A periodic APIC timer interrupting a counting loop: where each interrupt lands depends only
# on virtual time, so the handler's log of the loop counter is the same on every run, with and
# without the C paths.
TIMER_LOG = r"""
main:
    mov r15, 0xfee00000
    mov dword ptr [r15 + 0xf0], 0x1ff
    set_idt_handler 0x41, handler
    mov dword ptr [r15 + 0x3e0], 0xb
    mov dword ptr [r15 + 0x320], 0x20041        # periodic
    mov dword ptr [r15 + 0x380], 5003
    xor rbx, rbx
    sti
.Lspin:
    inc rbx
    cmp qword ptr [rip + ticks], 40
    jb .Lspin
    cli
    mov dword ptr [r15 + 0x320], 0x10000         # masked
    check_eq [ticks], 40, "40 timer interrupts"
    xor rdi, rdi
    xor rcx, rcx
    lea rsi, [rip + log]
.Lsum:
    imul rdi, rdi, 31
    add rdi, [rsi + rcx * 8]
    inc rcx
    cmp rcx, 40
    jb .Lsum
    print "where the interrupts landed "
    call puthex64
    call newline
    ret
handler:
    mov rax, [rip + ticks]
    lea rcx, [rip + log]
    mov [rcx + rax * 8], rbx
    inc qword ptr [rip + ticks]
    mov dword ptr [r15 + 0xb0], 0
    iretq
.data
ticks: .quad 0
log: .space 8 * 48
.text
"""


def test_timer_interrupts_land_at_the_same_instructions_every_run(tmp_path):
    path = tmp_path / "timer.S"
    path.write_text(f'.include "{GUESTS_DIR}/prelude.inc"\n' + TIMER_LOG)
    image = assemble_source(str(path))
    logs = []
    for fast in (True, False, True):
        m = Machine(128 << 20, stdout=None)
        if m.replay is not None:
            m.replay.enabled = fast
        m.load_multiboot(parse_image(image, "guest", 128 << 20), "guest")
        m.run(timeout=60)
        out = bytes(m.serial.output).decode()
        assert "fail 0" in out and "where the interrupts landed 0x" in out, out
        logs.append((out, m.tsc))
    assert logs[0] == logs[1] == logs[2]
    if loader.has_fix("insn-counter"):
        # instructions are ticks: the loop counter grows between interrupts
        assert logs[0][1] > 40 * 5003
