"""#NPF EXITINFO1/EXITINFO2 as L1 sees them in vmcb12 (AMD APM vol. 2, 15.25.6): P, RW, US,
RSVD, ID and bit 32 (fault on the final guest-physical address) or bit 33 (fault on a guest
page-table access), EXITINFO2 = the faulting GPA; nested leaves of 4 KiB, 2 MiB and 1 GiB.

The expected values are written here from the APM, then cross-checked against our software
walker (emu/arch/paging.walk_2d) on the machine's memory, so a wrong value in either shows up.

Layout (all in L1-physical memory): L2's own page tables at 0x30000 (identity, 2 MiB pages,
plus the special entries below); the nested table at 0x700000+, built by tests/test_paging's
Tables: identity 2 MiB leaves for 0..6 MiB, a 4 KiB table for 6..8 MiB (the 4K cases), a 2 MiB
leaf at 8 MiB (the 2M cases), and a 1 GiB leaf mapping GPA 1 GiB to host 0 (the 1G case)."""
from __future__ import annotations

import struct

import pytest

from emu.arch import paging
from emu.arch.bits import NPF_GUEST_PAGE as GPA_BIT, NPF_GUEST_TABLE as GPT_BIT
from emu.core.machine import Machine
from svm_ext.extension import SvmExtension
from emu.arch.vmcb import VMEXIT_NPF, VMEXIT_VMMCALL, Vmcb
from tests.nested_image import EXIT_PASS, VMCB12, nested_image, vmcb12
from tests.test_paging import Mem, Tables

P, RW, US, PS = 1, 2, 4, 0x80
NX = 1 << 63
PF_P, PF_W, PF_U, PF_RSV, PF_ID = 1, 2, 4, 8, 0x10
PAGE4K = 0x600000        # 4 KiB nested leaves around here
PAGE2M = 0x800000        # a 2 MiB nested leaf
PAGE1G = 0x40000000      # a 1 GiB nested leaf (GPA 1 GiB -> host 0)
TABLE_VA = 0xA00000      # guest VA whose guest page table sits at GUEST_PT
GUEST_PT = 0x6F0000      # a guest page table page, in the 4 KiB-mapped nested region
NPT_BASE = 0x700000


def guest_tables(table_va_pt: bool = True) -> list[tuple[int, bytes]]:
    pd = bytearray(b"".join(struct.pack("<Q", (i << 21) | P | RW | US | PS) for i in range(512)))
    if table_va_pt:   # VA 0xA00000 goes through a 4 KiB guest table at GUEST_PT
        struct.pack_into("<Q", pd, 8 * (TABLE_VA >> 21), GUEST_PT | P | RW | US)
    pd1g = b"".join(struct.pack("<Q", PAGE1G + (i << 21) | P | RW | US | PS) for i in range(512))
    pdpt = struct.pack("<QQ", 0x32000 | 7, 0x33000 | 7)
    pt = b"".join(struct.pack("<Q", TABLE_VA + (i << 12) | P | RW | US) for i in range(512))
    return [(0x30000, struct.pack("<Q", 0x31000 | 7)), (0x31000, pdpt), (0x32000, bytes(pd)),
            (0x33000, pd1g), (GUEST_PT, pt)]


def nested_table(tweak) -> tuple[int, list[tuple[int, bytes]], Mem]:
    mem = Mem(size=16 << 20, first_free=NPT_BASE)
    npt = Tables(mem, "long")
    for base in (0, 0x200000, 0x400000, 0xA00000):
        npt.map(base, base, size=2 << 20, flags=P | RW | US)
    for off in range(0, 0x200000, 0x1000):
        if PAGE4K + off < NPT_BASE or PAGE4K + off >= mem.next + 0x10000:
            npt.map(PAGE4K + off, PAGE4K + off, flags=P | RW | US)
    npt.map(PAGE2M, PAGE2M, size=2 << 20, flags=P | RW | US)
    npt.map(PAGE1G, 0, size=1 << 30, flags=P | RW | US)
    tweak(npt)
    return npt.root, [(NPT_BASE, bytes(mem.b[NPT_BASE:mem.next]))], mem


def set_entry(npt: Tables, gpa: int, level: int, *, clear: int = 0, add: int = 0) -> None:
    addr = npt.entry_addr(gpa, level)
    npt.put(addr, (npt.get(addr) & ~clear) | add)


