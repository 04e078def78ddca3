"""Tests for emu/arch/memtype.py. The expected combination tables are written out here cell by cell
from the APM (vol. 2, 7.8.3 and 15.25.8, Table 15-19) as a separate transcription, not read
back from the implementation's lookup tables."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from emu.arch.memtype import (
    CD,
    FIXED_MTRR_MSRS,
    MSR_MTRRCAP,
    MSR_MTRRDEFTYPE,
    MSR_MTRRFIX4K_C0000,
    MSR_MTRRFIX4K_F8000,
    MSR_MTRRFIX16K_80000,
    MSR_MTRRFIX16K_A0000,
    MSR_MTRRFIX64K_00000,
    MSR_PAT,
    MTRR_MSRS,
    PAT_RESET,
    UC,
    UC_MINUS,
    WB,
    WC,
    WC_PLUS,
    WP,
    WT,
    Mtrrs,
    combine_guest_host,
    combine_pat_mtrr,
    effective_type,
    is_mtrr_msr,
    memtype_name,
    msr_mtrrphysbase,
    msr_mtrrphysmask,
    mtrr_msr_valid,
    mtrr_type,
    pat_entry,
    pat_index,
    pat_valid,
)

E, FE = 1 << 11, 1 << 10
V = 1 << 11


def test_type_encodings_and_names() -> None:
    assert (UC, WC, WT, WP, WB, UC_MINUS) == (0, 1, 4, 5, 6, 7)
    assert [memtype_name(t) for t in (0, 1, 4, 5, 6, 7)] == ["UC", "WC", "WT", "WP", "WB", "UC-"]
    assert memtype_name(CD) == "CD" and memtype_name(WC_PLUS) == "WC+"
    assert memtype_name(2) == "reserved(2)"
    # the effective-only types can never collide with a PAT/MTRR byte
    assert CD > 0xFF and WC_PLUS > 0xFF


def test_msr_numbers() -> None:
    assert MSR_PAT == 0x277 and MSR_MTRRCAP == 0xFE and MSR_MTRRDEFTYPE == 0x2FF
    assert FIXED_MTRR_MSRS == (0x250, 0x258, 0x259) + tuple(range(0x268, 0x270))
    assert (MSR_MTRRFIX64K_00000, MSR_MTRRFIX16K_80000, MSR_MTRRFIX16K_A0000) == (
        0x250, 0x258, 0x259)
    assert (MSR_MTRRFIX4K_C0000, MSR_MTRRFIX4K_F8000) == (0x268, 0x26F)
    assert [msr_mtrrphysbase(n) for n in range(8)] == list(range(0x200, 0x210, 2))
    assert [msr_mtrrphysmask(n) for n in range(8)] == list(range(0x201, 0x210, 2))
    assert len(MTRR_MSRS) == 2 + 11 + 16
    assert is_mtrr_msr(0x20F) and not is_mtrr_msr(0x210) and not is_mtrr_msr(MSR_PAT)


# --- PAT ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("t", [0, 1, 4, 5, 6, 7])
@pytest.mark.parametrize("i", range(8))
def test_pat_entry_every_type_every_slot(t: int, i: int) -> None:
    pat = (PAT_RESET & ~(0xFF << (8 * i))) | (t << (8 * i))
    assert pat_entry(pat, i) == t
    assert pat_valid(pat)


def test_pat_reset_value() -> None:
    assert [pat_entry(PAT_RESET, i) for i in range(8)] == [WB, WT, UC_MINUS, UC] * 2


@pytest.mark.parametrize("bad", [2, 3, 8, 0x10, 0x46, 0xFF])
@pytest.mark.parametrize("i", range(8))
def test_pat_reserved_types_rejected(bad: int, i: int) -> None:
    pat = (PAT_RESET & ~(0xFF << (8 * i))) | (bad << (8 * i))
    assert not pat_valid(pat)


def test_pat_valid_edges() -> None:
    assert pat_valid(0)
    assert pat_valid(0x0707070707070707)
    assert not pat_valid(1 << 64)
    with pytest.raises(ValueError):
        pat_entry(PAT_RESET, 8)


def test_pat_index() -> None:
    for pat, pcd, pwt in itertools.product((0, 1), repeat=3):
        assert pat_index(pat, pcd, pwt) == pat * 4 + pcd * 2 + pwt
    assert pat_index(True, False, True) == 5


# --- MTRRs --------------------------------------------------------------------------------------


def enabled(default: int = WB, fe: bool = True) -> Mtrrs:
    return Mtrrs(def_type=E | (FE if fe else 0) | default)


def test_mtrrs_disabled_means_uc() -> None:
    m = Mtrrs(def_type=WB)  # E=0
    m.fixed[0] = 0x0606060606060606
    m.phys_base[0], m.phys_mask[0] = WB, V | 0xFF_0000_0000 & ~0xFFF
    assert mtrr_type(m, 0) == UC
    assert mtrr_type(m, 0x1234_5000) == UC


def test_default_type() -> None:
    assert mtrr_type(enabled(WB), 0x1234_5000) == WB
    assert mtrr_type(enabled(WT), 0x1234_5000) == WT


def test_fixed_ranges_every_msr_and_byte() -> None:
    m = enabled(UC)
    # give every byte of every fixed MSR a distinct pattern of valid types
    types = [WB, WT, WP, WC, UC]
    for i, msr in enumerate(FIXED_MTRR_MSRS):
        value = 0
        for b in range(8):
            value |= types[(i + b) % 5] << (8 * b)
        m.write(msr, value)
    # (first address, range size) per MSR, from the APM's fixed-range table
    starts = [(0x00000, 0x10000), (0x80000, 0x4000), (0xA0000, 0x4000)] + [
        (0xC0000 + 0x8000 * k, 0x1000) for k in range(8)
    ]
    for i, (start, size) in enumerate(starts):
        for b in range(8):
            expect = types[(i + b) % 5]
            assert mtrr_type(m, start + b * size) == expect
            assert mtrr_type(m, start + (b + 1) * size - 1) == expect


def test_fixed_ranges_need_fe_and_beat_variable() -> None:
    m = enabled(WB, fe=True)
    m.fixed[0] = 0  # 0..512K UC
    m.phys_base[0], m.phys_mask[0] = WT, V | (((1 << 40) - 1) & ~0xFFFFF)  # 0..1M WT
    assert mtrr_type(m, 0x1000) == UC  # fixed wins below 1 MB
    m.def_type &= ~FE
    assert mtrr_type(m, 0x1000) == WT  # FE=0: variable ranges apply
    m.def_type |= FE
    assert mtrr_type(m, 0x100000) == WB  # above 1 MB fixed ranges never apply


def test_variable_range_match() -> None:
    m = enabled(UC)
    # 256 MB WB region at 1 GB, MAXPHYADDR 40
    m.write(msr_mtrrphysbase(3), 0x4000_0000 | WB)
    m.write(msr_mtrrphysmask(3), (((1 << 40) - 1) & ~(0x1000_0000 - 1)) | V)
    assert mtrr_type(m, 0x4000_0000) == WB
    assert mtrr_type(m, 0x4FFF_FFFF) == WB
    assert mtrr_type(m, 0x5000_0000) == UC
    assert mtrr_type(m, 0x3FFF_FFFF) == UC
    # invalid (V=0) pairs are ignored
    m.phys_mask[3] &= ~V
    assert mtrr_type(m, 0x4000_0000) == UC


def test_variable_ranges_beyond_vcnt_ignored() -> None:
    m = enabled(UC)
    m.cap = (m.cap & ~0xFF) | 2
    m.phys_base[2], m.phys_mask[2] = WB, V | (((1 << 40) - 1) & ~0xFFF)
    assert mtrr_type(m, 0x2000_0000) == UC


def overlap(*types: int) -> int:
    """Every type on the same 256 MB range at 2 GB, each in its own variable pair."""
    m = enabled(WB)
    for n, t in enumerate(types):
        m.phys_base[n] = 0x8000_0000 | t
        m.phys_mask[n] = V | (((1 << 40) - 1) & ~(0x1000_0000 - 1))
    return mtrr_type(m, 0x8000_1000)


def test_nested_ranges_overlap_only_where_both_match() -> None:
    m = enabled(UC)
    m.phys_base[0], m.phys_mask[0] = 0x8000_0000 | WB, V | (((1 << 40) - 1) & ~0xFFF_FFFF)
    m.phys_base[1], m.phys_mask[1] = 0x8000_4000 | WT, V | (((1 << 40) - 1) & ~0xFFF)
    assert mtrr_type(m, 0x8000_4000) == WT
    assert mtrr_type(m, 0x8000_5000) == WB


@pytest.mark.parametrize(
    "types,expect",
    [
        ((WB, WB), WB),
        ((WC, WC), WC),
        ((UC, WB), UC),
        ((WB, UC), UC),
        ((UC, WC), UC),
        ((UC, WT, WB), UC),
        ((WT, WB), WT),
        ((WB, WT), WT),
        ((WB, WT, WB), WT),
        # undefined by the APM: we choose UC
        ((WC, WB), UC),
        ((WP, WB), UC),
        ((WT, WP), UC),
        ((WC, WT), UC),
    ],
)
def test_variable_overlaps(types, expect) -> None:
    assert overlap(*types) == expect


def test_mtrrs_read_write_roundtrip() -> None:
    m = Mtrrs()
    for i, msr in enumerate(sorted(MTRR_MSRS - {MSR_MTRRCAP})):
        m.write(msr, 0x1000 * i + 6)
    for i, msr in enumerate(sorted(MTRR_MSRS - {MSR_MTRRCAP})):
        assert m.read(msr) == 0x1000 * i + 6
    assert m.read(MSR_MTRRCAP) == 0x508
    with pytest.raises(ValueError):
        m.write(MSR_MTRRCAP, 0)
    with pytest.raises(ValueError):
        m.read(0x210)


def test_mtrrs_from_msr_values() -> None:
    values = {MSR_MTRRCAP: 0x502, MSR_MTRRDEFTYPE: E | WB, 0x259: 0x01, 0x20F: V, MSR_PAT: 7}
    m = Mtrrs.from_msr_values(values)
    assert (m.cap, m.def_type, m.fixed[2], m.phys_mask[7]) == (0x502, E | WB, 1, V)
    assert all(m.read(i) == v for i, v in values.items() if i != MSR_PAT)


# --- MTRR MSR validity --------------------------------------------------------------------------


def test_mtrr_msr_valid_deftype() -> None:
    for t in (0, 1, 4, 5, 6):
        assert mtrr_msr_valid(MSR_MTRRDEFTYPE, E | FE | t)
    for t in (2, 3, 7, 8):
        assert not mtrr_msr_valid(MSR_MTRRDEFTYPE, t)
    for bit in (8, 9, 12, 63):
        assert not mtrr_msr_valid(MSR_MTRRDEFTYPE, (1 << bit) | WB)


def test_mtrr_msr_valid_cap_read_only() -> None:
    assert not mtrr_msr_valid(MSR_MTRRCAP, 0x508)


@pytest.mark.parametrize("msr", FIXED_MTRR_MSRS)
def test_mtrr_msr_valid_fixed(msr: int) -> None:
    assert mtrr_msr_valid(msr, 0x0605040100060504)
    for b in range(8):
        for bad in (2, 3, 7, 0x18):
            assert not mtrr_msr_valid(msr, 0x0606060606060606 & ~(0xFF << 8 * b) | bad << 8 * b)


@pytest.mark.parametrize("n", range(8))
def test_mtrr_msr_valid_variable(n: int) -> None:
    base, mask = msr_mtrrphysbase(n), msr_mtrrphysmask(n)
    assert mtrr_msr_valid(base, 0xFF_FFFF_F000 | WB, 40)
    assert not mtrr_msr_valid(base, (1 << 40) | WB, 40)
    assert mtrr_msr_valid(base, (1 << 40) | WB, 48)
    assert not mtrr_msr_valid(base, (1 << 8) | WB)
    assert not mtrr_msr_valid(base, UC_MINUS)
    assert not mtrr_msr_valid(base, 2)
    assert mtrr_msr_valid(mask, 0xFF_FFFF_F000 | V, 40)
    assert not mtrr_msr_valid(mask, (1 << 40) | V, 40)
    assert not mtrr_msr_valid(mask, V | 1)
    assert not mtrr_msr_valid(mask, 1 << 10)


def test_mtrr_msr_valid_not_an_mtrr() -> None:
    with pytest.raises(ValueError):
        mtrr_msr_valid(MSR_PAT, 0)


# --- combination tables -------------------------------------------------------------------------

# APM vol. 2, 7.8.3: rows PAT type, columns MTRR type UC WC WT WP WB.
PAT_X_MTRR = """
        UC   WC   WT   WP   WB
