"""IOIO intercepts through L1's IOPM, and precise stops at port I/O (emu/engine/io_trap.py).

Unicorn 2.1.4 never consults the IOPM and runs the rest of a translation block after an IN/OUT
hook; these tests pin down that svmemu nevertheless exits *before* an intercepted instruction,
with nothing performed, the exact EXITINFO1 encoding (APM 15.10.2), EXITINFO2 = NRIP = next RIP,
and no later instruction of the block executed."""
from __future__ import annotations

from tests import harness
import pytest
from unicorn.x86_const import (UC_X86_REG_DR0, UC_X86_REG_DR7, UC_X86_REG_R12, UC_X86_REG_R13,
                               UC_X86_REG_RBX, UC_X86_REG_RSI)

from emu.engine.hw_switch import HF_IOBPT
from emu.core.machine import STATUS_UNSUPPORTED, Machine
from svm_ext import ioio
from svm_ext.extension import SvmExtension
from emu.arch.vmcb import (INTERCEPT_IOIO_PROT, IOIO_A16, IOIO_A32, IOIO_A64, IOIO_REP, IOIO_STR,
                          IOIO_SZ8, IOIO_SZ16, IOIO_SZ32, IOIO_TYPE_IN, VMEXIT_IOIO)
from tests.nested_image import EXIT_PASS, L2_CODE, nested_image, vmcb12
from tests.tinyimage import asm64, long_mode_image

ONCE = "mov rax, rdi\n vmrun\n mov r14, rax\n" + EXIT_PASS


def iopm_with(*ports: int) -> bytes:
    m = bytearray(0x3000)
    for p in ports:
        m[p >> 3] |= 1 << (p & 7)
    return bytes(m)


def run_nested(l2: str, iopm: bytes, l1: str = ONCE, **fields):
    img = nested_image(l1, l2, vmcb12(misc1=INTERCEPT_IOIO_PROT, **fields), iopm=iopm)
    b = harness.boot(img)
    return b.machine, b.ext, b.result, b.vmcb12


def offset_of(prefix: str) -> int:
    return L2_CODE + len(asm64(prefix, L2_CODE)) if prefix else L2_CODE


@pytest.mark.parametrize("insn,port,want", [
    ("out dx, al", 0x80, IOIO_SZ8 | IOIO_A64),
    ("out dx, ax", 0x80, IOIO_SZ16 | IOIO_A64),
    ("out dx, eax", 0x80, IOIO_SZ32 | IOIO_A64),
    ("in al, dx", 0x80, IOIO_TYPE_IN | IOIO_SZ8 | IOIO_A64),
    ("in eax, dx", 0x80, IOIO_TYPE_IN | IOIO_SZ32 | IOIO_A64),
    ("out 0x70, al", 0x70, IOIO_SZ8 | IOIO_A64),
    ("in ax, 0x71", 0x71, IOIO_TYPE_IN | IOIO_SZ16 | IOIO_A64),
    ("outsb", 0x80, IOIO_STR | IOIO_SZ8 | IOIO_A64),
    ("rep outsw", 0x80, IOIO_STR | IOIO_REP | IOIO_SZ16 | IOIO_A64),
    (".byte 0x67, 0x6f", 0x80, IOIO_STR | IOIO_SZ32 | IOIO_A32),
])
def test_intercepted_access_exits_before_the_instruction(insn, port, want):
    before = "mov dx, 0x80\n mov rax, 0x1122334455667788\n mov rsi, 0x600000\n mov rcx, 3\n mov rbx, 0"
    l2 = f"{before}\n {insn}\n mov rbx, 0xbad\n hlt"
    m, ext, res, vm = run_nested(l2, iopm_with(0x70, 0x71, 0x80))
    assert res.reason == "exit", res
    at = offset_of(before)
    length = len(asm64(insn, at))
    assert vm.exitcode == VMEXIT_IOIO
    assert vm.exitinfo1 == want | (port << 16)
    assert vm.exitinfo2 == at + length and vm.nrip == at + length
    assert vm.save.rip == at                                  # at the IN/OUT, not after it
    assert vm.save.rax == 0x1122334455667788                  # IN wrote nothing
    assert m.uc.reg_read(UC_X86_REG_RSI) == 0x600000          # OUTS did not advance
    assert m.uc.reg_read(UC_X86_REG_RBX) == 0                 # nothing after it ran
    # The debug registers borrowed for the stop are back.
    assert vm.save.dr7 == 0x400
    assert m.uc.reg_read(UC_X86_REG_DR0) == 0


