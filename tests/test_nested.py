"""Nested SVM world switches: VMRUN, #VMEXIT, intercepts, EXITINFO, NRIP, VMEXIT_INVALID.

Each test runs a small L1 (tests/nested_image.py) and then inspects vmcb12 in guest RAM and
the registers, not only what L1 concluded."""
from __future__ import annotations

from tests import harness
import pytest
from unicorn.x86_const import (UC_X86_REG_RBX, UC_X86_REG_R12, UC_X86_REG_R13,
                               UC_X86_REG_R14, UC_X86_REG_R15)

from emu.arch.vmcb import (INTERCEPT_CPUID, INTERCEPT_HLT, INTERCEPT_MSR_PROT,
                          VMEXIT_CPUID, VMEXIT_EXCP0, VMEXIT_HLT, VMEXIT_INVALID,
                          VMEXIT_MSR, VMEXIT_VMMCALL, Vmcb, msrpm_bit_offset)
from tests.nested_image import EXIT_PASS, L2_CODE, VMCB12, nested_image, vmcb12
from tests.tinyimage import asm64, gate64, handler

# L1: run L2 until it has exited `n` times; count exits in r12; after each, skip the
# intercepted instruction using NRIP.
LOOP = """
again:
    mov rax, rdi
    vmrun
    mov r14, rax
    inc r12
    mov rax, [rdi + 0xC8]
    mov [rdi + 0x578], rax
    cmp r12, {n}
    jb again
""" + EXIT_PASS


# L1: one VMRUN, then exit with vmcb12 untouched for the test to read.
ONCE = "mov rax, rdi\n vmrun\n mov r14, rax\n" + EXIT_PASS


def run(img, ext=None):
    b = harness.boot(img, ext=ext)
    return b.machine, b.ext, b.result, b.vmcb12


def reg(m, r):
    return m.uc.reg_read(r)


def test_vmmcall_round_trips_and_gprs_are_shared():
    l2 = "l2: inc r13\n mov rbx, 0x4242\n vmmcall\n jmp l2"
    img = nested_image("mov rbx, 0x7777\n" + LOOP.format(n=3), l2, vmcb12(rax=0x1111))
    m, ext, res, vm = run(img)
    assert res.reason == "exit", res
    assert reg(m, UC_X86_REG_R12) == 3 and reg(m, UC_X86_REG_R13) == 3
    assert vm.exitcode == VMEXIT_VMMCALL
    vmmcall_at = L2_CODE + len(asm64("inc r13\n mov rbx, 0x4242", L2_CODE))
    assert vm.nrip == vmmcall_at + 3
    assert reg(m, UC_X86_REG_RBX) == 0x4242       # #VMEXIT does not restore RBX
    assert reg(m, UC_X86_REG_R14) == VMCB12       # #VMEXIT restores host RAX
    assert vm.save.rax == 0x1111                  # L2's RAX: loaded from vmcb12, kept by L2
    assert ext.state.stats == {"vmrun": 3, "vmexit": 3}
    assert not ext.state.in_l2 and not ext.state.gif


def test_vmexit_saves_l2_state():
    l2 = "mov rsp, 0x5E0000\n push 0x1\n popfq\n vmmcall"
    m, ext, res, vm = run(nested_image(ONCE, l2, vmcb12()))
    assert res.reason == "exit"
    s = vm.save
    assert s.rsp == 0x5E0000 and s.rflags == 0x3 and s.cpl == 0
    assert s.cs.selector == 0x08 and s.cs.attrib == 0xA9B
    assert s.efer == 0x1500 and s.cr3 == 0x20000
    assert s.rip == L2_CODE + len(asm64("mov rsp, 0x5E0000\n push 0x1\n popfq", L2_CODE))


def test_consistency_check_failure_is_vmexit_invalid_without_running_l2():
    l2 = "mov r15, 0xBAD\n vmmcall"
    img = nested_image("mov rax, rdi\n vmrun\n" + EXIT_PASS, l2, vmcb12(guest_asid=0))
    m, ext, res, vm = run(img)
    assert res.reason == "exit"
    assert vm.exitcode == VMEXIT_INVALID
    assert reg(m, UC_X86_REG_R15) != 0xBAD
    assert "ASID" in ext.last_invalid_reason


def test_reserved_g_pat_with_nested_paging_is_invalid():
    img = nested_image("mov rax, rdi\n vmrun\n" + EXIT_PASS, "vmmcall",
                       vmcb12(nested_ctl=1, n_cr3=0x20000, g_pat=0x0007040600070402))
    m, ext, res, vm = run(img)
    assert vm.exitcode == VMEXIT_INVALID


