"""Guest Mode Execute Trap (GMET, AMD APM vol. 2, 15.25): with VMCB nested_ctl bit 3 on a CPU
that reports GMET (CPUID Fn8000_000A EDX bit 17), the nested U/S bit stops making every
guest access a user access and decides who may execute a page instead. A supervisor-mode
(CPL < 3) fetch from a page that is user in the nested walk is a #NPF; reads and writes
ignore U/S. L2 here runs at CPL 0 on the nested tables of tests/test_npf.py (every leaf
U/S=1 unless a test clears it): its code and stack sit in the 2 MiB leaf at 4 MiB.

The expected EXITINFO1 values are written from the APM (P, ID, bit 32; US clear: the fetch is
a supervisor one), then cross-checked against our walker (emu/arch/paging) on the same tables.
"""
from __future__ import annotations

import pytest

from emu.arch import paging
from emu.arch.bits import NPF_GUEST_PAGE as GPA_BIT
from emu.arch.vmcb import VMEXIT_NPF, VMEXIT_VMMCALL, Vmcb
from emu.core.cpu_models import parse_cpu
from emu.core.machine import Machine
from svm_ext.extension import SvmExtension
from tests.nested_image import EXIT_PASS, L2_CODE, VMCB12, nested_image, vmcb12
from tests.test_npf import (L1_NXE, NOTHING, P, PAGE4K, PF_ID, PF_P, PF_U, RW, US, guest_tables,
                            nested_table, set_entry)
from tests.test_paging import Mem, Tables

NP_ENABLE, GMET_ENABLE = 1 << 0, 1 << 3
CODE_LEAF = 0x400000          # the 2 MiB nested leaf holding L2's code, stack and vmcb12
HOST = paging.PagingRegs(cr0=0x80000001, cr3=0, cr4=0x20, efer=0x500 | 0x800)


def supervisor_code(npt: Tables) -> None:
    """L2's code leaf becomes a supervisor page: executable at CPL 0 under GMET."""
    set_entry(npt, CODE_LEAF, 2, clear=US)


def run(l2: str, tweak=NOTHING, *, nested_ctl: int = NP_ENABLE | GMET_ENABLE,
        cpu: str = "max") -> tuple[Machine, Vmcb, int]:
    root, npt_segs, _ = nested_table(tweak)
    l1 = L1_NXE + "mov rax, rdi\n vmrun\n" + EXIT_PASS
    img = nested_image(l1, l2, vmcb12(cr3=0x30000, nested_ctl=nested_ctl, n_cr3=root,
                                      efer=0x1D00))
    img.segments += guest_tables() + npt_segs
    m = Machine(64 << 20, stdout=None, cpu=parse_cpu(cpu), extensions=[SvmExtension()])
    m.load_multiboot(img, "gmet")
    res = m.run(timeout=20)
    assert res.reason == "exit", res
    return m, Vmcb(m.mem.view, VMCB12), root


def test_cpuid_reports_gmet_on_max_only():
    """`max` reports GMET; EPYC (Zen 1) does not, and `EPYC,+gmet` grants it."""
    def edx(cpu: str) -> int:
        m = Machine(16 << 20, stdout=None, cpu=parse_cpu(cpu), extensions=[SvmExtension()])
        return m.cpuid.query(0x8000000A, 0)[3]
    assert edx("max") & (1 << 17)
    assert not edx("EPYC") & (1 << 17)
    assert edx("EPYC,+gmet") & (1 << 17)
    assert not edx("max,-gmet") & (1 << 17)


def test_supervisor_fetch_from_user_page_is_npf():
    """Every nested leaf is a user page: L2's first fetch (CPL 0) faults at its RIP."""
    m, vm, root = run("vmmcall\n")
    assert vm.exitcode == VMEXIT_NPF, hex(vm.exitcode)
    assert (hex(vm.exitinfo1), hex(vm.exitinfo2)) == (hex(GPA_BIT | PF_P | PF_ID), hex(L2_CODE))
    assert vm.save.rip == L2_CODE
    s = vm.save
    regs = paging.PagingRegs(cr0=s.cr0, cr3=s.cr3, cr4=s.cr4, efer=s.efer)
    with pytest.raises(paging.NestedFault) as e:
        paging.walk_2d(m.mem.read_u64, regs, root, L2_CODE, paging.FETCH,
                       host=HOST.replace(gmet=True))
    assert (e.value.exitinfo1, e.value.exitinfo2) == (vm.exitinfo1, vm.exitinfo2)