def test_a_port_l1_does_not_mark_reaches_the_device():
    """Port 0xf4 is isa-debug-exit: not in the IOPM, so L2's write ends the run."""
    l2 = "mov al, 5\n out 0xf4, al\n mov rbx, 0xbad\n hlt"
    m, ext, res, vm = run_nested(l2, iopm_with(0x80))
    assert res.reason == "exit" and res.status == (5 << 1) | 1
    assert ext.state.in_l2
    assert m.uc.reg_read(UC_X86_REG_RBX) != 0xbad


def test_iopm_bits_of_every_byte_accessed_count():
    """A 4-byte access at 0x7e touches 0x7e..0x81: the mark on 0x81 alone intercepts it."""
    l2 = "mov dx, 0x7e\n in eax, dx\n hlt"
    m, ext, res, vm = run_nested(l2, iopm_with(0x81))
    assert vm.exitcode == VMEXIT_IOIO and vm.exitinfo1 >> 16 == 0x7e


def test_access_past_port_ffff_uses_the_iopm_third_page():
    l2 = "mov dx, 0xffff\n out dx, ax\n hlt"
    m, ext, res, vm = run_nested(l2, iopm_with(0x10000))
    assert vm.exitcode == VMEXIT_IOIO and vm.exitinfo1 >> 16 == 0xffff


def test_without_ioio_prot_the_iopm_is_ignored():
    l2 = "mov al, 3\n out 0xf4, al\n hlt"
    img = nested_image(ONCE, l2, vmcb12(misc1=0), iopm=b"\xff" * 0x3000)
    m = Machine(128 << 20, stdout=None, extensions=[SvmExtension()])
    m.load_multiboot(img, "test")
    res = m.run(timeout=20)
    assert res.reason == "exit" and res.status == 7


def test_l1_handles_exits_and_resumes_l2_many_times():
    """A loop of 50 intercepted OUTs, each resumed by L1 at NRIP: exact count, no drift."""
    l1 = """
again:
    mov rax, rdi
    vmrun
    inc r12
    mov rax, [rdi + 0xC8]
    mov [rdi + 0x578], rax
    cmp qword ptr [rdi + 0x70], 0x7b
    je again
""" + EXIT_PASS
    l2 = "mov ecx, 50\n mov dx, 0x80\nl: out dx, al\n inc r13\n loop l\n vmmcall"
    m, ext, res, vm = run_nested(l2, iopm_with(0x80), l1=l1)
    assert res.reason == "exit", res
    assert m.uc.reg_read(UC_X86_REG_R12) == 51 and m.uc.reg_read(UC_X86_REG_R13) == 50


def test_ins_from_an_intercepted_port_stops_clearly():
    l2 = "mov dx, 0x80\n mov rdi, 0x600000\n insb\n hlt"
    m, ext, res, vm = run_nested(l2, iopm_with(0x80))
    assert res.status == STATUS_UNSUPPORTED and "INS" in res.message


def test_isa_debug_exit_stops_before_the_next_instruction():
    """Without the trap, the rest of the translation block ran after the OUT."""
    body = "mov rbx, 0\n mov al, 0\n out 0xf4, al\n mov rbx, 0xbad\n mov rax, 1\n hlt"
    m = Machine(128 << 20, stdout=None)
    m.load_multiboot(long_mode_image(body), "test")
    res = m.run(timeout=20)
    assert res.reason == "exit" and res.status == 1
    assert m.uc.reg_read(UC_X86_REG_RBX) == 0
    assert m.uc.reg_read(UC_X86_REG_DR7) & 0xFF == 0


