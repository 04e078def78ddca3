"""Exception and interrupt delivery through the IDT, checked against the APM frame by frame.

Each test boots a tiny image (tests/tinyimage.py), lets a handler record what the CPU gave it in
registers and memory, exits through isa-debug-exit, then inspects registers and RAM directly.
"""
from __future__ import annotations

import struct

from tests import harness
import pytest
from unicorn.x86_const import (UC_X86_REG_CR2, UC_X86_REG_R8, UC_X86_REG_R9, UC_X86_REG_R10,
                               UC_X86_REG_R11, UC_X86_REG_R12, UC_X86_REG_R13, UC_X86_REG_R14,
                               UC_X86_REG_R15)

from emu.arch.bits import RFLAGS_RF
from emu.core.machine import STATUS_SHUTDOWN, Machine
from svm_ext.extension import SvmExtension
from tests.tinyimage import (asm64, BODY, IST1_STACK, KSTACK, RSP0_STACK, SEL_CODE64, SEL_DATA,
                             SEL_UCODE64, SEL_UDATA, gate64, handler, long_mode_image)

EXIT = "mov al, 0\n out 0xf4, al\n"
# A handler that records the whole frame: r8..r12 = the top five qwords, r13 = RSP at entry.
RECORD = f"""
    mov r13, rsp
    mov r8, [rsp]
    mov r9, [rsp+8]
    mov r10, [rsp+16]
    mov r11, [rsp+24]
    mov r12, [rsp+32]
    mov r14, cr2
    {EXIT}
"""


def boot(image, **run):
    b = harness.boot(image, **run)
    return b.machine, b.result


def after(src: str) -> int:
    """Address just past `src` assembled at BODY: where the next instruction starts."""
    return BODY + len(asm64(src, BODY))


def regs(m: Machine, *names: str) -> list[int]:
    table = dict(r8=UC_X86_REG_R8, r9=UC_X86_REG_R9, r10=UC_X86_REG_R10, r11=UC_X86_REG_R11,
                 r12=UC_X86_REG_R12, r13=UC_X86_REG_R13, r14=UC_X86_REG_R14, r15=UC_X86_REG_R15,
                 cr2=UC_X86_REG_CR2)
    return [m.uc.reg_read(table[n]) for n in names]


def test_page_fault_frame_error_code_and_cr2():
    body = """
        mov rbx, 0x40000000
        mov rax, [rbx]
    """
    img = long_mode_image(body, {14: gate64(handler(0))}, [RECORD])
    m, res = boot(img)
    assert res.reason == "exit" and res.status == 1
    err, rip, cs, rflags, rsp = regs(m, "r8", "r9", "r10", "r11", "r12")
    assert err == 0                               # not present, read, supervisor
    assert rip == after("mov rbx, 0x40000000")     # the faulting load, not the next instruction
    assert cs == SEL_CODE64
    assert rsp == KSTACK                          # no privilege change: old RSP pushed
    assert regs(m, "cr2")[0] == 0x40000000
    assert regs(m, "r13")[0] == KSTACK - 6 * 8    # SS RSP RFLAGS CS RIP error code


def test_write_to_read_only_page_sets_p_and_w():
    # Make the 2 MiB page at 0x600000 read-only, then write to it.
    body = """
        mov rax, 0x22000 + 3 * 8
        and qword ptr [rax], -3
        invlpg [0x600000]
        mov rbx, 0x600010
        mov qword ptr [rbx], 1
    """
    m, res = boot(long_mode_image(body, {14: gate64(handler(0))}, [RECORD]))
    assert res.reason == "exit"
    assert regs(m, "r8")[0] == 0b011              # P | W
    assert regs(m, "cr2")[0] == 0x600010


def test_non_canonical_access_is_gp_zero():
    body = """
        mov rbx, 0x8000000000000000
        mov rax, [rbx]
    """
    m, res = boot(long_mode_image(body, {13: gate64(handler(0))}, [RECORD]))
    assert res.reason == "exit"
    assert regs(m, "r8", "r9") == [0, after("mov rbx, 0x8000000000000000")]