UC      UC   UC   UC   UC   UC
UC-     UC   WC   CD   CD   CD
CD      UC   CD   CD   CD   CD
WC      WC   WC   WC   WC   WC
WC+     UC   WC   WC+  WC+  WC+
WT      UC   CD   WT   CD   WT
WP      UC   CD   CD   WP   WP
WB      UC   WC   WT   WP   WB
"""

# APM vol. 2, 15.25.8, Table 15-19: rows guest PAT type, columns host PAT type.
GUEST_X_HOST = """
        UC   WC   WT   WP   WB   UC-
UC      UC   UC   UC   UC   UC   UC
UC-     UC   WC   CD   CD   CD   CD
WC      WC   WC   WC+  WC+  WC+  WC
WT      UC   CD   WT   CD   WT   CD
WP      UC   CD   CD   WP   WP   CD
WB      UC   WC   WT   WP   WB   CD
"""

BY_NAME = {"UC": UC, "WC": WC, "WT": WT, "WP": WP, "WB": WB, "UC-": UC_MINUS, "CD": CD,
           "WC+": WC_PLUS}


def parse(table: str) -> list[tuple[int, int, int]]:
    lines = [ln.split() for ln in table.strip().splitlines()]
    cols = [BY_NAME[c] for c in lines[0]]
    cells = []
    for row in lines[1:]:
        r = BY_NAME[row[0]]
        assert len(row) == len(cols) + 1
        cells += [(r, c, BY_NAME[v]) for c, v in zip(cols, row[1:])]
    return cells


@pytest.mark.parametrize("pat_t,mtrr_t,expect", parse(PAT_X_MTRR))
def test_pat_x_mtrr_cell(pat_t: int, mtrr_t: int, expect: int) -> None:
    assert combine_pat_mtrr(pat_t, mtrr_t) == expect


@pytest.mark.parametrize("guest_t,host_t,expect", parse(GUEST_X_HOST))
def test_guest_x_host_cell(guest_t: int, host_t: int, expect: int) -> None:
    assert combine_guest_host(guest_t, host_t) == expect


def test_tables_cover_every_pair() -> None:
    assert len(parse(PAT_X_MTRR)) == 8 * 5
    assert len(parse(GUEST_X_HOST)) == 6 * 6


def test_combining_rejects_non_types() -> None:
    with pytest.raises(ValueError):
        combine_pat_mtrr(2, WB)
    with pytest.raises(ValueError):
        combine_pat_mtrr(WB, UC_MINUS)  # UC- is not an MTRR type
    with pytest.raises(ValueError):
        combine_guest_host(CD, WB)  # CD is an outcome, never an input PAT type


def test_guest_wb_host_wb_is_neutral() -> None:
    """With hPAT all WB (the usual host setup) every guest type keeps its native meaning,
    except WC (snooping WC+) and UC- (CD, no longer upgradable by MTRR WC)."""
    for g in (UC, WT, WP, WB):
        assert combine_guest_host(g, WB) == g
    assert combine_guest_host(WC, WB) == WC_PLUS
    assert combine_guest_host(UC_MINUS, WB) == CD


# --- effective_type -----------------------------------------------------------------------------


def wb_everywhere() -> Mtrrs:
    return enabled(WB)


def test_effective_native() -> None:
    m = wb_everywhere()
    for idx in range(8):
        assert effective_type(idx, PAT_RESET, m, 0x1000_0000) == [WB, WT, CD, UC][idx % 4]
    # UC- lets an MTRR WC through
    m.phys_base[0], m.phys_mask[0] = 0xE000_0000 | WC, V | (((1 << 40) - 1) & ~0xFFF_FFFF)
    assert effective_type(2, PAT_RESET, m, 0xE000_0000) == WC
    assert effective_type(3, PAT_RESET, m, 0xE000_0000) == UC


def test_effective_paging_off_uses_mtrr_alone() -> None:
    m = enabled(WT)
    assert effective_type(None, 0, m, 0x1000_0000) == WT  # even with a PAT of all UC


def test_effective_cr0_cd() -> None:
    m = wb_everywhere()
    for idx in range(8):
        assert effective_type(idx, PAT_RESET, m, 0x1000, cr0_cd=True) == CD
        assert effective_type(idx, PAT_RESET, m, 0x1000, host_pat=PAT_RESET, host_pat_idx=0,
                              host_cr0_cd=True) == CD


def test_effective_nested() -> None:
    m = wb_everywhere()
    gpat = 0x0001_0405_0607_0001  # idx: 0 WC, 1 UC, 2 UC-, 3 WB, 4 WP, 5 WT, 6 WC, 7 UC
    hpat = PAT_RESET  # idx 0 WB, 1 WT, 2 UC-, 3 UC
    assert effective_type(3, gpat, m, 0x10_0000, host_pat=hpat, host_pat_idx=0) == WB
    assert effective_type(3, gpat, m, 0x10_0000, host_pat=hpat, host_pat_idx=1) == WT
    assert effective_type(0, gpat, m, 0x10_0000, host_pat=hpat, host_pat_idx=0) == WC_PLUS
    assert effective_type(2, gpat, m, 0x10_0000, host_pat=hpat, host_pat_idx=0) == CD
    assert effective_type(4, gpat, m, 0x10_0000, host_pat=hpat, host_pat_idx=3) == UC
    # the MTRRs (host's) apply to the combined type
    m.def_type = E | UC
    assert effective_type(3, gpat, m, 0x10_0000, host_pat=hpat, host_pat_idx=0) == UC
    # guest paging off: the guest side is WB, so the host's type stands
    m.def_type = E | WB
    assert effective_type(None, gpat, m, 0x10_0000, host_pat=hpat, host_pat_idx=1) == WT


def test_effective_rejects_reserved_pat_entry() -> None:
    with pytest.raises(ValueError):
        effective_type(0, 0x02, wb_everywhere(), 0x1000)


@given(pat=st.integers(0, (1 << 64) - 1))
def test_pat_valid_matches_bytewise(pat: int) -> None:
    assert pat_valid(pat) == all(((pat >> (8 * i)) & 0xFF) in (0, 1, 4, 5, 6, 7) for i in range(8))


# Every PAT entry type in every PAT slot, through the PTE index, against every MTRR type: the
# effective type is the table cell for that pair (natively), and under nested paging with a
# host leaf selecting WB in hPAT it is the guest x host cell for WB, then met with the MTRRs.
@pytest.mark.parametrize("pat_t,mtrr_t,expect",
                         [c for c in parse(PAT_X_MTRR) if c[0] not in (CD, WC_PLUS)])
@pytest.mark.parametrize("slot", range(8))
def test_effective_every_pat_type_every_slot(pat_t: int, mtrr_t: int, expect: int,
                                             slot: int) -> None:
    pat = (PAT_RESET & ~(0xFF << (8 * slot))) | (pat_t << (8 * slot))
    m = enabled(mtrr_t)
    assert effective_type(slot, pat, m, 0x1000_0000) == expect
    guest_host = dict(((g, h), v) for g, h, v in parse(GUEST_X_HOST))
    combined = guest_host[(pat_t, WB)]
    nested = effective_type(slot, pat, m, 0x1000_0000, host_pat=PAT_RESET, host_pat_idx=0)
    assert nested == dict(((p, t), v) for p, t, v in parse(PAT_X_MTRR))[(combined, mtrr_t)]
