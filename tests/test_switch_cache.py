"""The world-switch cache (svm_ext/switch_cache.py): a hypervisor loop hits it on every round
trip, and a hit leaves exactly what the full VMRUN/#VMEXIT would (verified byte for byte)."""
from __future__ import annotations

import pytest
from unicorn.x86_const import UC_X86_REG_R12, UC_X86_REG_R13

from emu.loader.asm import GUESTS_DIR
from emu.core.machine import Machine
from emu.core import snapshot
from svm_ext import switch_cache
from svm_ext.switch_steps import FullSteps
from svm_ext.extension import SvmExtension
from emu.arch.vmcb import VMEXIT_VMMCALL, Vmcb
from tests.nested_image import EXIT_PASS, L2_CODE, VMCB12, nested_image, vmcb12
from tests.tinyimage import asm64

N = 40
# L1: N round trips; L2 changes RAX, RSP, RFLAGS and CR2 each time (all volatile), and once in
# the middle L1 changes L2's CR4 in vmcb12 (a miss), then goes on.
L1 = f"""
    mov r12, 0
again:
    mov rax, rdi
    vmrun
    add qword ptr [rdi + 0x578], 3
    inc r12
    cmp r12, {N // 2}
    jne skip
    or qword ptr [rdi + 0x548], 0x200
skip:
    cmp r12, {N}
    jb again
""" + EXIT_PASS
L2 = """
l2: inc r13
    mov rax, r13
    sub rsp, 8
    mov cr2, rax
    cmp rax, 7
    vmmcall
    jmp l2
"""


def run(verify: bool, monkeypatch: pytest.MonkeyPatch, steps: FullSteps | None = None, **fields):
    monkeypatch.setattr(switch_cache, "VERIFY", verify)
    ext = SvmExtension()
    if steps is not None:
        ext.steps = steps
    m = Machine(128 << 20, stdout=None, extensions=[ext])
    m.load_multiboot(nested_image(L1, L2, vmcb12(**fields)), "t")
    res = m.run(timeout=30)
    assert res.reason == "exit", res
    return m, ext


def test_loop_hits_every_step_and_matches_the_full_path(monkeypatch):
    m, ext = run(True, monkeypatch)          # every hit re-done by the full path and compared
    hits = ext.steps.hits
    assert m.uc.reg_read(UC_X86_REG_R12) == N and m.uc.reg_read(UC_X86_REG_R13) == N
    # Misses: the first VMRUN, the one after the first exit (vmcb12 then holds the encoded
    # state), and the two around L1's CR4 edit (which changes L2's hidden flags too).
    assert hits["enter"] >= N - 4 and hits["restore"] >= N - 2 and hits["store"] >= N - 4
    vm = Vmcb(m.mem.view, VMCB12)
    assert vm.exitcode == VMEXIT_VMMCALL
    assert vm.save.cr2 == N and vm.save.rax == N and vm.save.cr4 & 0x200
    vmmcall_at = L2_CODE + len(asm64(L2.split("vmmcall")[0], L2_CODE))
    assert vm.save.rip == vmmcall_at + 3               # L1 stepped over the last VMMCALL


def test_v_intr_masking_hypervisor_hits_too(monkeypatch):
    """Real hypervisors set V_INTR_MASKING (vintr bit 24) and a V_TPR: still replayed, still
    equal to the full path."""
    m, ext = run(True, monkeypatch, vintr=(1 << 24) | 3)
    assert ext.steps.hits["enter"] >= N - 4
    assert Vmcb(m.mem.view, VMCB12).vintr & ((1 << 24) | 0xF) == (1 << 24) | 3


def test_same_vmcb_and_registers_without_the_cache(monkeypatch):
    m1, e1 = run(False, monkeypatch)
    m2, e2 = run(False, monkeypatch, steps=FullSteps())
    assert sum(e1.steps.hits.values()) > 0 and not hasattr(e2.steps, "hits")
    assert bytes(m1.mem.view[VMCB12:VMCB12 + 0x1000]) == bytes(m2.mem.view[VMCB12:VMCB12 + 0x1000])
    assert bytes(m1.ctx.save().view) == bytes(m2.ctx.save().view)


def test_verify_catches_a_wrong_replay(monkeypatch):
    """The verification can fail: a replay that forgets CR2 is reported."""
    real = switch_cache._load_volatile

    def forgets_cr2(ext, c):
        real(ext, c._replace(cr2=0))
    monkeypatch.setattr(switch_cache, "_load_volatile", forgets_cr2)
    with pytest.raises(AssertionError, match="switch cache: VMRUN load_guest differs"):
        run(True, monkeypatch)


def test_snapshot_restore_starts_the_cache_afresh(monkeypatch):
    m, ext = run(False, monkeypatch)
    snap = snapshot.take(m)
    assert ext.steps.enter_key
    snapshot.restore(m, snap)
    assert not ext.steps.enter_key and not ext.steps.exit_key


@pytest.mark.parametrize("guest", sorted(p.stem for p in GUESTS_DIR.glob("svm_*.S")))
def test_bundled_hypervisors_agree_with_the_full_path(guest, monkeypatch):
    from tests.test_guests import boot
    monkeypatch.setattr(switch_cache, "VERIFY", True)
    m, ext, res, out = boot(guest)
    assert res.reason == "exit" and res.status == 1, out
    assert sum(ext.steps.hits.values()) > 0
