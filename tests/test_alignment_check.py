"""Alignment checking (AMD APM vol. 2, 8.2.19): with CR0.AM=1, RFLAGS.AC=1 and CPL 3, a data
reference not aligned to its size is #AC with error code 0, a fault (RIP = the instruction,
memory unchanged). Any of the three conditions off, or an aligned reference: no fault.

Each guest (tests/tinyimage.py) sets CR0.AM as asked, IRETs to CPL 3 with the asked RFLAGS,
and makes one reference. #AC lands in handler 0 (it records the frame: r8 = error code,
r9 = RIP, r10 = CS); a user program that completes calls INT 0x80 into handler 1, which
leaves r15 = 0x600D.
"""
from __future__ import annotations

import pytest
from unicorn.x86_const import (UC_X86_REG_R8, UC_X86_REG_R9, UC_X86_REG_R10, UC_X86_REG_R15)

from emu.arch.bits import CR0_AM, CR4_OSFXSR, RFLAGS_AC
from emu.arch.vmcb import VMEXIT_EXCP0, Vmcb
from emu.core.machine import Machine
from svm_ext.extension import SvmExtension
from tests import harness
from tests.nested_image import EXIT_PASS, VMCB12, nested_image, vmcb12
from tests.tinyimage import SEL_UCODE64, SEL_UDATA, asm64, gate64, handler, long_mode_image

AC = 17
DATA = 0x70000           # user data, in the identity-mapped user-accessible first 2 MiB
USER_STACK = 0x78000
EXIT = "mov al, 0\n out 0xf4, al\n"
RECORD = f"mov r8, [rsp]\n mov r9, [rsp+8]\n mov r10, [rsp+16]\n {EXIT}"
DONE = f"mov r15, 0x600D\n {EXIT}"


def to_user(user: str, *, am: bool = True, ac: bool = True, rsp: int = USER_STACK) -> str:
    """Kernel code at BODY: set or clear CR0.AM, enable SSE, reset the x87 unit (all its
    exceptions masked), then IRET to `user` at CPL 3."""
    rflags = 0x2 | (RFLAGS_AC if ac else 0)
    cr0 = f"{'bts' if am else 'btr'} rax, {CR0_AM.bit_length() - 1}"
    return f"""
        mov rax, cr4
        or rax, {CR4_OSFXSR:#x}
        mov cr4, rax
        fninit
        mov rax, cr0
        {cr0}
        mov cr0, rax
        mov qword ptr [{DATA:#x}], 0
        mov qword ptr [{DATA + 8:#x}], 0
        push {SEL_UDATA}
        push {rsp:#x}
        push {rflags:#x}
        push {SEL_UCODE64}
        mov rax, user
        push rax
        iretq
    user:
        {user}
        int 0x80
    """


def boot(body: str) -> Machine:
    idt = {AC: gate64(handler(0)), 0x80: gate64(handler(1), dpl=3)}
    b = harness.boot(long_mode_image(body, idt, [RECORD, DONE]), nested=False)
    assert b.result.reason == "exit", b.result
    return b.machine


def faulted(m: Machine) -> bool:
    return m.uc.reg_read(UC_X86_REG_R15) != 0x600D


REFERENCES = {
    # name: (user code making one reference, misaligned?)
    "store-qword": (f"mov rbx, {DATA + 4:#x}\n mov qword ptr [rbx], 1", True),
    "load-dword": (f"mov rbx, {DATA + 2:#x}\n mov eax, dword ptr [rbx]", True),
    "store-word": (f"mov rbx, {DATA + 1:#x}\n mov word ptr [rbx], 1", True),
    "locked-add": (f"mov rbx, {DATA + 4:#x}\n lock add qword ptr [rbx], 1", True),
    "aligned-qword": (f"mov rbx, {DATA + 8:#x}\n mov qword ptr [rbx], 1", False),
    "byte": (f"mov rbx, {DATA + 3:#x}\n mov byte ptr [rbx], 1", False),
    # x87, MMX/SSE and helper-made references, each against its data type's alignment
    "x87-single": (f"mov rbx, {DATA + 2:#x}\n fld dword ptr [rbx]", True),
    "x87-double": (f"mov rbx, {DATA + 4:#x}\n fld qword ptr [rbx]", True),
    "x87-control-word": (f"mov rbx, {DATA + 1:#x}\n fnstcw word ptr [rbx]", True),
    "x87-extended": (f"mov rbx, {DATA + 4:#x}\n fld tbyte ptr [rbx]", True),
    "x87-extended-aligned": (f"mov rbx, {DATA + 8:#x}\n fld tbyte ptr [rbx]", False),
    "x87-environment": (f"mov rbx, {DATA + 2:#x}\n fnstenv [rbx]", True),
    "x87-environment-dword": (f"mov rbx, {DATA + 4:#x}\n fnstenv [rbx]", False),
    "mmx-movq": (f"mov rbx, {DATA + 4:#x}\n movq qword ptr [rbx], mm0", True),
    "sse-movlps": (f"mov rbx, {DATA + 4:#x}\n movlps qword ptr [rbx], xmm0", True),
    "sse-movss-aligned": (f"mov rbx, {DATA + 4:#x}\n movss dword ptr [rbx], xmm0", False),
    "ldmxcsr": (f"mov rbx, {DATA + 2:#x}\n ldmxcsr dword ptr [rbx]", True),
    "cmpxchg8b": (f"mov rbx, {DATA + 4:#x}\n cmpxchg8b qword ptr [rbx]", True),
    "cmpxchg8b-aligned": (f"mov rbx, {DATA + 8:#x}\n cmpxchg8b qword ptr [rbx]", False),
}


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_user_reference_with_am_and_ac(name):
    user, misaligned = REFERENCES[name]
    body = to_user(user)
    m = boot(body)
    assert faulted(m) == misaligned
    if misaligned:
        err, rip, cs = (m.uc.reg_read(r) for r in (UC_X86_REG_R8, UC_X86_REG_R9, UC_X86_REG_R10))
        assert (err, cs) == (0, SEL_UCODE64)
        # a fault: RIP is the reference itself, the user program's second instruction
        ref = asm64(user.splitlines()[1], 0)
        assert bytes(m.mem.view[rip:rip + len(ref)]) == ref
        assert m.mem.read_u64(DATA) == 0 and m.mem.read_u64(DATA + 8) == 0   # nothing written


