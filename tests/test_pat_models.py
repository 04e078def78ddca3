"""Independent L1/L2 PATs under nested paging (the seed series), per PAT model.

L1 sets its PAT to HPAT, runs L2 with g_pat = GPAT; L2 reads its PAT, writes NEW, and exits;
L1 then reads its PAT. The test reads both reads, vmcb12.g_pat and the emulator's registers."""
from __future__ import annotations

from tests import harness
import pytest
from unicorn.x86_const import UC_X86_REG_R14, UC_X86_REG_R15

from emu.core.machine import Machine
from svm_ext.extension import SvmExtension
from emu.arch.vmcb import VMEXIT_VMMCALL, Vmcb
from tests.nested_image import EXIT_PASS, VMCB12, nested_image, vmcb12

HPAT = 0x0007040600070406
GPAT = 0x0606060606060606
NEW = 0x0505050505050505

L1 = f"""
    mov ecx, 0x277
    mov eax, {HPAT & 0xFFFFFFFF}
    mov edx, {HPAT >> 32}
    wrmsr
    mov rax, rdi
    vmrun
    mov ecx, 0x277
    rdmsr
    shl rdx, 32
    or rax, rdx
    mov r14, rax
""" + EXIT_PASS
L2 = f"""
    mov ecx, 0x277
    rdmsr
    shl rdx, 32
    or rax, rdx
    mov r15, rax
    mov eax, {NEW & 0xFFFFFFFF}
    mov edx, {NEW >> 32}
    wrmsr
    vmmcall
"""
NPT = dict(nested_ctl=1, n_cr3=0x20000, g_pat=GPAT)


def run(model: str, **vmcb_fields):
    b = harness.boot(nested_image(L1, L2, vmcb12(**vmcb_fields)), pat_model=model, ram=64 << 20,
                     cmdline="pat")
    m, ext, res, vm = b.machine, b.ext, b.result, b.vmcb12
    assert res.reason == "exit", res
    assert vm.exitcode == VMEXIT_VMMCALL
    return m, ext, vm, m.uc.reg_read(UC_X86_REG_R15), m.uc.reg_read(UC_X86_REG_R14)


@pytest.mark.parametrize("model", ["architectural", "swap"])
def test_nested_paging_gives_l2_its_own_pat(model):
    m, ext, vm, l2_read, l1_after = run(model, **NPT)
    assert l2_read == GPAT            # L2 sees g_pat
    assert l1_after == HPAT           # L1's PAT survived L2's write
    assert vm.save.g_pat == NEW       # #VMEXIT stored L2's PAT back
    assert ext.pat.hpat() == HPAT and not ext.pat.gpat_valid


def test_shared_model_is_one_pat():
    m, ext, vm, l2_read, l1_after = run("shared", **NPT)
    assert l2_read == HPAT            # g_pat ignored
    assert l1_after == NEW            # L2's write is L1's PAT
    assert vm.save.g_pat == GPAT      # never stored back


@pytest.mark.parametrize("model", ["architectural", "swap", "shared"])
def test_without_nested_paging_l1_and_l2_share(model):
    m, ext, vm, l2_read, l1_after = run(model, g_pat=GPAT)
    assert l2_read == HPAT and l1_after == NEW
    assert vm.save.g_pat == GPAT


@pytest.mark.parametrize("model", ["architectural", "swap"])
def test_reserved_wrmsr_pat_in_l2_is_gp_and_keeps_gpat(model):
    l2 = L2.replace(f"mov eax, {NEW & 0xFFFFFFFF}", "mov eax, 0x02")
    ext = SvmExtension(pat_model=model)
    m = Machine(64 << 20, stdout=None, extensions=[ext])
    # #GP intercepted by L1: exit 0x4D with error code 0, g_pat unchanged.
    m.load_multiboot(nested_image(L1, l2, vmcb12(exceptions=1 << 13, **NPT)), "pat")
    assert m.run(timeout=20).reason == "exit"
    vm = Vmcb(m.mem.view, VMCB12)
    assert vm.exitcode == 0x4D and vm.exitinfo1 == 0
    assert vm.save.g_pat == GPAT
    assert m.uc.reg_read(UC_X86_REG_R14) == HPAT
