"""External interrupts into L1 and around L2: interrupt shadow, POPF, HLT, GIF, the INTR and
VINTR intercepts and V_IRQ, checked by guests and by the VMCB/APIC state they leave."""
from __future__ import annotations

import struct
from pathlib import Path

import pytest

from emu.core.timebase import IOIO_COST
from tests import harness
from emu.loader.asm import GUESTS_DIR
from emu.core.machine import Machine
from svm_ext.extension import SvmExtension
from emu.arch.vmcb import VMEXIT_INTR, VMEXIT_NMI, VMEXIT_VINTR, VMEXIT_VMMCALL, Vmcb
from tests.conftest import parse_tap

EXIT_LOG, EXIT_LOG_COUNT, VMCB = 0x900000, 0x8FFFF8, 0x800000


def boot(path: str, nested: bool = True):
    b = harness.boot(path, nested=nested, cmdline=path, timeout=60)
    return b.machine, b.ext, b.result, b.serial


def guest(tmp_path: Path, body: str) -> str:
    path = tmp_path / "g.S"
    path.write_text(f'.include "{GUESTS_DIR}/prelude.inc"\n' + body)
    return str(path)


def test_svm_interrupts_guest_and_the_exits_it_saw():
    m, ext, res, out = boot(str(GUESTS_DIR / "svm_interrupts.S"))
    checks = parse_tap(out)
    assert res.reason == "exit" and res.status == 1, out
    assert len(checks) == 35 and all(c.ok for c in checks.values()), out
    count = struct.unpack_from("<Q", m.ram, EXIT_LOG_COUNT)[0]
    records = [struct.unpack_from("<8Q", m.ram, EXIT_LOG + 64 * i) for i in range(count)]
    by_tag = {r[6]: r for r in records}
    assert [by_tag[t][0] for t in range(1, 11)] == [
        VMEXIT_INTR, VMEXIT_VMMCALL, VMEXIT_VMMCALL, VMEXIT_VMMCALL, VMEXIT_VINTR,
        VMEXIT_VMMCALL, VMEXIT_VMMCALL, VMEXIT_NMI, VMEXIT_VMMCALL, VMEXIT_VMMCALL]
    intr = by_tag[1]
    assert intr[1] == intr[2] == intr[3] == 0          # EXITINFO1/2, EXITINTINFO
    assert by_tag[8][3] == 0                          # NMI exit: nothing was being delivered
    vm = Vmcb(m.mem.view, VMCB)
    assert vm.v_irq == 0 and vm.v_tpr == 3            # L2's MOV CR8 under V_INTR_MASKING
    assert vm.interrupt_shadow == 0
    assert ext.state.gif and not ext.state.in_l2
    assert m.apic.irr == 0 and m.apic.isr == 0
    assert ext.state.stats["vmrun"] == 10
    assert m.apic.tpr == 0
    assert not m.apic.nmi_pending


SHADOW = r'''
.equ APIC, 0xfee00000
main:
    mov r15, APIC
    mov dword ptr [r15 + 0xf0], 0x1ff
    set_idt_handler 0x40, handler
    cli
    mov dword ptr [r15 + 0x300], 0x44040
    xor eax, eax
    sti
    mov eax, 1
    mov eax, 2
    cli
    check_eq [seen], 1, "taken after the one instruction in the STI shadow"
    mov dword ptr [r15 + 0x300], 0x44040
    mov eax, 5
    push 0x202
    popfq
    mov eax, 6
    cli
    check_eq [seen], 5, "POPF setting IF: taken at the next boundary"
    ret
handler:
    mov [rip + seen], rax
    mov dword ptr [r15 + 0xb0], 0
    iretq
.bss
seen: .space 8
.text
'''


def test_interrupt_shadow_and_popf(tmp_path):
    m, ext, res, out = boot(guest(tmp_path, SHADOW), nested=False)
    checks = parse_tap(out)
    assert len(checks) == 2 and all(c.ok for c in checks.values()), out


HALT_IF0 = r'''
main:
    mov r15, 0xfee00000
    mov dword ptr [r15 + 0xf0], 0x1ff
    mov dword ptr [r15 + 0x3e0], 0xb
    mov dword ptr [r15 + 0x320], 0x40
    mov dword ptr [r15 + 0x380], 1000
    cli
    hlt
    ret
'''


def test_hlt_with_interrupts_disabled_stops_even_with_a_timer(tmp_path):
    m, ext, res, out = boot(guest(tmp_path, HALT_IF0), nested=False)
    assert res.reason == "halt" and "interrupts disabled" in res.message
    assert m.apic.irr == 1 << 0x40          # the timer did fire into IRR at its deadline
    assert m.tsc >= 1000