def test_without_gmet_user_pages_run():
    """The same tables with GMET off: nested accesses are user accesses, U/S=1 lets them by."""
    _, vm, _ = run("vmmcall\n", nested_ctl=NP_ENABLE)
    assert vm.exitcode == VMEXIT_VMMCALL, hex(vm.exitcode)


def test_gmet_bit_ignored_where_not_reported():
    """On EPYC, which does not report GMET, the bit changes nothing (as NP_ENABLE without NPT)."""
    _, vm, _ = run("vmmcall\n", cpu="EPYC")
    assert vm.exitcode == VMEXIT_VMMCALL, hex(vm.exitcode)


def test_supervisor_pages_run_and_data_ignores_us():
    """Code in a supervisor leaf runs at CPL 0; a read and a write of another supervisor page
    do not fault either (under GMET U/S concerns fetches only; without GMET they would)."""
    def tweak(npt: Tables) -> None:
        supervisor_code(npt)
        set_entry(npt, PAGE4K + 0x2000, 1, clear=US)
    l2 = f"""
        mov rbx, {PAGE4K + 0x2010:#x}
        mov rax, [rbx]
        mov qword ptr [rbx], 7
        vmmcall
    """
    m, vm, _ = run(l2, tweak)
    assert vm.exitcode == VMEXIT_VMMCALL, hex(vm.exitcode)
    assert m.mem.read_u64(PAGE4K + 0x2010) == 7


def test_fetch_after_read_of_a_user_page_still_faults():
    """L2 reads a user page (the TLB entry made for the read must not allow a supervisor
    fetch), then jumps to it: #NPF at the jump target, a fetch with P and ID."""
    target = PAGE4K + 0x40
    l2 = f"""
        mov rbx, {target:#x}
        mov rax, [rbx]
        jmp rbx
    """
    _, vm, _ = run(l2, supervisor_code)
    assert vm.exitcode == VMEXIT_NPF, hex(vm.exitcode)
    assert (hex(vm.exitinfo1), hex(vm.exitinfo2)) == (hex(GPA_BIT | PF_P | PF_ID), hex(target))
    assert vm.save.rip == target


def test_read_only_leaf_still_refuses_writes_under_gmet():
    """R/W keeps its meaning: a CPL-0 write to a read-only nested leaf is #NPF (P, RW)."""
    def tweak(npt: Tables) -> None:
        supervisor_code(npt)
        set_entry(npt, PAGE4K + 0x1000, 1, clear=RW)
    l2 = f"mov rbx, {PAGE4K + 0x1008:#x}\n mov qword ptr [rbx], 1\n vmmcall\n"
    _, vm, _ = run(l2, tweak)
    assert vm.exitcode == VMEXIT_NPF, hex(vm.exitcode)
    assert (hex(vm.exitinfo1), hex(vm.exitinfo2)) == (hex(GPA_BIT | PF_P | 2), hex(PAGE4K + 0x1008))


# ---- the walker's rules, all four privilege/page combinations ----------------------------------

@pytest.mark.parametrize("user_page,user_access,fetch,allowed", [
    (True, False, True, False),     # supervisor fetch, user page: the trap
    (False, False, True, True),     # supervisor fetch, supervisor page
    (True, True, True, True),       # user fetch, user page
    (False, True, True, False),     # user fetch, supervisor page
    (False, True, False, True),     # a user read of a supervisor page: U/S ignored for data
    (True, False, False, True),     # a supervisor read of a user page
])
def test_walker_gmet_rules(user_page, user_access, fetch, allowed):
    mem = Mem(size=4 << 20, first_free=0x100000)
    npt = Tables(mem, "long")
    npt.map(0x200000, 0x200000, flags=P | RW | (US if user_page else 0))
    access = paging.Access(user=user_access, fetch=fetch)
    host = HOST.replace(gmet=True)
    if allowed:
        assert paging.walk_nested(mem.r64, npt.root, 0x200123, access, host=host).pa == 0x200123
        return
    with pytest.raises(paging.NestedFault) as e:
        paging.walk_nested(mem.r64, npt.root, 0x200123, access, host=host)
    assert e.value.exitinfo1 == GPA_BIT | PF_P | PF_ID | (PF_U if user_access else 0)