L1_NXE = """
    mov ecx, 0xC0000080
    rdmsr
    or eax, 0x800
    wrmsr
"""


def run_npf(l2: str, tweak, nxe: bool = True):
    root, npt_segs, _ = nested_table(tweak)
    l1 = (L1_NXE if nxe else "") + "mov rax, rdi\n vmrun\n" + EXIT_PASS
    fields = dict(cr3=0x30000, nested_ctl=1, n_cr3=root)
    if nxe:
        fields["efer"] = 0x1D00      # L2 too: SVME | NXE | LMA | LME
    img = nested_image(l1, l2, vmcb12(**fields))
    img.segments += guest_tables() + npt_segs
    m = Machine(64 << 20, stdout=None, extensions=[SvmExtension()])
    m.load_multiboot(img, "npf")
    res = m.run(timeout=20)
    assert res.reason == "exit", res
    vm = Vmcb(m.mem.view, VMCB12)
    return m, vm, root


class Code(str):
    """L2's code, remembering the access it makes (for the cross-check with our walker)."""
    gva: int
    access: paging.Access


def _code(text: str, gva: int, access: paging.Access) -> Code:
    c = Code(text)
    c.gva, c.access = gva, access
    return c


def read(addr):
    return _code(f"mov rbx, {addr:#x}\n mov rax, [rbx]\n vmmcall\n", addr, paging.READ)


def write(addr):
    return _code(f"mov rbx, {addr:#x}\n mov qword ptr [rbx], 1\n vmmcall\n", addr, paging.WRITE)


def fetch(addr):
    return _code(f"mov rbx, {addr:#x}\n jmp rbx\n", addr, paging.FETCH)


NOTHING = (lambda npt: None)