def test_ud2_int3_and_software_interrupt_return_addresses():
    body = """
        ud2
        int3
        int 0x80
        mov r15, 0x600D
    """ + EXIT
    # #UD: fault, RIP = ud2; skip it. #BP and INT 0x80: trap, RIP = next instruction.
    handlers = [
        "mov rax, [rsp]\n mov [0x7000], rax\n add qword ptr [rsp], 2\n iretq",
        "mov rax, [rsp]\n mov [0x7008], rax\n iretq",
        "mov rax, [rsp]\n mov [0x7010], rax\n iretq",
    ]
    idt = {6: gate64(handler(0)), 3: gate64(handler(1)), 0x80: gate64(handler(2))}
    m, res = boot(long_mode_image(body, idt, handlers))
    assert res.reason == "exit"
    ud, bp, sw = struct.unpack_from("<QQQ", m.ram, 0x7000)
    assert (ud, bp, sw) == (BODY, BODY + 3, BODY + 5)
    assert regs(m, "r15")[0] == 0x600D


def test_ist_switches_stack():
    body = "mov rbx, 0x40000000\n mov rax, [rbx]"
    m, res = boot(long_mode_image(body, {14: gate64(handler(0), ist=1)}, [RECORD]))
    assert res.reason == "exit"
    assert regs(m, "r13")[0] == IST1_STACK - 6 * 8
    assert regs(m, "r12")[0] == KSTACK            # old RSP still pushed


def test_user_mode_interrupt_uses_rsp0_and_pushes_user_ss():
    # iretq to CPL3, which executes int 0x80 through a DPL3 gate.
    body = f"""
        push {SEL_UDATA}
        push 0x70000
        push 0x202
        push {SEL_UCODE64}
        mov rax, user
        push rax
        iretq
    user:
        int 0x80
    """
    m, res = boot(long_mode_image(body, {0x80: gate64(handler(0), dpl=3)}, [RECORD]))
    assert res.reason == "exit"
    rip, cs, rflags, rsp, ss = regs(m, "r8", "r9", "r10", "r11", "r12")
    assert cs == SEL_UCODE64 and ss == SEL_UDATA and rsp == 0x70000
    assert rflags & 0x200
    assert regs(m, "r13")[0] == RSP0_STACK - 5 * 8


def test_software_interrupt_through_dpl0_gate_from_user_is_gp():
    body = f"""
        push {SEL_UDATA}
        push 0x70000
        push 0x2
        push {SEL_UCODE64}
        mov rax, user
        push rax
        iretq
    user:
        int 0x81
    """
    idt = {0x81: gate64(handler(1)), 13: gate64(handler(0))}
    m, res = boot(long_mode_image(body, idt, [RECORD, "mov r15, 0xBAD\n" + EXIT]))
    assert res.reason == "exit"
    assert regs(m, "r15")[0] != 0xBAD
    assert regs(m, "r8")[0] == 0x81 * 8 + 2       # IDT bit, vector in the selector index


def test_fault_delivering_page_fault_becomes_double_fault():
    # #PF's gate is not present: #NP during delivery of #PF -> #DF with error code 0.
    body = "mov rbx, 0x40000000\n mov rax, [rbx]"
    idt = {14: gate64(handler(1), present=False), 8: gate64(handler(0), ist=1)}
    m, res = boot(long_mode_image(body, idt, [RECORD, "mov r15, 0xBAD\n" + EXIT]))
    assert res.reason == "exit"
    assert regs(m, "r8", "r9") == [0, after("mov rbx, 0x40000000")]
    assert regs(m, "cr2")[0] == 0x40000000        # CR2 was loaded when the #PF was recognised
    assert regs(m, "r13")[0] == IST1_STACK - 6 * 8


def test_no_idt_is_triple_fault_shutdown():
    body = "ud2"
    m, res = boot(long_mode_image(body, {}, idt_limit=0))
    assert res.reason == "shutdown"
    assert res.status == STATUS_SHUTDOWN
    assert "triple fault" in res.message


def test_reserved_pat_write_is_gp_and_leaves_pat():
    body = """
        mov ecx, 0x277
        mov eax, 0x02
        xor edx, edx
        wrmsr
        mov r15, 0xBAD
    """
    m, res = boot(long_mode_image(body, {13: gate64(handler(0))}, [RECORD]))
    assert res.reason == "exit"
    assert regs(m, "r8", "r9") == [0, after("mov ecx, 0x277\n mov eax, 0x02\n xor edx, edx")]
    assert regs(m, "r15")[0] != 0xBAD
    assert m.msrs.rdmsr(0x277) == 0x0007040600070406