def test_guest_dr7_writes_keep_the_trap_and_take_effect():
    """MOV to DR7 is intercepted by L0 and run alone; the value lands, and I/O traps still work
    afterwards (Unicorn recomputes the flag they need from DR7)."""
    body = ("mov rax, 0x401\n mov dr7, rax\n mov rax, dr7\n mov r12, rax\n"
            "mov al, 0\n out 0xf4, al\n mov rbx, 0xbad\n hlt")
    m = Machine(128 << 20, stdout=None)
    m.load_multiboot(long_mode_image(body), "test")
    res = m.run(timeout=20)
    assert res.reason == "exit", res
    assert m.uc.reg_read(UC_X86_REG_R12) == 0x401
    assert m.uc.reg_read(UC_X86_REG_RBX) != 0xbad
    assert m.ctx.save().hflags & HF_IOBPT


def test_decode_prefixes():
    d = ioio.decode(bytes.fromhex("f3 66 67 6f".replace(" ", "")), 32)
    assert d == ioio.IoInstruction(4, False, True, True, 16, ioio.SEG_DS)
    d = ioio.decode(bytes.fromhex("2e 6e".replace(" ", "")), 16)
    assert d.seg == 1 and d.addr_size == 16 and d.length == 2
    d = ioio.decode(bytes.fromhex("f3 ec".replace(" ", "")), 64)
    assert not d.rep and d.is_in and d.length == 2          # REP is ignored on IN/OUT
    assert ioio.decode(b"\x90", 64) is None
    assert d.exitinfo1(0x3f8, 1) & (IOIO_A16 | IOIO_A32 | IOIO_A64) == IOIO_A64


def test_svm_ioio_guest_exit_log_matches_the_apm():
    """The bundled guest's own log of every #VMEXIT (guests/svm.inc), read from RAM."""
    import struct
    from tests.test_guests import boot
    m, ext, res, out = boot("svm_ioio")
    assert res.reason == "exit" and res.status == 1, out
    count = struct.unpack_from("<Q", m.ram, 0x8FFFF8)[0]
    log = {}
    for i in range(count):
        code, info1, info2, intinfo, nrip, rip, tag, _ = struct.unpack_from("<8Q", m.ram,
                                                                            0x900000 + 64 * i)
        log[tag] = (code, info1, info2, nrip, rip)
    a64 = IOIO_A64
    assert log[1][:2] == (VMEXIT_IOIO, 0x00800010 | a64)
    assert log[2][:2] == (VMEXIT_IOIO, 0x00710021 | a64)
    assert log[4][:2] == (VMEXIT_IOIO, 0x0080001C | a64)
    assert log[5][:2] == (VMEXIT_IOIO, 0xFFFF0020 | a64)
    for tag in (1, 2, 3, 4, 5):
        code, info1, info2, nrip, rip = log[tag]
        assert nrip == info2 > rip              # EXITINFO2 and NRIP: the next instruction
    assert [log[t][:2] for t in (7, 8, 10, 11)] == [(0x7C, 0), (0x7C, 1), (0x7C, 0), (0x7C, 0)]
    assert log[6][0] == log[9][0] == log[12][0] == 0x81
    assert ext.state.stats["vmexit"] == count


def test_intercepted_out_after_a_cr8_write_exits_at_the_right_rip():
    """MOV CR8 in L2 (the APIC's TPR, emulated by L0) must not leave later I/O hooks with a
    stale RIP: the OUT after it exits at the OUT, not at the MOV CR8."""
    before = "xor eax, eax\n mov cr8, rax\n nop\n nop\n mov dx, 0x80"
    l2 = f"{before}\n out dx, al\n hlt"
    m, ext, res, vm = run_nested(l2, iopm_with(0x80))
    assert res.reason == "exit", res
    at = offset_of(before)
    assert vm.exitcode == VMEXIT_IOIO and vm.save.rip == at and vm.exitinfo2 == at + 1