HALT_WAKE = r'''
main:
    mov r15, 0xfee00000
    mov dword ptr [r15 + 0xf0], 0x1ff
    set_idt_handler 0x41, handler
    mov dword ptr [r15 + 0x3e0], 0xb
    mov dword ptr [r15 + 0x320], 0x41
    mov dword ptr [r15 + 0x380], 123456
    sti
    hlt
    cli
    check_eq [count], 1, "HLT woke on the timer"
    ret
handler:
    inc qword ptr [rip + count]
    mov dword ptr [r15 + 0xb0], 0
    iretq
.bss
count: .space 8
.text
'''


def test_hlt_jumps_virtual_time_to_the_deadline(tmp_path):
    m, ext, res, out = boot(guest(tmp_path, HALT_WAKE), nested=False)
    assert parse_tap(out)["HLT woke on the timer"].ok, out
    # the timer was started at some TSC t0 < 123456 ticks ago... exactly at its deadline; after
    # it only the guest's last instructions and its port writes (the TAP lines, one OUT a
    # character at IOIO_COST ticks each: emu/core/timebase.py) move time:
    start = m.apic.timer_base
    after = 10000 + IOIO_COST * 2 * len(out)
    assert m.apic.deadline() is None and start + 123456 <= m.tsc < start + 123456 + after


# x2APIC: ICR (MSR 0x830) self-NMI with IF=0. An NMI ignores IF, so it is taken before the
# instruction after the WRMSR, not at some later exit (kvm-unit-tests svm "nmi").
NMI_X2APIC = r'''
main:
    set_idt_handler 2, nmi_handler
    mov ecx, 0x1b
    rdmsr
    or eax, 0xc00
    wrmsr
    mov ecx, 0x80f
    mov eax, 0x1ff
    xor edx, edx
    wrmsr
    cli
    mov ecx, 0x830
    mov eax, 0x44400
    wrmsr
    mov rax, [rip + seen]
    mov [rip + seen_next], rax
    check_eq [seen_next], 1, "self-NMI taken before the next instruction with IF=0"
    ret
nmi_handler:
    mov qword ptr [rip + seen], 1
    iretq
.bss
seen: .space 8
seen_next: .space 8
.text
'''


def test_x2apic_self_nmi_is_taken_at_once_with_if_clear(tmp_path):
    m, ext, res, out = boot(guest(tmp_path, NMI_X2APIC), nested=False)
    checks = parse_tap(out)
    assert len(checks) == 1 and all(c.ok for c in checks.values()), out
    assert not m.apic.nmi_pending


def test_intr_exit_under_v_intr_masking_while_l2_has_if_clear():
    """L1 runs L2 with the host's IF=1 (CLGI; STI; VMRUN), V_INTR_MASKING=1 and the INTR
    intercept; L2 (IF=0) arms the x2APIC timer and spins. The timer interrupt is masked by the
    host's IF, not L2's (APM vol. 2, 15.21.1), so it causes #VMEXIT(INTR) and stays pending
    in IRR (kvm-unit-tests svm "interrupt", "intercepted interrupt while running guest")."""
    from unicorn.x86_const import UC_X86_REG_R13
    from emu.arch.vmcb import INTERCEPT_INTR
    from tests.nested_image import EXIT_PASS, VMCB12, nested_image, vmcb12
    l1 = """
        mov ecx, 0x1b
        rdmsr
        or eax, 0xc00
        wrmsr
        mov ecx, 0x80f
        mov eax, 0x1ff
        xor edx, edx
        wrmsr
        clgi
        sti
        mov rax, rdi
        vmrun
        cli
        stgi
    """ + EXIT_PASS
    l2 = """
        mov ecx, 0x83e
        mov eax, 0xb
        xor edx, edx
        wrmsr
        mov ecx, 0x832
        mov eax, 0x40
        wrmsr
        mov ecx, 0x838
        mov eax, 1000
        wrmsr
    spin:
        inc r13
        cmp r13, 100000000
        jb spin
        vmmcall
    """
    v_intr_masking = 1 << 24
    img = nested_image(l1, l2, vmcb12(misc1=INTERCEPT_INTR, vintr=v_intr_masking))
    m = Machine(128 << 20, stdout=None, extensions=[SvmExtension()])
    m.load_multiboot(img, "intr")
    res = m.run(timeout=60)
    assert res.reason == "exit", res
    vm = Vmcb(m.mem.view, VMCB12)
    assert vm.exitcode == VMEXIT_INTR, hex(vm.exitcode)
    assert m.uc.reg_read(UC_X86_REG_R13) < 100000000     # it did not run to its VMMCALL
    assert m.apic.irr == 1 << 0x40                       # still pending for L1