def test_cpuid_intercepted_and_not():
    l2 = "mov eax, 0\n cpuid\n mov r15, rbx\n vmmcall"
    # Not intercepted: L0 answers for L2, L1 sees VMMCALL next.
    m, ext, res, vm = run(nested_image(ONCE, l2, vmcb12()))
    assert vm.exitcode == VMEXIT_VMMCALL
    assert reg(m, UC_X86_REG_R15) == 0x68747541   # "Auth"
    # Intercepted: the first exit is CPUID with NRIP after it.
    img = nested_image(ONCE, l2, vmcb12(misc1=INTERCEPT_CPUID))
    m, ext, res, vm = run(img)
    assert vm.exitcode == VMEXIT_CPUID
    assert vm.nrip == L2_CODE + len(asm64("mov eax, 0\n cpuid", L2_CODE))


def test_exception_intercept_reports_error_code_and_not_intercepted_goes_to_l2_idt():
    l2 = "mov rbx, 0x40000000\n mov rax, [rbx]\n vmmcall"
    img = nested_image(ONCE, l2, vmcb12(exceptions=1 << 14))
    m, ext, res, vm = run(img)
    assert vm.exitcode == VMEXIT_EXCP0 + 14
    assert vm.exitinfo1 == 0 and vm.exitinfo2 == 0x40000000
    assert vm.save.rip == L2_CODE + 7
    # Without the intercept, L2's own #PF handler (in the shared IDT) runs inside L2.
    l2h = "mov r15, cr2\n add qword ptr [rsp+8], 3\n add rsp, 8\n iretq"
    img = nested_image(ONCE, l2, vmcb12(), idt={14: gate64(handler(0))},
                       handlers=[l2h])
    m, ext, res, vm = run(img)
    assert vm.exitcode == VMEXIT_VMMCALL
    assert reg(m, UC_X86_REG_R15) == 0x40000000


@pytest.mark.parametrize("op,write", [("rdmsr", 0), ("wrmsr", 1)])
def test_msr_intercept_follows_msrpm_bits(op, write):
    msrpm = bytearray(0x2000)
    byte, bit = msrpm_bit_offset(0x277)
    msrpm[byte] |= 1 << (bit + write)
    l2 = f"mov ecx, 0x277\n mov eax, 0x06060606\n mov edx, 0x06060606\n {op}\n vmmcall"
    img = nested_image(ONCE, l2, vmcb12(misc1=INTERCEPT_MSR_PROT), msrpm=bytes(msrpm))
    m, ext, res, vm = run(img)
    assert vm.exitcode == VMEXIT_MSR
    assert vm.exitinfo1 == write
    # The other direction is not intercepted: flip the access and L2 reaches VMMCALL.
    other = "wrmsr" if op == "rdmsr" else "rdmsr"
    img = nested_image(ONCE, l2.replace(op, other), vmcb12(misc1=INTERCEPT_MSR_PROT),
                       msrpm=bytes(msrpm))
    m, ext, res, vm = run(img)
    assert vm.exitcode == VMEXIT_VMMCALL


def test_hlt_intercept():
    img = nested_image(ONCE, "hlt", vmcb12(misc1=INTERCEPT_HLT))
    m, ext, res, vm = run(img)
    assert vm.exitcode == VMEXIT_HLT and vm.nrip == L2_CODE + 1


def test_vmload_then_vmsave_moves_fs_and_syscall_msrs():
    # L1: VMLOAD from vmcb12 (prepared with FS.base and LSTAR), read them back through the CPU,
    # then VMSAVE into a second page.
    l1 = """
        mov rax, rdi
        vmload
        mov ecx, 0xC0000100
        rdmsr
        shl rdx, 32
        or rax, rdx
        mov r14, rax
        mov ecx, 0xC0000082
        rdmsr
        shl rdx, 32
        or rax, rdx
        mov r15, rax
        mov rax, 0x410000
        vmsave
    """ + EXIT_PASS
    vm = vmcb12(fs=(0x10, 0xC93, 0xFFFFFFFF, 0x12345000), lstar=0xFFFFFFFF81000000,
                star=0x0023001000000000)
    m, ext, res, _ = run(nested_image(l1, "vmmcall", vm))
    assert res.reason == "exit", res
    assert reg(m, UC_X86_REG_R14) == 0x12345000
    assert reg(m, UC_X86_REG_R15) == 0xFFFFFFFF81000000
    saved = Vmcb(m.mem.view, 0x410000).save
    assert saved.fs.base == 0x12345000 and saved.fs.selector == 0x10
    assert saved.lstar == 0xFFFFFFFF81000000 and saved.star == 0x0023001000000000


