"""SYSCALL, which Unicorn leaves to a hook (emu/core/syscall.py): the registers it loads in long
mode, and #UD with EFER.SCE clear."""
from __future__ import annotations

from unicorn.x86_const import (UC_X86_REG_CS, UC_X86_REG_R8, UC_X86_REG_R9, UC_X86_REG_R10,
                               UC_X86_REG_R15, UC_X86_REG_SS)

from tests import harness
from tests.tinyimage import BODY, SEL_CODE64, asm64, gate64, handler, long_mode_image

EXIT = "mov al, 0\n out 0xf4, al\n"
ENABLE = """
    mov ecx, 0xC0000080
    rdmsr
    or eax, 1
    wrmsr
"""
SETUP = f"""
    mov ecx, 0xC0000081
    xor eax, eax
    mov edx, {SEL_CODE64}
    wrmsr
    mov ecx, 0xC0000082
    mov rax, offset_target
    mov rdx, rax
    shr rdx, 32
    wrmsr
    mov ecx, 0xC0000084
    mov eax, 0x4700
    xor edx, edx
    wrmsr
    push 0x8d7
    popfq
"""


def _body(enable: bool) -> tuple[str, int]:
    pre = (ENABLE if enable else "") + SETUP.replace("offset_target", "0")
    target = BODY + len(asm64(pre + "syscall\n mov r15, 1\n" + EXIT, BODY))
    pre = (ENABLE if enable else "") + SETUP.replace("offset_target", hex(target))
    body = pre + "syscall\n mov r15, 1\n" + EXIT + """
        pushfq
        pop r8
        mov r9, rcx
        mov r10, r11
        mov r15, 2
    """ + EXIT
    assert BODY + len(asm64(pre + "syscall\n mov r15, 1\n" + EXIT, BODY)) == target
    return body, BODY + len(asm64(pre + "syscall\n", BODY))


def test_syscall_in_long_mode_loads_lstar_rcx_r11_and_masks_rflags():
    body, after = _body(enable=True)
    b = harness.boot(long_mode_image(body, {}, []), timeout=10)
    uc = b.machine.uc
    assert b.result.reason == "exit" and uc.reg_read(UC_X86_REG_R15) == 2
    rflags, rcx, r11 = (uc.reg_read(r) for r in (UC_X86_REG_R8, UC_X86_REG_R9, UC_X86_REG_R10))
    assert rcx == after                                   # the instruction after SYSCALL
    assert r11 & 0xFFF == 0x8d7                           # RFLAGS before, as pushed
    assert rflags & 0x4700 == 0 and rflags & 0x8d7 & ~0x4700 == 0x8d7 & ~0x4700 & 0xFFF
    assert uc.reg_read(UC_X86_REG_CS) == SEL_CODE64 and uc.reg_read(UC_X86_REG_SS) == SEL_CODE64 + 8


def test_syscall_without_efer_sce_is_ud_at_the_instruction():
    body, after = _body(enable=False)
    h = ["mov r9, [rsp]\n mov r15, 3\n" + EXIT]
    b = harness.boot(long_mode_image(body, {6: gate64(handler(0))}, h), timeout=10)
    uc = b.machine.uc
    assert uc.reg_read(UC_X86_REG_R15) == 3
    assert uc.reg_read(UC_X86_REG_R9) == after - 2        # #UD is a fault: RIP of SYSCALL