@pytest.mark.parametrize("shadow", [0, 1])
def test_interrupt_shadow_from_vmcb12_holds_a_virtual_interrupt_one_instruction(shadow):
    """VMRUN with vmcb12's INTERRUPT_SHADOW set: a pending V_IRQ (IF=1, V_IGN_TPR) is not
    taken before L2's first instruction, so the VINTR intercept exits with RIP past it; without
    the shadow it exits at once (APM vol. 2, 15.21.5; kvm-unit-tests svm
    virq_inject_within_shadow)."""
    from emu.arch.vmcb import INTERCEPT_VINTR
    from tests.nested_image import EXIT_PASS, L2_CODE, VMCB12, nested_image, vmcb12
    l1 = """
        mov rax, rdi
        vmrun
    """ + EXIT_PASS
    l2 = "nop\n nop\n vmmcall\n"
    v_irq, v_ign_tpr = 1 << 8, 1 << 20
    img = nested_image(l1, l2, vmcb12(misc1=INTERCEPT_VINTR, vintr=v_irq | v_ign_tpr | (0x55 << 32),
                                      int_state=shadow, rflags=0x202))
    m = Machine(128 << 20, stdout=None, extensions=[SvmExtension()])
    m.load_multiboot(img, "shadow")
    res = m.run(timeout=60)
    assert res.reason == "exit", res
    vm = Vmcb(m.mem.view, VMCB12)
    assert vm.exitcode == VMEXIT_VINTR, hex(vm.exitcode)
    assert vm.save.rip == L2_CODE + shadow
    assert vm.v_irq == 1 and vm.interrupt_shadow == 0


# An NMI sent while an NMI handler runs waits for that handler's IRET, and is taken right
# after it, before the interrupted code goes on (kvm-unit-tests eventinj "NMI"): IRET is no exit
# of Unicorn's, so the machine asks for an IRET intercept while an NMI waits blocked.
NMI_NESTED = r'''
main:
    set_idt_handler 2, nmi_handler
    mov ecx, 0x1b
    rdmsr
    or eax, 0xc00
    wrmsr
    mov ecx, 0x80f
    mov eax, 0x1ff
    xor edx, edx
    wrmsr
    cli
    mov ecx, 0x830
    mov eax, 0x44400
    wrmsr
after_icr:
    nop
    nop
    mov rax, [rip + nested_rip]
    lea rbx, [rip + after_icr]
    sub rax, rbx
    mov [rip + delta], rax
    check_eq [delta], 0, "the NMI sent inside the handler is taken right after its IRET"
    check_eq [entries], 2, "two NMIs"
    ret
nmi_handler:
    inc qword ptr [rip + entries]
    cmp qword ptr [rip + entries], 1
    jne second
    push rax
    push rcx
    push rdx
    mov ecx, 0x830
    mov eax, 0x44400
    xor edx, edx
    wrmsr
    nop
    nop
    pop rdx
    pop rcx
    pop rax
    iretq
second:
    push rax
    mov rax, [rsp + 8]
    mov [rip + nested_rip], rax
    pop rax
    iretq
.bss
entries: .space 8
nested_rip: .space 8
delta: .space 8
.text
'''


def test_nmi_sent_in_an_nmi_handler_is_taken_right_after_its_iret(tmp_path):
    m, ext, res, out = boot(guest(tmp_path, NMI_NESTED), nested=False)
    checks = parse_tap(out)
    assert len(checks) == 2 and all(c.ok for c in checks.values()), out
    assert not m.apic.nmi_pending



def test_virtual_gif_written_by_l2_stgi_and_clgi_gates_a_virtual_interrupt():
    """With V_GIF_ENABLE, L2's STGI/CLGI (not intercepted) write V_GIF, and V_GIF=0 holds a
    pending V_IRQ: the VINTR intercept exits only after the STGI (APM vol. 2, 15.33;
    kvm-unit-tests svm vgif)."""
    from emu.arch.vmcb import INTERCEPT_VINTR
    from tests.nested_image import EXIT_PASS, L2_CODE, VMCB12, nested_image, vmcb12
    l1 = "mov rax, rdi\n vmrun\n" + EXIT_PASS
    v_irq, v_gif, v_ign_tpr, v_gif_enable = 1 << 8, 1 << 9, 1 << 20, 1 << 25

    def run(l2: str, vintr: int) -> Vmcb:
        img = nested_image(l1, l2, vmcb12(misc1=INTERCEPT_VINTR, rflags=0x202, vintr=vintr))
        m = Machine(128 << 20, stdout=None, extensions=[SvmExtension()])
        assert m.cpuid.query(0x8000000A, 0)[3] & (1 << 16)        # vGIF advertised
        m.load_multiboot(img, "vgif")
        assert m.run(timeout=30).reason == "exit"
        return Vmcb(m.mem.view, VMCB12)

    vm = run("nop\n stgi\n nop\n vmmcall\n", v_irq | v_ign_tpr | v_gif_enable | (0x55 << 32))
    assert vm.exitcode == VMEXIT_VINTR and vm.save.rip == L2_CODE + 1 + 3 and vm.v_gif == 1
    vm = run("clgi\n vmmcall\n", v_gif | v_gif_enable)
    assert vm.exitcode == VMEXIT_VMMCALL and vm.v_gif == 0
