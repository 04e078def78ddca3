"""GuestMemory.code_path (a fetch translation with every entry it depends on) and the code-page
cache read_code keeps under nested paging.

Real page tables are built in a Machine's RAM for every paging mode (4-level with 4K/2M/1G pages,
PAE 4K/2M, legacy 32-bit 4K/4M with and without PSE, paging off), alone and under nested paging
(host 4-level, PAE or legacy; nested 4K, 2M or 1G pages), and the CPU context is set to that
world. Completeness is checked against the walker translate() has always used: every listed
entry is needed (clearing its P bit makes the fetch fault), and no other word of any table page
matters (inverting it leaves the translation alone), with every empty slot of every table
filled with a plausible entry so a walk that strayed would notice.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Optional

import pytest

from emu.arch.bits import (CR0_PE, CR0_PG, CR0_WP, CR4_PAE, CR4_PSE, CR4_SMEP, EFER_LMA,
                           EFER_LME, EFER_NXE)
from emu.engine.hw_switch import (CS, HF2_NPT, HF_CPL_MASK, HF_CS64, NPT_MODE_LMA, NPT_MODE_NXE,
                           NPT_MODE_PAE, OFF_CR, OFF_EFER, OFF_HFLAGS, OFF_HFLAGS2,
                           OFF_NESTED_CR3, OFF_NESTED_PG_MODE)
from emu.core.interrupts import Fault
from emu.core.machine import Machine
from emu.core.memory import CodePath, GuestMemory
from emu.arch.paging import NestedFault, PathEntry
from tests.test_paging import NX, PS, Mem, Tables

P, RW, US, A = 1, 2, 4, 0x20
RAM = 16 << 20
GUEST_HIGH = 8 << 20       # guest tables live at host-physical addresses from here
CODE_GPA = 0x300FF9        # 7 bytes before a page boundary: a 15-byte read crosses it
NESTED_REGION = 0x100000   # nested tables


class RamMem(Mem):
    """test_paging's allocator and accessors over a Machine's RAM; remembers its pages."""

    def __init__(self, ram, first_free: int) -> None:
        self.b = ram
        self.next = first_free
        self.writes = []
        self.pages: list[int] = []

    def alloc(self) -> int:
        pa = super().alloc()
        self.pages.append(pa)
        return pa


@dataclass(frozen=True)
class Case:
    name: str
    guest: str                    # "long", "pae", "legacy", "off"
    gsize: int = 4096             # guest page size
    pse: bool = False             # legacy: CR4.PSE
    host: Optional[str] = None    # nested table format; None: no nested paging
    nsize: int = 4096             # nested page size
    user: bool = False            # CPL 3


GUEST_VA = {  # page-aligned base of the guest mapping for each (mode, page size)
    ("long", 4096): 0xFFFF_A0C0_4030_0000, ("long", 2 << 20): 0x7F_8020_0000 - 0x200000,
    ("long", 1 << 30): 0x7F_C000_0000, ("pae", 4096): 0xC030_0000,
    ("pae", 2 << 20): 0x8000_0000, ("legacy", 4096): 0xC030_0000,
    ("legacy", 4 << 20): 0x8000_0000, ("off", 4096): 0,
}
CS_BASE32 = 0x10000

CASES = [
    Case("long-4k", "long"),
    Case("long-4k-user", "long", user=True),
    Case("long-2m", "long", 2 << 20),
    Case("long-1g", "long", 1 << 30),
    Case("pae-4k", "pae"),
    Case("pae-2m", "pae", 2 << 20),
    Case("legacy-4k-pse", "legacy", pse=True),
    Case("legacy-4m-pse", "legacy", 4 << 20, pse=True),
    Case("legacy-4k-nopse-ps-ignored", "legacy"),
    Case("off", "off"),
    Case("npt-long-4k/4k", "long", host="long"),
    Case("npt-long-4k/4k-user", "long", host="long", user=True),
    Case("npt-long-2m/2m", "long", 2 << 20, host="long", nsize=2 << 20),
    Case("npt-long-1g/1g", "long", 1 << 30, host="long", nsize=1 << 30),
    Case("npt-pae-2m/4k", "pae", 2 << 20, host="long"),
    Case("npt-legacy-4m/2m", "legacy", 4 << 20, pse=True, host="long", nsize=2 << 20),
    Case("npt-legacy-4k/4k", "legacy", host="long"),
    Case("npt-off/4k", "off", host="long"),
    Case("npt-long-4k/pae-2m", "long", host="pae", nsize=2 << 20),
    Case("npt-pae-4k/legacy-4k", "pae", host="legacy"),
    Case("npt-legacy-4k/legacy-4k", "legacy", host="legacy"),
]

HOST_MODE = {"long": NPT_MODE_LMA | NPT_MODE_PAE | NPT_MODE_NXE, "pae": NPT_MODE_PAE | NPT_MODE_NXE,
             "legacy": 0}


@dataclass
class Rig:
    case: Case
    m: Machine
    mem: RamMem
    rip: int
    va: int
    pa: int                        # where CODE_GPA's byte is in host RAM
    gt: Optional[Tables]
    npt: Optional[Tables]

    @property
    def gm(self) -> GuestMemory:
        return self.m.mem

    def snapshot(self) -> dict[int, bytes]:
        return {p: bytes(self.m.ram[p:p + 0x1000]) for p in self.mem.pages}

    def restore(self, snap: dict[int, bytes]) -> None:
        for p, data in snap.items():
            self.m.ram[p:p + 0x1000] = data

    def translate(self) -> int:
        return self.gm.translate(self.va, user=self.case.user, fetch=True)

    def outcome(self) -> object:
        """translate()'s answer for the fetch: a physical address or the fault's kind."""
        try:
            return self.translate()
        except Fault as f:
            return ("fault", f.vector)
        except NestedFault as nf:
            return ("npf", nf.exitinfo1, nf.gpa)


def set_world(m: Machine, *, cr0: int, cr3: int, cr4: int, efer: int, cpl: int, cs64: bool,
              cs_base: int, ncr3: Optional[int], nmode: int = 0) -> None:
    ctx = m.ctx.save()
    ctx.set_u64(OFF_CR, cr0)
    ctx.set_u64(OFF_CR + 24, cr3)
    ctx.set_u64(OFF_CR + 32, cr4)
    ctx.set_u64(OFF_EFER, efer)
    hf = ctx.hflags & ~(HF_CPL_MASK | HF_CS64)
    ctx.set_u32(OFF_HFLAGS, hf | cpl | (HF_CS64 if cs64 else 0))
    hf2 = ctx.u32(OFF_HFLAGS2) & ~HF2_NPT
    ctx.set_u32(OFF_HFLAGS2, hf2 | (HF2_NPT if ncr3 is not None else 0))
    ctx.set_u64(OFF_NESTED_CR3, ncr3 or 0)
    ctx.set_u32(OFF_NESTED_PG_MODE, nmode)
    cs = ctx.seg(CS)
    cs.base = cs_base
    ctx.set_seg(CS, cs)
    ctx.restore()


def fill_decoys(mem: RamMem, pages: list[int], width: int) -> None:
    """Every empty slot of a table page gets a copy of the page's first entry: a plausible
    entry that no correct walk of our address reads."""
    for p in pages:
        words = [int.from_bytes(mem.b[p + i:p + i + width], "little") for i in range(0, 4096, width)]
        first = next((w for w in words if w), 0)
        for i, w in enumerate(words):
            if not w:
                mem.b[p + i * width:p + (i + 1) * width] = first.to_bytes(width, "little")


def build(case: Case) -> Rig:
    m = Machine(RAM, stdout=None)
    mem = RamMem(m.ram, NESTED_REGION)
    nested = case.host is not None
    npt = Tables(mem, case.host) if nested else None
    npt_pages = list(mem.pages)
    # Guest-physical -> host-physical: identity under a nested 1G page, else [0, 8M) at 8M.
    goff = GUEST_HIGH if nested and case.nsize != 1 << 30 else 0
    mem.next = GUEST_HIGH + 0x1000
    gbase = GUEST_VA[(case.guest, case.gsize)]
    gt = None
    if case.guest == "off":
        va = CODE_GPA
    else:
        gt = Tables(mem, case.guest, offset=goff if nested else 0)
        leaf = P | RW | (US if case.user else 0)
        if case.gsize == 4096:
            for i in range(2):
                gt.map(gbase + 0x1000 * i, (CODE_GPA & ~0xFFF) + 0x1000 * i, flags=leaf)
            va = gbase + (CODE_GPA & 0xFFF)
            if case.guest == "legacy" and not case.pse:
                gt.set_bits(gbase, 2, PS)        # ignored without CR4.PSE
        else:
            gt.map(gbase, CODE_GPA & ~(case.gsize - 1), size=case.gsize, flags=leaf)
            va = gbase + (CODE_GPA & (case.gsize - 1))
    guest_pages = [p for p in mem.pages if p not in npt_pages]
    if nested:
        assert npt is not None
        mem.next = NESTED_REGION + 0x1000 * (len(npt_pages) + 1)
        nflags = P | RW | US
        if case.nsize == 4096:
            for hpa in guest_pages + [CODE_GPA + goff & ~0xFFF, (CODE_GPA + goff & ~0xFFF) + 0x1000]:
                npt.map(hpa - goff, hpa, flags=nflags)
        else:
            for gpa in range(0, max(GUEST_HIGH, case.nsize), case.nsize):
                npt.map(gpa, gpa + goff, size=case.nsize, flags=nflags)
        npt_pages = [p for p in mem.pages if p not in guest_pages]
    fill_decoys(mem, guest_pages, 4 if case.guest == "legacy" else 8)
    if nested:
        fill_decoys(mem, npt_pages, 4 if case.host == "legacy" else 8)
    pa = CODE_GPA + goff
    m.ram[pa - 0xFF9:pa + 0x1007] = bytes(range(256)) * 32       # the two code pages
    cs64 = case.guest == "long"
    cs_base = 0 if cs64 else CS_BASE32
    regs = {
        "long": (CR0_PE | CR0_PG | CR0_WP, CR4_PAE, EFER_LME | EFER_LMA | EFER_NXE),
        "pae": (CR0_PE | CR0_PG | CR0_WP, CR4_PAE, EFER_NXE),
        "legacy": (CR0_PE | CR0_PG | CR0_WP, CR4_PSE if case.pse else 0, 0),
        "off": (CR0_PE, 0, 0),
    }[case.guest]
    set_world(m, cr0=regs[0], cr3=gt.root if gt else 0, cr4=regs[1], efer=regs[2],
              cpl=3 if case.user else 0, cs64=cs64, cs_base=cs_base,
              ncr3=npt.root if npt else None, nmode=HOST_MODE[case.host] if nested else 0)
    rip = va if cs64 else va - cs_base
    return Rig(case, m, mem, rip, va, pa, gt, npt)


@pytest.fixture(params=CASES, ids=[c.name for c in CASES])
def rig(request) -> Rig:
    return build(request.param)


def _value(m: Machine, e: PathEntry) -> int:
    return int.from_bytes(m.ram[e.addr:e.addr + e.width], "little")


def test_path_is_the_translation(rig: Rig) -> None:
    path = rig.gm.code_path(rig.rip)
    assert isinstance(path, CodePath)
    assert (path.va, path.pa) == (rig.va, rig.pa) and path.pa == rig.translate()
    assert path.page_end == 7 and rig.gm.code_path(rig.rip + 7).page_end == 0x1000
    assert path.nested == (rig.case.host is not None) and path.user == rig.case.user
    # entries hold their values after the walk's Accessed updates; a re-check succeeds at once
    assert all(_value(rig.m, e) == e.value for e in path.entries)
    assert rig.gm.code_path(rig.rip) == path
    widths = {e.width for e in path.entries}
    want = {4 if rig.case.guest == "legacy" else 8} if rig.case.guest != "off" else set()
    if rig.case.host:
        want.add(4 if rig.case.host == "legacy" else 8)
    assert widths == want
    levels = {"long": 4, "pae": 3, "legacy": 2, "off": 0}[rig.case.guest]
    levels -= {4096: 0, 2 << 20: 1, 4 << 20: 1, 1 << 30: 2}[rig.case.gsize]
    guest = [e for e in path.entries if e.addr >= GUEST_HIGH and rig.case.host is not None
             or rig.case.host is None]
    if rig.case.host is None or rig.case.nsize != 1 << 30:
        assert len(guest) == levels


def test_every_listed_entry_is_needed(rig: Rig) -> None:
    path = rig.gm.code_path(rig.rip)
    assert path is not None and path.entries or rig.case.guest == "off"
    snap = rig.snapshot()
    for e in path.entries:
        rig.m.ram[e.addr:e.addr + e.width] = (e.value & ~P).to_bytes(e.width, "little")
        assert rig.outcome() != rig.pa, e
        assert rig.gm.code_path(rig.rip) is None, e
        rig.restore(snap)
    assert rig.gm.code_path(rig.rip) == path


def test_no_unlisted_word_matters(rig: Rig) -> None:
    """Invert every 4-byte word of every table page that no listed entry covers."""
    path = rig.gm.code_path(rig.rip)
    assert path is not None
    covered = {a for e in path.entries for a in range(e.addr, e.addr + e.width)}
    snap = rig.snapshot()
    checked = 0
    for page in rig.mem.pages:
        for a in range(page, page + 0x1000, 4):
            if a in covered:
                continue
            old = rig.m.ram[a:a + 4]
            rig.m.ram[a:a + 4] = bytes(b ^ 0xFF for b in old)
            assert rig.outcome() == rig.pa, hex(a)
            rig.m.ram[a:a + 4] = old
            checked += 1
    assert checked >= 1024 * len(rig.mem.pages) - len(covered) // 4
    assert rig.snapshot() == snap


def test_accessed_bits_recorded_after_update() -> None:
    rig = build(Case("npt-long-4k/4k", "long", host="long"))
    path = rig.gm.code_path(rig.rip)
    assert path is not None
    for e in path.entries:    # clear A everywhere on the path
        rig.m.ram[e.addr:e.addr + 8] = (e.value & ~A).to_bytes(8, "little")
    again = rig.gm.code_path(rig.rip)
    assert again == path and all(e.value & A for e in again.entries)


def test_inputs_and_fault_cases() -> None:
    rig = build(Case("long-4k-user", "long", user=True))
    path = rig.gm.code_path(rig.rip)
    assert path is not None and path.user
    assert path.cr0 == CR0_PG | CR0_WP and path.cr4 == CR4_PAE and path.efer == EFER_LMA | EFER_NXE
    assert path.inputs == (False, rig.gt.root, 0, path.cr0, path.cr4, path.efer, 0, True)
    # supervisor fetch of a user page under SMEP faults: no path
    set_world(rig.m, cr0=CR0_PE | CR0_PG | CR0_WP, cr3=rig.gt.root, cr4=CR4_PAE | CR4_SMEP,
              efer=EFER_LME | EFER_LMA | EFER_NXE, cpl=0, cs64=True, cs_base=0, ncr3=None)
    assert rig.gm.code_path(rig.rip) is None
    set_world(rig.m, cr0=CR0_PE | CR0_PG | CR0_WP, cr3=rig.gt.root, cr4=CR4_PAE,
              efer=EFER_LME | EFER_LMA | EFER_NXE, cpl=0, cs64=True, cs_base=0, ncr3=None)
    assert rig.gm.code_path(rig.rip).user is False
    assert rig.gm.code_path(0x0000_8000_0000_0000) is None      # non-canonical: #GP
    rig.gt.set_bits(rig.va, 1, NX)
    assert rig.gm.code_path(rig.rip) is None                    # NX page: #PF
    nrig = build(Case("npt-long-4k/4k", "long", host="long"))
    nrig.npt.clear_bits(CODE_GPA, 1, P)
    assert nrig.gm.code_path(nrig.rip) is None                  # #NPF


def _overlapping_pae(nested: bool) -> Rig:
    """PAE tables where one page is PDPT, PD and PT at once: PDPTE 0 points at its own page,
    so it doubles as PDE 0. The first fetch sets that entry's Accessed bit, which is reserved in
    a PDPTE, so the next walk faults: the walk has no stable path even though it succeeded."""
    rig = build(Case("npt-pae-4k/4k" if nested else "pae-4k", "pae",
                     host="long" if nested else None))
    goff = GUEST_HIGH if nested else 0
    root, root_hpa = rig.gt.root, rig.gt.root + goff
    rig.m.ram[root_hpa:root_hpa + 8] = (root | P).to_bytes(8, "little")
    pte = root_hpa + 8 * 0x12
    rig.m.ram[pte:pte + 8] = ((CODE_GPA & ~0xFFF) | P).to_bytes(8, "little")
    rig.va = 0x12000 + (CODE_GPA & 0xFFF)
    rig.rip = rig.va - CS_BASE32
    return rig


@pytest.mark.parametrize("nested", [False, True])
def test_unstable_path_is_none(nested: bool) -> None:
    rig = _overlapping_pae(nested)
    assert rig.gm.code_path(rig.rip) is None
    assert rig.outcome() == ("fault", 14)       # the A bit the first walk set is now reserved


def test_unstable_path_read_code_as_before() -> None:
    rig = _overlapping_pae(True)
    snap = rig.snapshot()
    want = [rig.gm.read_code_uncached(rig.rip, 15) for _ in range(2)]
    rig.restore(snap)
    assert [rig.gm.read_code(rig.rip, 15) for _ in range(2)] == want
    assert want[0] == bytes(rig.m.ram[rig.pa:rig.pa + 7]) and want[1] == b""


# --- read_code's cache --------------------------------------------------------------------------


def _result(fn: Callable[[], bytes]) -> object:
    try:
        return fn()
    except NestedFault as nf:
        return ("npf", nf.exitinfo1, nf.gpa)


NPT_CASES = [c for c in CASES if c.host is not None]


@pytest.mark.parametrize("case", NPT_CASES, ids=[c.name for c in NPT_CASES])
def test_read_code_matches_full_walk_under_random_changes(case: Case) -> None:
    """Random edits of the entries on the path (and of CPL/SMEP); after each, the cached
    read_code and the walk-every-time reference return the same bytes or #NPF and leave the
    tables in the same state (A bits), for reads that cross a page and reads that do not."""
    rig = build(case)
    rnd = random.Random(case.name)
    path = rig.gm.code_path(rig.rip)
    assert path is not None
    cells = [(e.addr, e.width) for e in path.entries]
    next_page = rig.gm.code_path(rig.rip + 7)
    cells += [(e.addr, e.width) for e in next_page.entries if (e.addr, e.width) not in cells]
    bits = [0, 1, 2, 5, 7, 12, 13, 21, 22, 63]
    cpl = 3 if case.user else 0
    gm = rig.gm
    calls = {"lookup": 0, "walk": 0}

    def counted(name: str, fn: Callable) -> Callable:
        def call(*args):
            calls[name] += 1
            return fn(*args)
        return call
    gm._code_pa = counted("lookup", gm._code_pa)        # type: ignore[method-assign]
    gm._fetch_walk = counted("walk", gm._fetch_walk)    # type: ignore[method-assign]
    initial = rig.snapshot()

    def compare(step: int) -> None:
        for rip, size in ((rig.rip, 15), (rig.rip, 3), (rig.rip + 7, 15)):
            snap = rig.snapshot()
            want = _result(lambda: gm.read_code_uncached(rip, size))
            after = rig.snapshot()
            rig.restore(snap)
            got = _result(lambda: gm.read_code(rip, size))
            assert got == want, (step, rip, size)
            assert rig.snapshot() == after, (step, rip, size)

    for step in range(300):
        if step % 8 == 0:
            rig.restore(initial)
        compare(step)
        if rnd.random() < 0.7:
            addr, width = rnd.choice(cells)
        else:                        # anywhere in the tables: usually off the path
            addr, width = rnd.choice(rig.mem.pages) + 4 * rnd.randrange(1024), 4
        bit = rnd.choice([b for b in bits if b < 8 * width])
        cur = int.from_bytes(rig.m.ram[addr:addr + width], "little")
        rig.m.ram[addr:addr + width] = (cur ^ (1 << bit)).to_bytes(width, "little")
        if rnd.random() < 0.1:
            cpl = 3 - cpl if rnd.random() < 0.5 else cpl
            regs = rig.m.ctx.save()
            set_world(rig.m, cr0=regs.cr(0), cr3=regs.cr(3), cr4=regs.cr(4) ^ (
                CR4_SMEP if rnd.random() < 0.5 else 0), efer=regs.efer, cpl=cpl,
                cs64=case.guest == "long", cs_base=regs.seg(CS).base,
                ncr3=regs.u64(OFF_NESTED_CR3), nmode=regs.u32(OFF_NESTED_PG_MODE))
        compare(step)
        if rnd.random() < 0.85:
            rig.m.ram[addr:addr + width] = cur.to_bytes(width, "little")
    hits = calls["lookup"] - calls["walk"]     # lookups the remembered path answered
    assert hits > 200 and calls["walk"] > 300, calls


def test_read_code_revalidates() -> None:
    rig = build(Case("npt-long-4k/4k", "long", host="long"))
    gm = rig.gm
    code = gm.read_code(rig.rip, 15)
    assert code == bytes(rig.m.ram[rig.pa:rig.pa + 15]) and len(gm._code_cache) == 2
    assert gm.read_code(rig.rip, 15) == code
    # the guest remaps its code page: the next read sees the new page
    other = 0x302000
    rig.npt.map(other, other + GUEST_HIGH, flags=P | RW | US)
    rig.m.ram[other + GUEST_HIGH + 0xFF9:other + GUEST_HIGH + 0x1000] = b"ABCDEFG"
    pte = rig.gt.entry_addr(rig.va, 1)
    rig.gt.put(pte, rig.gt.get(pte) & 0xFFF | other)
    assert gm.read_code(rig.rip, 15) == b"ABCDEFG" + code[7:]
    # the guest clears the Accessed bit: the read sets it again, as a walk always did
    rig.gt.put(pte, rig.gt.get(pte) & ~A)
    gm.read_code(rig.rip, 15)
    assert rig.gt.get(pte) & A
    # L1 unmaps the page in the nested table: #NPF, even though the page was cached
    rig.npt.clear_bits(other, 1, P)
    with pytest.raises(NestedFault):
        gm.read_code(rig.rip, 15)
    rig.npt.set_bits(other, 1, P)
    # a user fetch of a supervisor page stops at once, cached supervisor translation or not
    assert gm.read_code(rig.rip, 15) == b"ABCDEFG" + code[7:]
    set_world(rig.m, cr0=CR0_PE | CR0_PG | CR0_WP, cr3=rig.gt.root, cr4=CR4_PAE,
              efer=EFER_LME | EFER_LMA | EFER_NXE, cpl=3, cs64=True, cs_base=0,
              ncr3=rig.npt.root, nmode=HOST_MODE["long"])
    assert gm.read_code(rig.rip, 15) == b""


def test_real_l2_world() -> None:
    """An L2 stopped under nested paging by a real VMRUN: code_path agrees with translate and
    read_code with the full walk, through the world svm_ext built."""
    from tests.test_memquery import l2_machine
    m, _ = l2_machine("architectural", npt=True)
    ctx = m.ctx.save()
    rip = ctx.u64(128)
    path = m.mem.code_path(rip)
    assert path is not None and path.nested and path.ncr3 == 0x20000
    assert path.pa == m.mem.translate(path.va, fetch=True)
    assert all(_value(m, e) == e.value for e in path.entries)
    assert m.mem.read_code(rip, 15) == m.mem.read_code_uncached(rip, 15) == m.mem.read_code(rip, 15)


def test_walk_with_path_pure() -> None:
    """emu.arch.paging.walk_with_path on a bytearray: with no write callback nothing is written and the
    path holds the values as they are; with one, the values after the Accessed updates."""
    from emu.arch.paging import FETCH, walk, walk_with_path
    from tests.test_paging import long_regs
    mem = Mem()
    tb = Tables(mem, "long")
    tb.map(0x40001000, 0x9000)
    regs = long_regs(tb.root)
    pa, path = walk_with_path(mem.r64, regs, 0x40001234, FETCH)
    assert pa == 0x9234 == walk(mem.r64, regs, 0x40001234, FETCH).pa and not mem.writes
    assert [e.addr for e in path] == [s.addr for s in walk(mem.r64, regs, 0x40001234).walk]
    assert not any(e.value & A for e in path) and {e.width for e in path} == {8}
    pa2, path2 = walk_with_path(mem.r64, regs, 0x40001234, FETCH, write_u64=mem.w64)
    assert pa2 == pa and len(mem.writes) == 4
    assert [(e.addr, e.value) for e in path2] == [(e.addr, e.value | A) for e in path]