@pytest.mark.parametrize("op", ["rdmsr", "wrmsr"])
def test_unknown_msr_is_gp(op):
    body = f"mov ecx, 0xC0011234\n xor eax, eax\n xor edx, edx\n {op}"
    m, res = boot(long_mode_image(body, {13: gate64(handler(0))}, [RECORD]))
    assert res.reason == "exit"
    assert regs(m, "r8", "r9") == [0, after("mov ecx, 0xC0011234\n xor eax, eax\n xor edx, edx")]


def test_hlt_with_interrupts_off_stops_cleanly():
    m, res = boot(long_mode_image("cli\n hlt", {}))
    assert res.reason == "halt" and res.status == 0
    assert "interrupts disabled" in res.message


def test_max_insns_stops_a_runaway_guest():
    m, res = boot(long_mode_image("spin: jmp spin", {}), max_insns=10_000)
    assert res.reason == "max-insns"


def test_timeout_stops_a_runaway_guest():
    m = Machine(128 << 20, stdout=None, extensions=[SvmExtension()])
    m.load_multiboot(long_mode_image("spin: jmp spin", {}), "test")
    res = m.run(timeout=0.3)
    assert res.reason == "timeout"


def test_fault_frames_carry_rf_and_traps_do_not():
    """A fault restarts its instruction, so the RFLAGS image pushed for it has RF set (kvm-unit-
    tests' idt_test checks #GP and #UD); a trap (#BP) pushes RF clear; the handler runs with RF
    clear either way."""
    body = """
        ud2
        int3
        mov r15, 0x600D
    """ + EXIT
    handlers = [
        "mov rax, [rsp+16]\n mov [0x7000], rax\n pushfq\n pop rax\n mov [0x7010], rax\n"
        " add qword ptr [rsp], 2\n btr qword ptr [rsp+16], 16\n iretq",
        "mov rax, [rsp+16]\n mov [0x7008], rax\n iretq",
    ]
    idt = {6: gate64(handler(0)), 3: gate64(handler(1))}
    m, res = boot(long_mode_image(body, idt, handlers))
    assert res.reason == "exit" and regs(m, "r15")[0] == 0x600D
    ud_image, bp_image, in_handler = struct.unpack_from("<QQQ", m.ram, 0x7000)
    assert ud_image & RFLAGS_RF
    assert not bp_image & RFLAGS_RF
    assert not in_handler & RFLAGS_RF


def test_fault_delivering_int_n_returns_to_the_int_instruction():
    """INT 0x21 through a not-present gate raises #NP (error: IDT, vector 0x21); the #NP frame
    holds the INT instruction's own address, so a handler that fixes the gate re-runs it
    (kvm-unit-tests eventinj "NP exception")."""
    body = """
        mov r15, 1
        int 0x21
        mov r15, 0x600D
    """ + EXIT
    handlers = ["mov rax, [rsp]\n mov [0x7000], rax\n mov rax, [rsp+8]\n mov [0x7008], rax\n"
                " add qword ptr [rsp+8], 2\n add rsp, 8\n iretq"]
    idt = {11: gate64(handler(0)), 0x21: gate64(handler(0), present=False)}
    m, res = boot(long_mode_image(body, idt, handlers))
    assert res.reason == "exit" and regs(m, "r15")[0] == 0x600D
    err, rip = struct.unpack_from("<QQ", m.ram, 0x7000)
    assert err == 0x21 * 8 + 2                                 # IDT bit, not EXT
    assert rip == after("mov r15, 1")


def test_iret_to_user_nulls_gs_and_keeps_its_base():
    """IRET to CPL 3 loads a null selector into a data segment register the new CPL may not
    use (GS holds the DPL-0 data selector here); on AMD parts the hidden base stays, and in
    64-bit mode GS keeps addressing with it (a kernel's per-CPU area)."""
    body = f"""
        mov ax, {SEL_DATA}
        mov gs, ax
        mov ecx, 0xC0000101
        mov eax, 0x123000
        xor edx, edx
        wrmsr
        push {SEL_UDATA}
        push 0x70000
        push 0x2
        push {SEL_UCODE64}
        mov rax, user
        push rax
        iretq
    user:
        int 0x80
    """
    record = f"""
        mov r8, gs
        mov ecx, 0xC0000101
        rdmsr
        shl rdx, 32
        or rax, rdx
        mov r9, rax
        {EXIT}
    """
    m, res = boot(long_mode_image(body, {0x80: gate64(handler(0), dpl=3)}, [record]))
    assert res.reason == "exit"
    assert regs(m, "r8", "r9") == [0, 0x123000]