CASES = {
    # name: (L2 code, nested-table tweak, EXITINFO1, EXITINFO2)
    "4k-not-present-read": (read(PAGE4K + 0x18), lambda t: set_entry(t, PAGE4K, 1, clear=P),
                            GPA_BIT | PF_U, PAGE4K + 0x18),
    "4k-not-present-write": (write(PAGE4K + 0x20), lambda t: set_entry(t, PAGE4K, 1, clear=P),
                             GPA_BIT | PF_U | PF_W, PAGE4K + 0x20),
    "4k-not-present-fetch": (fetch(PAGE4K + 0x40), lambda t: set_entry(t, PAGE4K, 1, clear=P),
                             GPA_BIT | PF_U | PF_ID, PAGE4K + 0x40),
    "4k-read-only-write": (write(PAGE4K + 0x1008), lambda t: set_entry(t, PAGE4K + 0x1000, 1,
                                                                        clear=RW),
                           GPA_BIT | PF_P | PF_W | PF_U, PAGE4K + 0x1008),
    "4k-read-only-read-ok-then-vmmcall": (read(PAGE4K + 0x1008), lambda t: set_entry(
        t, PAGE4K + 0x1000, 1, clear=RW), None, None),
    "4k-supervisor-leaf-read": (read(PAGE4K + 0x2010), lambda t: set_entry(t, PAGE4K + 0x2000, 1,
                                                                            clear=US),
                                GPA_BIT | PF_P | PF_U, PAGE4K + 0x2010),
    "supervisor-pde-read": (read(PAGE4K + 0x3000), lambda t: set_entry(t, PAGE4K, 2, clear=US),
                            GPA_BIT | PF_P | PF_U, PAGE4K + 0x3000),
    "4k-nx-fetch": (fetch(PAGE4K + 0x4000), lambda t: set_entry(t, PAGE4K + 0x4000, 1, add=NX),
                    GPA_BIT | PF_P | PF_U | PF_ID, PAGE4K + 0x4000),
    "4k-reserved-read": (read(PAGE4K + 0x5000), lambda t: set_entry(t, PAGE4K + 0x5000, 1,
                                                                     add=1 << 51),
                         GPA_BIT | PF_P | PF_U | PF_RSV, PAGE4K + 0x5000),
    # The PDPE for GPAs 0..1 GiB also maps L2's own page tables: the first guest-table read
    # (the PML4E at 0x30000) is what faults, so it is a guest-table fault there, not at the data.
    "pdpe-reserved-write": (write(PAGE4K + 0x5000), lambda t: set_entry(t, PAGE4K, 3, add=1 << 45),
                            GPT_BIT | PF_P | PF_U | PF_W | PF_RSV, 0x30000),
    "2m-not-present-read": (read(PAGE2M + 0x1234), lambda t: set_entry(t, PAGE2M, 2, clear=P),
                            GPA_BIT | PF_U, PAGE2M + 0x1234),
    "2m-read-only-write": (write(PAGE2M + 0x10_0000), lambda t: set_entry(t, PAGE2M, 2, clear=RW),
                           GPA_BIT | PF_P | PF_W | PF_U, PAGE2M + 0x10_0000),
    "2m-reserved-read": (read(PAGE2M + 8), lambda t: set_entry(t, PAGE2M, 2, add=1 << 13),
                         GPA_BIT | PF_P | PF_U | PF_RSV, PAGE2M + 8),
    "1g-read-only-write": (write(PAGE1G + 0x60_0000), lambda t: set_entry(t, PAGE1G, 3, clear=RW),
                           GPA_BIT | PF_P | PF_W | PF_U, PAGE1G + 0x60_0000),
    "1g-reserved-read": (read(PAGE1G + 0x60_0000), lambda t: set_entry(t, PAGE1G, 3, add=1 << 20),
                         GPA_BIT | PF_P | PF_U | PF_RSV, PAGE1G + 0x60_0000),
    # The guest's own page table (a PT page at GUEST_PT) is what the nested walk cannot reach:
    # bit 33, EXITINFO2 = the GPA of the guest entry, and the access is a write (the processor
    # may set A/D in it) by a user (every nested access is) whatever L2 was doing.
    "guest-table-not-present": (read(TABLE_VA + 0x3008), lambda t: set_entry(t, GUEST_PT, 1,
                                                                              clear=P),
                                GPT_BIT | PF_W | PF_U, GUEST_PT + 8 * 3),
    "guest-table-read-only": (fetch(TABLE_VA + 0x5000), lambda t: set_entry(t, GUEST_PT, 1,
                                                                             clear=RW),
                              GPT_BIT | PF_P | PF_W | PF_U, GUEST_PT + 8 * 5),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_npf_exitinfo(name):
    l2, tweak, info1, info2 = CASES[name]
    m, vm, root = run_npf(l2, tweak)
    if info1 is None:
        assert vm.exitcode == 0x81, hex(vm.exitcode)      # VMMCALL: no fault at all
        return
    assert vm.exitcode == VMEXIT_NPF, hex(vm.exitcode)
    assert (hex(vm.exitinfo1), hex(vm.exitinfo2)) == (hex(info1), hex(info2))
    # our walker, on the same tables, with L2's registers as #VMEXIT saved them, agrees
    s = vm.save
    regs = paging.PagingRegs(cr0=s.cr0, cr3=s.cr3, cr4=s.cr4, efer=s.efer)
    with pytest.raises(paging.NestedFault) as e:
        paging.walk_2d(m.mem.read_u64, regs, root, l2.gva, l2.access,
                       host=paging.PagingRegs(cr0=0x80000001, cr3=0, cr4=0x20, efer=0x500 | 0x800))
    assert (e.value.exitinfo1, e.value.exitinfo2) == (info1, info2)
    assert vm.save.rip == (l2.gva if l2.access.fetch else vm.save.rip)   # a fetch faults at it


def test_fetch_without_nxe_has_no_id_bit():
    """ID is defined only with EFER.NXE=1 (APM vol. 2, 8.4.2); L1 here runs with NXE=0."""
    code = fetch(PAGE4K + 0x40)
    m, vm, root = run_npf(code, lambda t: set_entry(t, PAGE4K, 1, clear=P), nxe=False)
    assert vm.exitcode == VMEXIT_NPF
    assert (vm.exitinfo1, vm.exitinfo2) == (GPA_BIT | PF_U, PAGE4K + 0x40)


def test_reserved_bit_unicorn_does_not_check_is_npf_not_an_internal_error():
    """Bit 8 of a nested PML4E is reserved (MBZ) on AMD; Unicorn's nested walk lets it pass and
    reports L2's intercepted VMMCALL, but fetching that instruction walks L2's PML4 through the
    faulty entry: the exit is #NPF on the guest table (kvm-unit-tests svm_npt_rsvd_bits_test),
    not the intercept, and not an escaped fault while computing NRIP."""
    m, vm, root = run_npf("vmmcall\n", lambda t: set_entry(t, 0x30000, 4, add=1 << 8))
    assert vm.exitcode == VMEXIT_NPF, hex(vm.exitcode)
    assert (hex(vm.exitinfo1), hex(vm.exitinfo2)) == (
        hex(GPT_BIT | PF_P | PF_W | PF_U | PF_RSV), hex(0x30000))


def test_fetch_with_host_smep_reports_id_bit():
    """With L1's CR4.SMEP set and EFER.NXE clear, a fetch's #NPF still reports I/D: the host's
    SMEP makes I/D defined for the nested walk (kvm-unit-tests svm_npt_rsvd_bits_test checks
    every host NX/SMEP pair). SMEP refuses nothing there: nested accesses are user accesses.
    The host registers are the ones #NPF decoding walks with (svm_ext/memview)."""
    from emu.arch.bits import CR4_SMEP
    from svm_ext.memview import _nested_host
    root, _, mem = nested_table(lambda t: set_entry(t, PAGE4K + 0x5000, 1, add=1 << 51))
    l1 = paging.PagingRegs(cr0=0x80000011, cr3=0x20000, cr4=0x20, efer=0x500)
    for cr4, id_bit in ((0x20, 0), (0x20 | CR4_SMEP, PF_ID)):
        host = _nested_host(paging.PagingRegs(cr0=l1.cr0, cr3=l1.cr3, cr4=cr4, efer=l1.efer))
        with pytest.raises(paging.NestedFault) as e:
            paging.walk_nested(mem.r64, root, PAGE4K + 0x5000, paging.FETCH, host=host)
        assert hex(e.value.exitinfo1) == hex(GPA_BIT | PF_P | PF_U | PF_RSV | id_bit)
        # a fetch from an ordinary page goes through: SMEP never refuses a nested access
        assert paging.walk_nested(mem.r64, root, PAGE4K + 0x6000, paging.FETCH,
                                  host=host).pa == PAGE4K + 0x6000


def _run_child(prog: str, engine: str):
    """Runs `prog` in a child process on the named engine (SVMEMU_ENGINE): a crash of the
    engine would take pytest down."""
    import os
    import subprocess
    import sys
    env = dict(os.environ, SVMEMU_ENGINE=engine)
    return subprocess.run([sys.executable, "-c", prog], capture_output=True, text=True,
                          timeout=120, env=env)


def _need_patched_engine():
    from emu.engine.unicorn_build import build
    if build.built_library() is None:
        pytest.skip("svmemu's engine is not built (python -m emu.engine.unicorn_build)")


_NX_OVER_ROOT = (
    "from tests.test_npf import *\n"
    "root, segs, _ = nested_table(lambda t: set_entry(t, 0, 2, add=NX))\n"
    "img = nested_image(L1_NXE + 'mov rax, rdi\\n vmrun\\n' + EXIT_PASS,\n"
    "                   read(PAGE4K + 0x28), vmcb12(cr3=0x30000, nested_ctl=1, n_cr3=root,\n"
    "                                               efer=0x1D00))\n"
    "img.segments += guest_tables() + segs + [(PAGE4K + 0x28, (0x5A17).to_bytes(8, 'little'))]\n"
    "m = Machine(64 << 20, stdout=None, extensions=[SvmExtension()])\n"
    "m.load_multiboot(img, 'npf')\n"
    "res = m.run(timeout=20)\n"
    "vm = Vmcb(m.mem.view, VMCB12)\n"
    "print(res.reason, hex(vm.exitcode), hex(vm.save.rax), res.message)\n")


def test_nx_nested_leaf_over_guest_root_table_stops_on_the_stock_engine():
    """Stock Unicorn 2.1.4 dereferences NULL (SIGSEGV in get_hphys) when the nested translation
    of a guest page-table page has NX set: it clears PAGE_EXEC in a prot pointer that
    page-table walks pass as NULL. Here the 2 MiB nested leaf over GPA 0..2 MiB (L2's tables at
    0x30000) is NX: on the stock engine svmemu sees it at VMRUN
    (svm_ext/hw_quirks.guard_nested_nx) and stops with "unsupported:"."""
    r = _run_child(_NX_OVER_ROOT, "stock")
    assert r.returncode == 0, (r.returncode, r.stderr)
    assert r.stdout.startswith("unsupported ") and "page-table root" in r.stdout, r.stdout


def test_nx_nested_leaf_over_guest_root_table_walks_on_our_engine():
    """The same machine on svmemu's engine (0003-nested-walk-null-prot.patch): NX in a nested
    entry forbids only instruction fetches from that guest-physical page (APM vol. 2, 15.25),
    so L2's walk through its NX-mapped tables completes, its read returns the value stored at
    the target and its VMMCALL reaches L1: no guard, no stop."""
    _need_patched_engine()
    r = _run_child(_NX_OVER_ROOT, "patched")
    assert r.returncode == 0, (r.returncode, r.stderr)
    reason, code, rax = r.stdout.split()[:3]
    assert (reason, int(code, 16), int(rax, 16)) == ("exit", VMEXIT_VMMCALL, 0x5A17), r.stdout


def test_nx_nested_leaf_over_lower_guest_table_walks_on_our_engine():
    """The case the stock engine's VMRUN guard cannot see: the NX nested leaf maps a lower-level
    guest table (the 4 KiB table at GUEST_PT that maps TABLE_VA), reached only mid-run. The
    stock engine crashes here; ours completes the walk and the read."""
    _need_patched_engine()
    prog = ("from tests.test_npf import *\n"
            "root, segs, _ = nested_table(lambda t: set_entry(t, GUEST_PT, 1, add=NX))\n"
            "img = nested_image(L1_NXE + 'mov rax, rdi\\n vmrun\\n' + EXIT_PASS,\n"
            "                   read(TABLE_VA + 0x30), vmcb12(cr3=0x30000, nested_ctl=1,\n"
            "                                                n_cr3=root, efer=0x1D00))\n"
            "img.segments += guest_tables() + segs + "
            "[(TABLE_VA + 0x30, (0xC0DE).to_bytes(8, 'little'))]\n"
            "m = Machine(64 << 20, stdout=None, extensions=[SvmExtension()])\n"
            "m.load_multiboot(img, 'npf')\n"
            "res = m.run(timeout=20)\n"
            "vm = Vmcb(m.mem.view, VMCB12)\n"
            "print(res.reason, hex(vm.exitcode), hex(vm.save.rax), res.message)\n")
    r = _run_child(prog, "patched")
    assert r.returncode == 0, (r.returncode, r.stderr)
    reason, code, rax = r.stdout.split()[:3]
    assert (reason, int(code, 16), int(rax, 16)) == ("exit", VMEXIT_VMMCALL, 0xC0DE), r.stdout


def test_implicit_access_falls_back_to_unicorn_bits_and_says_so():
    """A descriptor-table read is not among the decoded candidates: Unicorn's low bits stand,
    with bit 32 (the GDT read is a final-GPA access here), and `--trace exits` says so."""
    import io
    from emu.core.trace import Tracer
    gdt = PAGE4K + 0x7000
    root, npt_segs, _ = nested_table(lambda t: set_entry(t, gdt, 1, clear=P))
    l2 = "mov ax, 0x10\n mov ds, ax\n vmmcall\n"
    img = nested_image("mov rax, rdi\n vmrun\n" + EXIT_PASS, l2,
                       vmcb12(cr3=0x30000, nested_ctl=1, n_cr3=root, gdtr=(0, 0, 0x47, gdt)))
    img.segments += guest_tables() + npt_segs
    out = io.StringIO()
    m = Machine(64 << 20, stdout=None, tracer=Tracer(frozenset({"exits"}), out),
                extensions=[SvmExtension()])
    m.load_multiboot(img, "npf")
    assert m.run(timeout=20).reason == "exit"
    vm = Vmcb(m.mem.view, VMCB12)
    assert vm.exitcode == VMEXIT_NPF
    assert (vm.exitinfo1, vm.exitinfo2) == (GPA_BIT | PF_U, gdt + 0x10)
    assert "no decoded access reproduces it" in out.getvalue()