def test_vmload_makes_the_bases_it_loads_canonical():
    """VMLOAD from a VMCB whose FS/GS/TR/LDTR bases and KERNEL_GS_BASE are not canonical loads
    them canonical (bit 47 copied up); VMSAVE then writes those (kvm-unit-tests
    svm_guest_state_test, test_canonicalization)."""
    l1 = "mov rax, rdi\n vmload\n mov rax, 0x410000\n vmsave\n" + EXIT_PASS
    vm = vmcb12(fs=(0, 0xC93, 0xFFFF, 0xAAAA000012345000),
                gs=(0, 0xC93, 0xFFFF, 0xAAAA800000001000),
                tr=(0, 0x8B, 0x67, 0x5555000000002000),
                ldtr=(0, 0x82, 0xFFFF, 0x0001800000003000),
                kernel_gs_base=0xAAAA000000004000)
    m, ext, res, _ = run(nested_image(l1, "vmmcall", vm))
    assert res.reason == "exit", res
    saved = Vmcb(m.mem.view, 0x410000).save
    assert hex(saved.fs.base) == hex(0x12345000)
    assert hex(saved.gs.base) == hex(0xFFFF800000001000)
    assert hex(saved.tr.base) == hex(0x2000)
    assert hex(saved.ldtr.base) == hex(0xFFFF800000003000)
    assert hex(saved.kernel_gs_base) == hex(0x4000)


@pytest.mark.parametrize("field", ["es", "cs", "ss", "ds"])
def test_vmrun_with_a_non_canonical_segment_base_runs_l2(field):
    """No consistency check names segment bases: VMRUN enters L2, which runs to its VMMCALL
    (kvm-unit-tests svm_guest_state_test, "Successful VMRUN with noncanonical CS.base"); in
    64-bit mode the base of CS is not used, so the code is fetched where RIP says."""
    l2 = "push rax\n pop rax\n vmmcall"
    sel, attr = (0x08, 0xA9B) if field == "cs" else (0x10, 0xC93)
    vm = vmcb12(**{field: (sel, attr, 0xFFFFFFFF, 0xAAAA000000000000)})
    m, ext, res, vm = run(nested_image(ONCE, l2, vm))
    assert res.reason == "exit", res
    assert vm.exitcode == VMEXIT_VMMCALL, hex(vm.exitcode)


def test_vmload_with_misaligned_rax_is_gp():
    l1 = "lea rax, [rdi + 8]\n vmload\n mov r15, 0xBAD\n" + EXIT_PASS
    m, ext, res, _ = run(nested_image(l1, "vmmcall", vmcb12(), idt={13: gate64(handler(0))},
                                      handlers=["mov r14, [rsp]\n" + EXIT_PASS]))
    assert res.reason == "exit"
    assert reg(m, UC_X86_REG_R15) != 0xBAD and reg(m, UC_X86_REG_R14) == 0


def test_stgi_clgi_set_gif():
    m, ext, res, _ = run(nested_image("clgi\n" + EXIT_PASS, "vmmcall", vmcb12()))
    assert not ext.state.gif
    m, ext, res, _ = run(nested_image("clgi\n stgi\n" + EXIT_PASS, "vmmcall", vmcb12()))
    assert ext.state.gif


def test_invlpga_drops_a_stale_translation():
    # L1 reads through VA 0x600000, remaps that 2 MiB page to 0x800000 behind the TLB's back,
    # then INVLPGA (rAX = VA, ECX = ASID): the next read must see the new mapping.
    l1 = """
        mov rbx, 0x600000
        mov qword ptr [rbx], 0x1111
        mov rcx, 0x800000
        mov qword ptr [rcx], 0x2222
        mov r14, [rbx]
        mov rax, 0x22000 + 3 * 8
        mov qword ptr [rax], 0x800087
        mov rax, 0x600000
        xor ecx, ecx
        invlpga
        mov r15, [rbx]
    """ + EXIT_PASS
    m, ext, res, _ = run(nested_image(l1, "vmmcall", vmcb12()))
    assert res.reason == "exit", res
    assert reg(m, UC_X86_REG_R14) == 0x1111 and reg(m, UC_X86_REG_R15) == 0x2222