def test_misaligned_push_faults():
    """Stack references are data references too: a push through a misaligned RSP is #AC."""
    m = boot(to_user("push rax", rsp=USER_STACK + 4))
    assert faulted(m)
    assert m.uc.reg_read(UC_X86_REG_R8) == 0


def test_misaligned_far_return_faults():
    """A far RET's pops are stack references at CPL 3: through a misaligned RSP, #AC(0)."""
    m = boot(to_user("retfq", rsp=USER_STACK + 4))
    assert faulted(m)
    assert m.uc.reg_read(UC_X86_REG_R8) == 0
    assert bytes(m.mem.view[m.uc.reg_read(UC_X86_REG_R9):][:2]) == asm64("retfq", 0)


@pytest.mark.parametrize("am,ac", [(True, False), (False, True), (False, False)])
def test_no_check_unless_am_and_ac(am, ac):
    m = boot(to_user(f"mov rbx, {DATA + 4:#x}\n mov qword ptr [rbx], 1", am=am, ac=ac))
    assert not faulted(m)
    assert m.mem.read_u64(DATA + 4) == 1


def test_no_check_at_cpl0():
    """AM and AC on, but CPL 0: the misaligned store completes."""
    body = f"""
        mov rax, cr0
        or rax, {CR0_AM:#x}
        mov cr0, rax
        pushfq
        or qword ptr [rsp], {RFLAGS_AC:#x}
        popfq
        mov rbx, {DATA + 4:#x}
        mov qword ptr [rbx], 5
        int 0x80
    """
    m = boot(body)
    assert not faulted(m)
    assert m.mem.read_u64(DATA + 4) == 5


def test_ac_toggled_by_popf_in_the_same_code_retranslates():
    """The same misaligned store, first with AC clear, then after POPF sets AC: only the
    second faults (the check follows RFLAGS.AC without a stale translation)."""
    user = f"""
        mov rbx, {DATA + 4:#x}
        mov rcx, 2
    again:
        mov qword ptr [rbx], rcx
        dec rcx
        jz done
        pushfq
        or qword ptr [rsp], {RFLAGS_AC:#x}
        popfq
        jmp again
    done:
    """
    m = boot(to_user(user, ac=False))
    assert faulted(m)
    assert m.mem.read_u64(DATA + 4) == 2      # the first store went through


def test_intercepted_ac_is_a_vmexit_from_l2():
    """L1 intercepts exception 17: L2's misaligned user store is #VMEXIT(0x51), EXITINFO1 =
    the error code 0, L2's CPL 3 and the faulting RIP in vmcb12, memory unchanged."""
    l2 = f"""
        mov rax, cr0
        or rax, {CR0_AM:#x}
        mov cr0, rax
        push {SEL_UDATA}
        push {USER_STACK:#x}
        push {0x2 | RFLAGS_AC:#x}
        push {SEL_UCODE64}
        lea rax, [rip + user]
        push rax
        iretq
    user:
        mov rbx, {DATA + 4:#x}
        mov qword ptr [rbx], 1
        ud2
    """
    img = nested_image("mov rax, rdi\n vmrun\n" + EXIT_PASS, l2, vmcb12(exceptions=1 << AC))
    m = Machine(64 << 20, stdout=None, extensions=[SvmExtension()])
    m.load_multiboot(img, "ac")
    res = m.run(timeout=20)
    assert res.reason == "exit", res
    vm = Vmcb(m.mem.view, VMCB12)
    assert vm.exitcode == VMEXIT_EXCP0 + AC, hex(vm.exitcode)
    assert vm.exitinfo1 == 0
    assert vm.save.cpl == 3
    assert m.mem.read_u64(DATA + 4) == 0
    code = bytes(m.mem.view[vm.save.rip:vm.save.rip + 3])
    assert code == asm64("mov qword ptr [rbx], 1", 0)[:3]
