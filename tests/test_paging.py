"""Tests for emu/arch/paging.py: page tables are built by hand in a bytearray for each mode, and the
expected error codes are written from the APM (vol. 2, 8.4.2; 15.25.6), not from the walker."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emu.arch.bits import (
    CR0_PG,
    CR0_WP,
    CR4_LA57,
    CR4_PAE,
    CR4_PSE,
    CR4_SMAP,
    CR4_SMEP,
    EFER_LMA,
    EFER_LME,
    EFER_NXE,
)
from emu.errors import Unsupported
from emu.arch.paging import (
    FETCH,
    READ,
    WRITE,
    Access,
    NestedFault,
    NonCanonicalAddress,
    PageFault,
    PagingMode,
    PagingRegs,
    walk,
    walk_2d,
    walk_nested,
)

P, RW, US, PWT, PCD, A, D, PS, G = 1, 2, 4, 8, 0x10, 0x20, 0x40, 0x80, 0x100
PAT4K, PATL = 0x80, 0x1000
NX = 1 << 63
GUEST_PAGE, GUEST_TABLE = 1 << 32, 1 << 33

MEM_SIZE = 8 << 20


class Mem:
    """Host physical memory: a bytearray with a page allocator and a log of writes."""

    def __init__(self, size: int = MEM_SIZE, first_free: int = 0x1000) -> None:
        self.b = bytearray(size)
        self.next = first_free
        self.writes: list[tuple[int, int]] = []

    def alloc(self) -> int:
        pa = self.next
        self.next += 0x1000
        assert self.next <= len(self.b)
        return pa

    def r64(self, a: int) -> int:
        return int.from_bytes(self.b[a : a + 8], "little")

    def r32(self, a: int) -> int:
        return int.from_bytes(self.b[a : a + 4], "little")

    def w64(self, a: int, v: int) -> None:
        self.writes.append((a, v))
        self.b[a : a + 8] = v.to_bytes(8, "little")

    def w32(self, a: int, v: int) -> None:
        self.writes.append((a, v))
        self.b[a : a + 4] = v.to_bytes(4, "little")


class Tables:
    """Builds tables of one format. ``offset`` lets the tables live in a guest-physical space
    that nested paging maps at host address gpa + offset (entries hold GPAs)."""

    def __init__(self, mem: Mem, mode: str, offset: int = 0) -> None:
        self.mem, self.mode, self.offset = mem, mode, offset
        self.width = 4 if mode == "legacy" else 8
        self.root = self._new_table()
        # (level, shift, index mask)
        self.levels = {
            "long": [(4, 39, 0x1FF), (3, 30, 0x1FF), (2, 21, 0x1FF), (1, 12, 0x1FF)],
            "pae": [(3, 30, 0x3), (2, 21, 0x1FF), (1, 12, 0x1FF)],
            "legacy": [(2, 22, 0x3FF), (1, 12, 0x3FF)],
        }[mode]

    def _new_table(self) -> int:
        return self.mem.alloc() - self.offset

    def get(self, addr: int) -> int:
        if self.width == 8:
            return self.mem.r64(addr + self.offset)
        return self.mem.r32(addr + self.offset)

    def put(self, addr: int, v: int) -> None:
        a = addr + self.offset
        if self.width == 8:
            self.mem.b[a : a + 8] = v.to_bytes(8, "little")
        else:
            self.mem.b[a : a + 4] = v.to_bytes(4, "little")

    def entry_addr(self, va: int, level: int) -> int:
        """Address of the entry for ``va`` at ``level`` (tables must exist down to it)."""
        table = self.root
        for lv, shift, mask in self.levels:
            addr = table + ((va >> shift) & mask) * self.width
            if lv == level:
                return addr
            table = self.get(addr) & 0x000FFFFFFFFFF000 if self.width == 8 else self.get(addr) & ~0xFFF
        raise KeyError(level)

    def map(
        self,
        va: int,
        pa: int,
        *,
        size: int = 4096,
        flags: int = P | RW,
        table_flags: int = P | RW | US,
    ) -> None:
        leaf_level = {4096: 1, 2 << 20: 2, 4 << 20: 2, 1 << 30: 3}[size]
        table = self.root
        for lv, shift, mask in self.levels:
            addr = table + ((va >> shift) & mask) * self.width
            if lv == leaf_level:
                big = PS if lv > 1 else 0
                self.put(addr, pa | flags | big)
                return
            cur = self.get(addr)
            if not cur & P:
                # a legacy-PAE PDPE has only P: R/W and U/S are reserved there
                fl = P if (self.mode == "pae" and lv == 3) else table_flags
                cur = self._new_table() | fl
                self.put(addr, cur)
            table = cur & (0x000FFFFFFFFFF000 if self.width == 8 else 0xFFFFF000)

    def set_bits(self, va: int, level: int, bits: int) -> None:
        a = self.entry_addr(va, level)
        self.put(a, self.get(a) | bits)

    def clear_bits(self, va: int, level: int, bits: int) -> None:
        a = self.entry_addr(va, level)
        self.put(a, self.get(a) & ~bits)


def long_regs(cr3: int, *, nxe: bool = True, wp: bool = True, cr4: int = 0) -> PagingRegs:
    return PagingRegs(
        cr0=CR0_PG | (CR0_WP if wp else 0),
        cr3=cr3,
        cr4=CR4_PAE | cr4,
        efer=EFER_LME | EFER_LMA | (EFER_NXE if nxe else 0),
    )


def pae_regs(cr3: int, *, nxe: bool = True, wp: bool = True, cr4: int = 0) -> PagingRegs:
    return PagingRegs(
        cr0=CR0_PG | (CR0_WP if wp else 0),
        cr3=cr3,
        cr4=CR4_PAE | cr4,
        efer=EFER_NXE if nxe else 0,
    )


def legacy_regs(cr3: int, *, pse: bool = True, wp: bool = True, cr4: int = 0) -> PagingRegs:
    return PagingRegs(
        cr0=CR0_PG | (CR0_WP if wp else 0),
        cr3=cr3,
        cr4=(CR4_PSE if pse else 0) | cr4,
        efer=0,
    )


def do(mem: Mem, regs: PagingRegs, va: int, access: Access = READ, **kw):
    return walk(mem.r64, regs, va, access, read_u32=mem.r32, **kw)


def fault(mem: Mem, regs: PagingRegs, va: int, access: Access = READ, **kw) -> PageFault:
    with pytest.raises(PageFault) as ei:
        do(mem, regs, va, access, **kw)
    return ei.value


U_READ = Access(user=True)
U_WRITE = Access(write=True, user=True)
U_FETCH = Access(fetch=True, user=True)


# --- modes -----------------------------------------------------------------------------------


def test_mode_selection() -> None:
    assert PagingRegs(0, 0, 0, 0).mode is PagingMode.OFF
    assert legacy_regs(0).mode is PagingMode.LEGACY
    assert pae_regs(0).mode is PagingMode.PAE
    assert long_regs(0).mode is PagingMode.LONG4
    with pytest.raises(Unsupported):
        _ = long_regs(0, cr4=CR4_LA57).mode


def test_paging_off_is_identity() -> None:
    mem = Mem()
    t = do(mem, PagingRegs(0, 0, 0, 0), 0x12345678, WRITE)
    assert (t.pa, t.level, t.pat_index, t.walk) == (0x12345678, 0, None, ())
    assert mem.writes == []


# --- long mode ---------------------------------------------------------------------------------


def test_long_4k_translation_and_walk() -> None:
    mem = Mem()
    tb = Tables(mem, "long")
    va = 0x0000_7F12_3456_7000
    tb.map(va, 0x0ABC_D000, flags=P | RW | US | PCD)
    t = do(mem, long_regs(tb.root), va + 0x123)
    assert t.pa == 0x0ABC_D123
    assert t.page_size == 4096 and t.level == 1
    assert [s.level for s in t.walk] == [4, 3, 2, 1]
    assert t.walk[0].addr == tb.root + ((va >> 39) & 0x1FF) * 8
    assert t.pat_index == 2  # PCD only
    assert t.user and t.writable and not t.nx


def test_long_pat_index_bits() -> None:
    mem = Mem()
    tb = Tables(mem, "long")
    tb.map(0x1000, 0x5000, flags=P | PAT4K | PWT)
    tb.map(0x40000000, 0x200000, size=2 << 20, flags=P | PATL | PCD | PWT)
    tb.map(0x80000000, 0x40000000, size=1 << 30, flags=P | PATL)
    regs = long_regs(tb.root)
    assert do(mem, regs, 0x1000).pat_index == 5
    t2 = do(mem, regs, 0x40000000 + 0x12345)
    assert (t2.pa, t2.page_size, t2.level, t2.pat_index) == (0x212345, 2 << 20, 2, 7)
    t1 = do(mem, regs, 0x80000000 + 0x3456789)
    assert (t1.pa, t1.page_size, t1.level, t1.pat_index) == (0x43456789, 1 << 30, 3, 4)
    # In a large page bit 7 is PS, not PAT: a 2M page without bit 12 is index 0.
    tb.map(0x40200000, 0x400000, size=2 << 20, flags=P)
    assert do(mem, regs, 0x40200000).pat_index == 0


def test_long_non_canonical() -> None:
    mem = Mem()
    tb = Tables(mem, "long")
    with pytest.raises(NonCanonicalAddress):
        do(mem, long_regs(tb.root), 0x0000_8000_0000_0000)
    # canonical high half walks (and faults not-present)
    f = fault(mem, long_regs(tb.root), 0xFFFF_8000_0000_0000)
    assert f.error_code == 0


@pytest.mark.parametrize("missing", [4, 3, 2, 1])
@pytest.mark.parametrize(
    "access,code", [(READ, 0), (WRITE, 2), (U_READ, 4), (U_WRITE, 6), (FETCH, 0x10), (U_FETCH, 0x14)]
)
def test_long_not_present_each_level(missing: int, access: Access, code: int) -> None:
    mem = Mem()
    tb = Tables(mem, "long")
    va = 0x0000_0040_1020_3000
    tb.map(va, 0x9000, flags=P | RW | US)
    tb.clear_bits(va, missing, P)
    f = fault(mem, long_regs(tb.root), va, access)
    assert f.error_code == code
    assert f.address == va
    assert f.level == missing
    assert f.final == (missing == 1)
    assert len(f.walk) == 5 - missing


def test_long_not_present_with_ps_is_a_table_walk_fault() -> None:
    mem = Mem()
    tb = Tables(mem, "long")
    tb.map(0x200000, 0x400000, size=2 << 20, flags=RW | PS)  # P clear
    # Not present: PS is meaningless, so this is a table-walk fault at level 2.
    f = fault(mem, long_regs(tb.root), 0x200000)
    assert (f.level, f.final) == (2, False)


@pytest.mark.parametrize(
    "level,bit,maxphy,rsv",
    [
        # physical-address bits above MAXPHYADDR, at every level
        (4, 40, 40, True), (3, 40, 40, True), (2, 40, 40, True), (1, 40, 40, True),
        (1, 40, 48, False), (1, 47, 48, False), (1, 48, 48, True), (4, 51, 48, True),
        (1, 51, 52, False),
        # 62:52 are available in long mode
        (1, 52, 40, False), (2, 58, 40, False), (4, 62, 40, False),
        # PML4E bits 8:7 MBZ
        (4, 7, 40, True), (4, 8, 40, True),
        # PDPE/PDE/PTE bit 8 (G / ignored) is not reserved
        (3, 8, 40, False), (2, 8, 40, False), (1, 8, 40, False),
    ],
)
def test_long_reserved_bits(level: int, bit: int, maxphy: int, rsv: bool) -> None:
    mem = Mem()
    tb = Tables(mem, "long")
    va = 0x0000_0001_0020_3000
    tb.map(va, 0x9000, flags=P | RW)
    tb.set_bits(va, level, 1 << bit)
    if rsv:
        f = fault(mem, long_regs(tb.root), va, WRITE, maxphyaddr=maxphy)
        assert f.error_code == 0b1011  # P | W | RSV
        assert f.level == level
        assert len(f.walk) == 5 - level
    else:
        do(mem, long_regs(tb.root), va, WRITE, maxphyaddr=maxphy)


def test_long_large_page_reserved_low_bits() -> None:
    mem = Mem()
    tb = Tables(mem, "long")
    tb.map(0x200000, 0x400000, size=2 << 20)
    tb.map(0x40000000, 0x40000000, size=1 << 30)
    regs = long_regs(tb.root)
    for bit in (13, 20):
        tb.set_bits(0x200000, 2, 1 << bit)
        f = fault(mem, regs, 0x200000)
        assert (f.error_code, f.level, f.final) == (0b1001, 2, True)
        tb.clear_bits(0x200000, 2, 1 << bit)
    do(mem, regs, 0x200000)
    for bit in (13, 21, 29):
        tb.set_bits(0x40000000, 3, 1 << bit)
        f = fault(mem, regs, 0x40000000, U_READ)
        assert (f.error_code, f.level, f.final) == (0b1101, 3, True)
        tb.clear_bits(0x40000000, 3, 1 << bit)
    do(mem, regs, 0x40000000)
    # Without 1-GB page support the PS bit of a PDPE is itself reserved.
    f = fault(mem, regs, 0x40000000, gbpages=False)
    assert f.error_code == 0b1001 and f.level == 3


@pytest.mark.parametrize("level", [4, 3, 2, 1])
def test_nx_bit_reserved_without_nxe(level: int) -> None:
    mem = Mem()
    tb = Tables(mem, "long")
    tb.map(0x5000, 0x9000)
    tb.set_bits(0x5000, level, NX)
    f = fault(mem, long_regs(tb.root, nxe=False), 0x5000)
    assert f.error_code == 0b1001 and f.level == level
    # With NXE the same tables are fine for data...
    do(mem, long_regs(tb.root, nxe=True), 0x5000, WRITE)
    # ...and refuse fetches, at whatever level NX was set.
    f = fault(mem, long_regs(tb.root, nxe=True), 0x5000, FETCH)
    assert f.error_code == 0x11 and f.final and f.level == 1


def test_fetch_without_nx_is_allowed_and_id_only_with_nxe() -> None:
    mem = Mem()
    tb = Tables(mem, "long")
    tb.map(0x5000, 0x9000, flags=P)  # supervisor, read-only, executable
    do(mem, long_regs(tb.root), 0x5000, FETCH)
    # a user fetch from a supervisor page: P|U|ID with NXE, P|U without (ID undefined -> 0)
    assert fault(mem, long_regs(tb.root), 0x5000, U_FETCH).error_code == 0x15
    assert fault(mem, long_regs(tb.root, nxe=False), 0x5000, U_FETCH).error_code == 0x05


def test_rights_combine_across_levels() -> None:
    mem = Mem()
    tb = Tables(mem, "long")
    tb.map(0x5000, 0x9000, flags=P | RW | US)
    tb.clear_bits(0x5000, 3, RW)  # read-only at the PDPE
    t = do(mem, long_regs(tb.root), 0x5000, U_READ)
    assert t.user and not t.writable
    assert fault(mem, long_regs(tb.root), 0x5000, U_WRITE).error_code == 0x07
    tb.clear_bits(0x5000, 4, US)  # supervisor at the PML4E
    assert fault(mem, long_regs(tb.root), 0x5000, U_READ).error_code == 0x05


def test_cr0_wp() -> None:
    mem = Mem()
    tb = Tables(mem, "long")
    tb.map(0x5000, 0x9000, flags=P)  # supervisor read-only
    tb.map(0x6000, 0xA000, flags=P | US)  # user read-only
    for va in (0x5000, 0x6000):
        do(mem, long_regs(tb.root, wp=False), va, WRITE)
        f = fault(mem, long_regs(tb.root, wp=True), va, WRITE)
        assert (f.error_code, f.final, f.level) == (0x03, True, 1)
    # user writes to read-only pages fault whatever WP says
    assert fault(mem, long_regs(tb.root, wp=False), 0x6000, U_WRITE).error_code == 0x07


def test_smep() -> None:
    mem = Mem()
    tb = Tables(mem, "long")
    tb.map(0x6000, 0xA000, flags=P | US)
    do(mem, long_regs(tb.root), 0x6000, FETCH)
    f = fault(mem, long_regs(tb.root, cr4=CR4_SMEP), 0x6000, FETCH)
    assert f.error_code == 0x11
    # SMEP reports ID even with NXE off (our choice where the APM leaves ID undefined)
    f = fault(mem, long_regs(tb.root, nxe=False, cr4=CR4_SMEP), 0x6000, FETCH)
    assert f.error_code == 0x11
    # user fetches and supervisor data accesses are not SMEP's business
    do(mem, long_regs(tb.root, cr4=CR4_SMEP), 0x6000, U_FETCH)
    do(mem, long_regs(tb.root, cr4=CR4_SMEP), 0x6000, READ)


def test_smap() -> None:
    mem = Mem()
    tb = Tables(mem, "long")
    tb.map(0x6000, 0xA000, flags=P | US | RW)
    tb.map(0x7000, 0xB000, flags=P | US)
    tb.map(0x8000, 0xC000, flags=P | RW)
    regs = long_regs(tb.root, cr4=CR4_SMAP)
    assert fault(mem, regs, 0x6000, READ).error_code == 0x01
    assert fault(mem, regs, 0x6000, WRITE).error_code == 0x03
    do(mem, regs, 0x6000, Access(ac=True))
    do(mem, regs, 0x6000, Access(write=True, ac=True))
    # AC does not override WP on a read-only user page
    assert fault(mem, regs, 0x7000, Access(write=True, ac=True)).error_code == 0x03
    # supervisor pages, user accesses and fetches are not SMAP's business
    do(mem, regs, 0x8000, WRITE)
    do(mem, regs, 0x6000, U_WRITE)
    do(mem, regs, 0x6000, FETCH)


def test_access_write_and_fetch_exclusive() -> None:
    with pytest.raises(ValueError):
        Access(write=True, fetch=True)


# --- A/D ----------------------------------------------------------------------------------------


def test_long_accessed_dirty() -> None:
    mem = Mem()
    tb = Tables(mem, "long")
    va = 0x0000_0040_1020_3000
    tb.map(va, 0x9000, flags=P | RW)
    regs = long_regs(tb.root)
    addrs = [tb.entry_addr(va, lv) for lv in (4, 3, 2, 1)]
    # no write callback: nothing changes
    do(mem, regs, va, WRITE)
    assert all(not tb.get(a) & (A | D) for a in addrs)
    do(mem, regs, va, READ, write_u64=mem.w64)
    assert all(tb.get(a) & A for a in addrs)
    assert all(not tb.get(a) & D for a in addrs)
    n = len(mem.writes)
    do(mem, regs, va, READ, write_u64=mem.w64)
    assert len(mem.writes) == n  # nothing to change, nothing written
    do(mem, regs, va, WRITE, write_u64=mem.w64)
    assert tb.get(addrs[3]) & D
    assert all(not tb.get(a) & D for a in addrs[:3])


def test_no_ad_update_on_fault() -> None:
    mem = Mem()
    tb = Tables(mem, "long")
    tb.map(0x5000, 0x9000, flags=P)  # read-only
    regs = long_regs(tb.root)
    fault(mem, regs, 0x5000, WRITE, write_u64=mem.w64)
    assert mem.writes == []
    tb.map(0x6000, 0xA000, flags=RW)  # not present PTE, upper levels present
    fault(mem, regs, 0x6000, READ, write_u64=mem.w64)
    assert mem.writes == []


def test_large_page_dirty_on_leaf() -> None:
    mem = Mem()
    tb = Tables(mem, "long")
    tb.map(0x200000, 0x400000, size=2 << 20, flags=P | RW)
    do(mem, long_regs(tb.root), 0x201000, WRITE, write_u64=mem.w64)
    pde = tb.get(tb.entry_addr(0x200000, 2))
    assert pde & (A | D) == A | D
    assert not tb.get(tb.entry_addr(0x200000, 3)) & D


# --- PAE ----------------------------------------------------------------------------------------


def test_pae_4k_and_2m() -> None:
    mem = Mem()
    tb = Tables(mem, "pae")
    tb.map(0xC0001000, 0x7654000, flags=P | RW | US | PWT)
    tb.map(0x40200000, 0x600000, size=2 << 20, flags=P | PATL)
    regs = pae_regs(tb.root)
    t = do(mem, regs, 0xC0001ABC, U_WRITE)
    assert (t.pa, t.level, t.pat_index) == (0x7654ABC, 1, 1)
    assert [s.level for s in t.walk] == [3, 2, 1]
    assert t.walk[0].addr == tb.root + 3 * 8
    t = do(mem, regs, 0x40212345)
    assert (t.pa, t.page_size, t.pat_index) == (0x612345, 2 << 20, 4)


def test_pae_pdpte_has_no_rights_and_no_accessed_bit() -> None:
    mem = Mem()
    tb = Tables(mem, "pae")
    tb.map(0x1000, 0x9000, flags=P | RW | US)
    regs = pae_regs(tb.root)
    do(mem, regs, 0x1000, U_WRITE, write_u64=mem.w64)
    assert not tb.get(tb.entry_addr(0x1000, 3)) & A
    assert tb.get(tb.entry_addr(0x1000, 2)) & A
    assert tb.get(tb.entry_addr(0x1000, 1)) & (A | D) == A | D


@pytest.mark.parametrize("bit", [1, 2, 5, 6, 7, 8, 63, 40, 52, 62])
def test_pae_pdpte_reserved(bit: int) -> None:
    mem = Mem()
    tb = Tables(mem, "pae")
    tb.map(0x1000, 0x9000)
    tb.set_bits(0x1000, 3, 1 << bit)
    f = fault(mem, pae_regs(tb.root, nxe=True), 0x1000)
    assert (f.error_code, f.level, f.final) == (0b1001, 3, False)


@pytest.mark.parametrize(
    "level,bit,nxe,rsv",
    [
        (2, 52, True, True), (1, 62, True, True), (1, 40, True, True), (1, 39, True, False),
        (1, 63, False, True), (2, 63, False, True), (1, 63, True, False),
        (1, 8, True, False),
    ],
)
def test_pae_pde_pte_reserved(level: int, bit: int, nxe: bool, rsv: bool) -> None:
    mem = Mem()
    tb = Tables(mem, "pae")
    tb.map(0x1000, 0x9000)
    tb.set_bits(0x1000, level, 1 << bit)
    if rsv:
        f = fault(mem, pae_regs(tb.root, nxe=nxe), 0x1000)
        assert f.error_code == 0b1001 and f.level == level
    else:
        do(mem, pae_regs(tb.root, nxe=nxe), 0x1000)


def test_pae_2m_reserved_and_nx() -> None:
    mem = Mem()
    tb = Tables(mem, "pae")
    tb.map(0x200000, 0x400000, size=2 << 20, flags=P | NX)
    regs = pae_regs(tb.root)
    do(mem, regs, 0x200000)
    assert fault(mem, regs, 0x200000, FETCH).error_code == 0x11
    tb.set_bits(0x200000, 2, 1 << 13)
    assert fault(mem, regs, 0x200000).error_code == 0b1001


# --- legacy 32-bit -------------------------------------------------------------------------------


def test_legacy_4k() -> None:
    mem = Mem()
    tb = Tables(mem, "legacy")
    tb.map(0xC0401000, 0x123000, flags=P | RW | US | PAT4K | PCD)
    t = do(mem, legacy_regs(tb.root), 0xC0401FFF, U_WRITE)
    assert (t.pa, t.level, t.page_size, t.pat_index) == (0x123FFF, 1, 4096, 6)
    assert [s.level for s in t.walk] == [2, 1]
    assert t.walk[0].addr == tb.root + (0xC0401000 >> 22) * 4


def test_legacy_4m_pse36() -> None:
    mem = Mem()
    tb = Tables(mem, "legacy")
    # PA bits 39:32 live in PDE bits 20:13
    pa_hi = 0x5A
    tb.map(0x00400000, 0x00C00000 | (pa_hi << 13), size=4 << 20, flags=P | RW | PATL | PWT)
    t = do(mem, legacy_regs(tb.root), 0x00412345)
    assert t.pa == (pa_hi << 32) | 0x00C12345
    assert (t.page_size, t.level, t.pat_index) == (4 << 20, 2, 5)
    # bit 21 is always reserved
    tb.set_bits(0x00400000, 2, 1 << 21)
    f = fault(mem, legacy_regs(tb.root), 0x00400000, U_READ)
    assert (f.error_code, f.level, f.final) == (0b1101, 2, True)


def test_legacy_4m_reserved_above_maxphyaddr() -> None:
    mem = Mem()
    tb = Tables(mem, "legacy")
    tb.map(0x00400000, 0x00C00000 | (1 << 17), size=4 << 20)  # PA bit 36
    do(mem, legacy_regs(tb.root), 0x00400000, maxphyaddr=40)
    f = fault(mem, legacy_regs(tb.root), 0x00400000, maxphyaddr=36)
    assert f.error_code == 0b1001
    do(mem, legacy_regs(tb.root), 0x00400000, maxphyaddr=37)


def test_legacy_ps_ignored_without_pse() -> None:
    mem = Mem()
    tb = Tables(mem, "legacy")
    tb.map(0x1000, 0x9000)
    tb.set_bits(0x1000, 2, PS)
    t = do(mem, legacy_regs(tb.root, pse=False), 0x1000)
    assert (t.pa, t.level) == (0x9000, 1)


def test_legacy_faults_and_ad() -> None:
    mem = Mem()
    tb = Tables(mem, "legacy")
    tb.map(0x1000, 0x9000, flags=P | US)
    regs = legacy_regs(tb.root)
    ad = dict(write_u64=mem.w64, write_u32=mem.w32)
    assert fault(mem, regs, 0x1000, U_WRITE, **ad).error_code == 0x07
    # no NX in legacy paging: ID never reported without SMEP
    tb.map(0x2000, 0xA000, flags=P)
    assert fault(mem, regs, 0x2000, U_FETCH).error_code == 0x05
    assert fault(mem, legacy_regs(tb.root, cr4=CR4_SMEP), 0x1000, FETCH).error_code == 0x11
    assert fault(mem, regs, 0x400000).error_code == 0  # PDE not present
    tb.map(0x3000, 0xB000, flags=P | RW)
    do(mem, regs, 0x3000, WRITE, write_u64=mem.w64, write_u32=mem.w32)
    assert tb.get(tb.entry_addr(0x3000, 2)) & (A | D) == A
    assert tb.get(tb.entry_addr(0x3000, 1)) & (A | D) == A | D
    assert not tb.get(tb.entry_addr(0x1000, 1)) & A  # faulting accesses set nothing
    assert all(v < (1 << 32) for _, v in mem.writes)


def test_legacy_without_read_u32() -> None:
    mem = Mem()
    tb = Tables(mem, "legacy")
    tb.map(0x1000, 0x9000)
    assert walk(mem.r64, legacy_regs(tb.root), 0x1234).pa == 0x9234


# --- nested and two-dimensional walks ------------------------------------------------------------


def test_walk_nested_basic_and_faults() -> None:
    mem = Mem()
    npt = Tables(mem, "long")
    npt.map(0x10000, 0x20000, flags=P | RW | US)
    npt.map(0x11000, 0x21000, flags=P | US)  # read-only
    npt.map(0x12000, 0x22000, flags=P | RW)  # supervisor: nested accesses are user accesses
    npt.map(0x13000, 0x23000, flags=P | RW | US | NX)
    t = walk_nested(mem.r64, npt.root, 0x10ABC, WRITE)
    assert t.pa == 0x20ABC and [s.level for s in t.walk] == [4, 3, 2, 1]

    def npf(gpa: int, access: Access, **kw) -> NestedFault:
        with pytest.raises(NestedFault) as ei:
            walk_nested(mem.r64, npt.root, gpa, access, **kw)
        return ei.value

    f = npf(0x11000, WRITE)
    assert f.exitinfo1 == GUEST_PAGE | 0x07 and f.exitinfo2 == 0x11000
    assert f.guest_page and not f.guest_table and f.final and f.level == 1
    assert npf(0x12000, READ).exitinfo1 == GUEST_PAGE | 0x05
    assert npf(0x13000, FETCH).exitinfo1 == GUEST_PAGE | 0x15
    f = npf(0x4000_0000, READ)
    assert f.exitinfo1 == GUEST_PAGE | 0x04 and f.level == 3 and not f.final
    assert npf(0x4000_0000, READ, guest_table=True).exitinfo1 == GUEST_TABLE | 0x04
    # reserved bit in the nested table
    npt.set_bits(0x10000, 1, 1 << 45)
    assert npf(0x10000, READ).exitinfo1 == GUEST_PAGE | 0x0D
    walk_nested(mem.r64, npt.root, 0x10000, READ, maxphyaddr=48)


def test_walk_nested_host_without_nxe() -> None:
    mem = Mem()
    npt = Tables(mem, "long")
    npt.map(0x13000, 0x23000, flags=P | RW | US | NX)
    host = long_regs(0, nxe=False)
    with pytest.raises(NestedFault) as ei:
        walk_nested(mem.r64, npt.root, 0x13000, READ, host=host)
    assert ei.value.exitinfo1 == GUEST_PAGE | 0x0D


def test_walk_nested_accessed_dirty() -> None:
    mem = Mem()
    npt = Tables(mem, "long")
    npt.map(0x10000, 0x20000, flags=P | RW | US)
    walk_nested(mem.r64, npt.root, 0x10000, READ, write_u64=mem.w64)
    assert npt.get(npt.entry_addr(0x10000, 1)) & (A | D) == A
    walk_nested(mem.r64, npt.root, 0x10000, WRITE, write_u64=mem.w64)
    assert npt.get(npt.entry_addr(0x10000, 1)) & (A | D) == A | D


GPA_OFFSET = 4 << 20  # nested paging maps GPA [0, 4M) at HPA [4M, 8M)


def two_d_setup(guest_mode: str = "long"):
    mem = Mem()
    npt = Tables(mem, "long")
    npt.map(0, GPA_OFFSET, size=2 << 20, flags=P | RW | US)
    npt.map(2 << 20, GPA_OFFSET + (2 << 20), size=2 << 20, flags=P | RW | US)
    mem.next = GPA_OFFSET + 0x1000  # guest tables live in guest-physical memory
    gt = Tables(mem, guest_mode, offset=GPA_OFFSET)
    regs = {"long": long_regs, "pae": pae_regs, "legacy": legacy_regs}[guest_mode](gt.root)
    return mem, npt, gt, regs


@pytest.mark.parametrize("guest_mode", ["long", "pae", "legacy"])
def test_walk_2d_translation(guest_mode: str) -> None:
    mem, npt, gt, regs = two_d_setup(guest_mode)
    gt.map(0x40001000, 0x300000, flags=P | RW | US)
    t = walk_2d(mem.r64, regs, npt.root, 0x40001234, U_WRITE, read_u32=mem.r32)
    assert t.gpa == 0x300234
    assert t.hpa == GPA_OFFSET + 0x300234
    assert len(t.table_walks) == {"long": 4, "pae": 3, "legacy": 2}[guest_mode]
    assert [tw.va for tw in t.table_walks] == [s.addr for s in t.guest.walk]
    assert t.page_size == 4096


def test_walk_2d_guest_paging_off() -> None:
    mem, npt, _, _ = two_d_setup()
    t = walk_2d(mem.r64, PagingRegs(0, 0, 0, 0), npt.root, 0x1234)
    assert (t.gpa, t.hpa, t.table_walks) == (0x1234, GPA_OFFSET + 0x1234, ())


def test_walk_2d_guest_table_fault() -> None:
    mem, npt, gt, regs = two_d_setup()
    gt.map(0x40001000, 0x300000, flags=P | RW | US)
    # Move the guest PD (level 2 table) to a GPA the nested table does not map.
    pdpte_addr = gt.entry_addr(0x40001000, 3)
    pd_gpa = gt.get(pdpte_addr) & ~0xFFF
    gt.put(pdpte_addr, (0x500000 + pd_gpa) | P | RW | US)
    with pytest.raises(NestedFault) as ei:
        walk_2d(mem.r64, regs, npt.root, 0x40001000, READ)
    f = ei.value
    # guest table accesses are user writes at the nested level: U|W, not present
    assert f.exitinfo1 == GUEST_TABLE | 0x06
    assert f.exitinfo2 == 0x500000 + pd_gpa + ((0x40001000 >> 21) & 0x1FF) * 8
    assert f.gva == 0x40001000


def test_walk_2d_guest_table_read_only_in_npt() -> None:
    mem, npt, gt, regs = two_d_setup()
    gt.map(0x1000, 0x300000, flags=P | RW | US)
    # Map the guest PML4 page read-only in the NPT with a 4K mapping at a fresh GPA.
    npt.map(0x600000, GPA_OFFSET + gt.root, flags=P | US)
    gregs = long_regs(0x600000)
    with pytest.raises(NestedFault) as ei:
        walk_2d(mem.r64, gregs, npt.root, 0x1000, READ)
    assert ei.value.exitinfo1 == GUEST_TABLE | 0x07
    assert ei.value.exitinfo2 == 0x600000


def test_walk_2d_guest_fault_is_a_guest_page_fault() -> None:
    mem, npt, gt, regs = two_d_setup()
    gt.map(0x1000, 0x300000, flags=RW | US)  # guest PTE not present
    with pytest.raises(PageFault) as ei:
        walk_2d(mem.r64, regs, npt.root, 0x1000, U_READ)
    assert ei.value.error_code == 0x04


def test_walk_2d_final_gpa_fault() -> None:
    mem, npt, gt, regs = two_d_setup()
    gt.map(0x1000, 0x7000_0000, flags=P | RW | US)  # GPA outside what the NPT maps
    with pytest.raises(NestedFault) as ei:
        walk_2d(mem.r64, regs, npt.root, 0x1000, WRITE)
    assert ei.value.exitinfo1 == GUEST_PAGE | 0x06  # U (always) | W, not present
    assert ei.value.exitinfo2 == 0x7000_0000
    with pytest.raises(NestedFault) as ei:
        walk_2d(mem.r64, regs, npt.root, 0x1000, FETCH)
    assert ei.value.exitinfo1 == GUEST_PAGE | 0x14


def test_walk_2d_guest_fault_precedes_final_npf() -> None:
    mem, npt, gt, regs = two_d_setup()
    gt.map(0x1000, 0x7000_0000, flags=P | US)  # read-only guest page at an unmapped GPA
    with pytest.raises(PageFault) as ei:
        walk_2d(mem.r64, regs, npt.root, 0x1000, U_WRITE)
    assert ei.value.error_code == 0x07


def test_walk_2d_accessed_dirty() -> None:
    mem, npt, gt, regs = two_d_setup()
    gt.map(0x1000, 0x300000, flags=P | RW | US)
    tables_leaf = npt.entry_addr(0, 2)  # NPT 2M leaf holding the guest tables (GPA < 2M)
    data_leaf = npt.entry_addr(0x300000, 2)  # NPT 2M leaf holding the final page
    walk_2d(mem.r64, regs, npt.root, 0x1000, READ)  # no write callback: no side effects
    assert mem.writes == []
    walk_2d(mem.r64, regs, npt.root, 0x1000, READ, write_u64=mem.w64)
    assert all(gt.get(gt.entry_addr(0x1000, lv)) & (A | D) == A for lv in (4, 3, 2, 1))
    # guest table accesses are writes at the nested level: that leaf gets D too
    assert npt.get(tables_leaf) & (A | D) == A | D
    assert npt.get(data_leaf) & (A | D) == A
    walk_2d(mem.r64, regs, npt.root, 0x1000, WRITE, write_u64=mem.w64)
    assert npt.get(data_leaf) & (A | D) == A | D
    assert gt.get(gt.entry_addr(0x1000, 1)) & D
    assert not gt.get(gt.entry_addr(0x1000, 2)) & D


def test_walk_2d_no_writes_on_fault() -> None:
    mem, npt, gt, regs = two_d_setup()
    gt.map(0x1000, 0x7000_0000, flags=P | RW | US)
    with pytest.raises(NestedFault):
        walk_2d(mem.r64, regs, npt.root, 0x1000, READ, write_u64=mem.w64)
    assert mem.writes == []


# --- properties ---------------------------------------------------------------------------------


def _allowed(access: Access, u: bool, w: bool, x: bool, wp: bool) -> bool:
    """Independent statement of APM vol. 2, 5.6 (no SMEP/SMAP), as a truth table over the
    access kind: which combined rights each kind needs."""
    need = {
        # (user, write, fetch): predicate on (u, w, x)
        (False, False, False): lambda: True,
        (False, True, False): lambda: w or not wp,
        (False, False, True): lambda: x,
        (True, False, False): lambda: u,
        (True, True, False): lambda: u and w,
        (True, False, True): lambda: u and x,
    }
    return need[(access.user, access.write, access.fetch)]()


mapping = st.tuples(
    st.sampled_from([0, 1, 255, 256, 511]),  # PML4 index
    st.integers(0, 3),  # PDPT index
    st.integers(0, 3),  # PD index
    st.integers(0, 7),  # PT index
    st.integers(0, 0x3FF),  # target frame
    st.integers(0, 7),  # leaf RW/US/NX
)


@settings(max_examples=60, deadline=None)
@given(
    maps=st.lists(mapping, min_size=1, max_size=12, unique_by=lambda m: m[:4]),
    probes=st.lists(
        st.tuples(st.integers(0, 11), st.integers(0, 0xFFF), st.integers(0, 5), st.booleans()),
        min_size=1,
        max_size=10,
    ),
    wp=st.booleans(),
)
def test_property_long_mode_against_model(maps, probes, wp) -> None:
    mem = Mem()
    tb = Tables(mem, "long")
    model = {}
    for i4, i3, i2, i1, frame, bits in maps:
        va = (i4 << 39) | (i3 << 30) | (i2 << 21) | (i1 << 12)
        if i4 >= 256:
            va |= 0xFFFF_0000_0000_0000
        flags = P | (RW if bits & 1 else 0) | (US if bits & 2 else 0) | (NX if bits & 4 else 0)
        tb.map(va, frame << 12, flags=flags)
        model[va] = (frame << 12, bool(bits & 2), bool(bits & 1), not bits & 4)
    regs = long_regs(tb.root, wp=wp)
    kinds = [READ, WRITE, FETCH, U_READ, U_WRITE, U_FETCH]
    vas = sorted(model)
    for which, off, kind, neighbour in probes:
        page = vas[which % len(vas)]
        va = page + off
        if neighbour:
            va ^= 0x1000 << (which % 4 * 9)  # maybe a page nobody mapped
        access = kinds[kind]
        base = va & ~0xFFF
        if base in model:
            pa, u, w, x = model[base]
            if _allowed(access, u, w, x, wp):
                t = do(mem, regs, va, access)
                assert t.pa == pa + (va & 0xFFF)
                assert (t.user, t.writable, t.nx) == (u, w, not x)
            else:
                f = fault(mem, regs, va, access)
                expect = 1 | (2 if access.write else 0) | (4 if access.user else 0)
                expect |= 0x10 if access.fetch else 0
                assert f.error_code == expect and f.final
        else:
            f = fault(mem, regs, va, access)
            assert not f.error_code & 1


@settings(max_examples=60, deadline=None)
@given(
    size=st.sampled_from([4096, 2 << 20, 1 << 30]),
    frame=st.integers(0, 0xFF),
    off1=st.integers(0, (1 << 30) - 1),
    off2=st.integers(0, (1 << 30) - 1),
)
def test_property_offset_within_page(size, frame, off1, off2) -> None:
    mem = Mem()
    tb = Tables(mem, "long")
    va = 0x0000_0080_0000_0000
    tb.map(va, frame * size, size=size, flags=P | RW)
    regs = long_regs(tb.root)
    o1, o2 = off1 % size, off2 % size
    t1, t2 = do(mem, regs, va + o1), do(mem, regs, va + o2)
    assert t1.pa - o1 == t2.pa - o2 == frame * size
    assert t1.page_base == t2.page_base
    assert t1.walk == t2.walk
