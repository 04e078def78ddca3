"""Effective memory types: PAT, MTRRs and their combination, natively and under nested paging
(AMD APM vol. 2, 7.4 "Memory Types", 7.7 "Memory-Type Range Registers", 7.8 "Page-Attribute
Table Mechanism", 15.25.8 "Combining Memory Types, MTRRs").

svmemu never caches anything, so memory types change no result a guest can compute; they matter
because guests (and the PAT series svmemu exists to test) read them back: WRMSR validity of PAT
and MTRR values, VMRUN's g_pat check, and traces/debugger queries that show which type an
access would get. Pure Python, no Unicorn: the MSR file imports the MSR numbers and validity
predicates from here, the debugger calls :func:`effective_type`.

The types are the APM's: the encodable ones UC, WC, WT, WP, WB, UC- (encodings 0, 1, 4, 5, 6,
7; 2, 3 and 8..255 reserved), and two that only ever come out of a combination, CD (cache
disabled: uncacheable, but cache hits are still honoured) and WC+ (write-combining that also
snoops caches, produced when a guest's WC lands on host-cacheable memory). CD and WC+ have no
encoding; they get values above 0xFF here so that they can never be mistaken for one.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Mapping, Optional

__all__ = [
    "MemType",
    "UC", "WC", "WT", "WP", "WB", "UC_MINUS", "CD", "WC_PLUS",
    "PAT_TYPES", "MTRR_TYPES", "PAT_RESET",
    "MSR_PAT", "MSR_MTRRCAP", "MSR_MTRRDEFTYPE",
    "MSR_MTRRFIX64K_00000", "MSR_MTRRFIX16K_80000", "MSR_MTRRFIX16K_A0000",
    "MSR_MTRRFIX4K_C0000", "MSR_MTRRFIX4K_C8000", "MSR_MTRRFIX4K_D0000", "MSR_MTRRFIX4K_D8000",
    "MSR_MTRRFIX4K_E0000", "MSR_MTRRFIX4K_E8000", "MSR_MTRRFIX4K_F0000", "MSR_MTRRFIX4K_F8000",
    "MSR_MTRRPHYSBASE0", "MSR_MTRRPHYSMASK0", "FIXED_MTRR_MSRS", "MTRR_MSRS",
    "msr_mtrrphysbase", "msr_mtrrphysmask", "is_mtrr_msr",
    "MTRRCAP_DEFAULT", "MTRRDEF_E", "MTRRDEF_FE", "MTRR_MASK_VALID",
    "Mtrrs",
    "memtype_name", "pat_entry", "pat_valid", "pat_index",
    "mtrr_type", "mtrr_msr_valid",
    "combine_pat_mtrr", "combine_guest_host", "effective_type",
]


class MemType(IntEnum):
    UC = 0
    WC = 1
    WT = 4
    WP = 5
    WB = 6
    UC_MINUS = 7
    # Effective types only (no encoding): see the module docstring.
    CD = 0x100
    WC_PLUS = 0x101


UC = MemType.UC
WC = MemType.WC
WT = MemType.WT
WP = MemType.WP
WB = MemType.WB
UC_MINUS = MemType.UC_MINUS
CD = MemType.CD
WC_PLUS = MemType.WC_PLUS

# Encodings a PAT entry may hold (APM vol. 2, 7.8.1) and an MTRR type field may hold (7.7.1:
# UC- exists only in the PAT).
PAT_TYPES = frozenset({0, 1, 4, 5, 6, 7})
MTRR_TYPES = frozenset({0, 1, 4, 5, 6})

# PAT after reset (APM vol. 2, 7.8.1): WB, WT, UC-, UC repeated, so PAT=0 entries reproduce the
# pre-PAT PCD/PWT behaviour.
PAT_RESET = 0x0007040600070406

_NAMES = {UC: "UC", WC: "WC", WT: "WT", WP: "WP", WB: "WB", UC_MINUS: "UC-", CD: "CD", WC_PLUS: "WC+"}


def memtype_name(t: int) -> str:
    """The APM's spelling ("UC-", "WC+"), or "reserved(n)" for an encoding that is not a type."""
    try:
        return _NAMES[MemType(t)]
    except ValueError:
        return f"reserved({t})"


# --- MSR numbers (APM vol. 2, 7.7 and 7.8; Appendix A) ----------------------------------------

MSR_PAT = 0x277
MSR_MTRRCAP = 0xFE
MSR_MTRRDEFTYPE = 0x2FF
MSR_MTRRFIX64K_00000 = 0x250
MSR_MTRRFIX16K_80000 = 0x258
MSR_MTRRFIX16K_A0000 = 0x259
MSR_MTRRFIX4K_C0000 = 0x268
MSR_MTRRFIX4K_C8000 = 0x269
MSR_MTRRFIX4K_D0000 = 0x26A
MSR_MTRRFIX4K_D8000 = 0x26B
MSR_MTRRFIX4K_E0000 = 0x26C
MSR_MTRRFIX4K_E8000 = 0x26D
MSR_MTRRFIX4K_F0000 = 0x26E
MSR_MTRRFIX4K_F8000 = 0x26F
MSR_MTRRPHYSBASE0 = 0x200
MSR_MTRRPHYSMASK0 = 0x201

# In address order: fixed[i] below is the MSR FIXED_MTRR_MSRS[i].
FIXED_MTRR_MSRS: tuple[int, ...] = (
    MSR_MTRRFIX64K_00000,
    MSR_MTRRFIX16K_80000,
    MSR_MTRRFIX16K_A0000,
) + tuple(range(MSR_MTRRFIX4K_C0000, MSR_MTRRFIX4K_F8000 + 1))

NUM_VAR_MTRRS = 8


def msr_mtrrphysbase(n: int) -> int:
    return MSR_MTRRPHYSBASE0 + 2 * n


def msr_mtrrphysmask(n: int) -> int:
    return MSR_MTRRPHYSMASK0 + 2 * n


MTRR_MSRS: frozenset[int] = frozenset(
    {MSR_MTRRCAP, MSR_MTRRDEFTYPE, *FIXED_MTRR_MSRS}
    | {msr_mtrrphysbase(n) for n in range(NUM_VAR_MTRRS)}
    | {msr_mtrrphysmask(n) for n in range(NUM_VAR_MTRRS)}
)


def is_mtrr_msr(index: int) -> bool:
    return index in MTRR_MSRS


# MTRRcap (APM vol. 2, 7.7.1): VCNT 7:0, FIX bit 8, WC bit 10. Ours: 8 variable pairs, fixed
# ranges and WC supported, the values AMD processors report.
MTRRCAP_VCNT_MASK = 0xFF
MTRRCAP_FIX = 1 << 8
MTRRCAP_WC = 1 << 10
MTRRCAP_DEFAULT = MTRRCAP_WC | MTRRCAP_FIX | NUM_VAR_MTRRS

# MTRRdefType: type 7:0, FE bit 10, E bit 11. MTRRphysMask: V bit 11.
MTRRDEF_TYPE_MASK = 0xFF
MTRRDEF_FE = 1 << 10
MTRRDEF_E = 1 << 11
MTRR_MASK_VALID = 1 << 11


# --- PAT (APM vol. 2, 7.8) -----------------------------------------------------------------


def pat_entry(pat_msr: int, index: int) -> int:
    """The type byte PAn of a PAT value (APM vol. 2, 7.8.1). Returned raw: validity is
    :func:`pat_valid`'s business, so traces can show what a bad value holds."""
    if not 0 <= index <= 7:
        raise ValueError(f"PAT index {index} outside 0..7")
    return (pat_msr >> (8 * index)) & 0xFF


def pat_valid(value: int) -> bool:
    """True when every PAn byte is a defined type (APM vol. 2, 7.8.1: writing a reserved
    encoding to the PAT MSR is #GP; the same rule makes VMRUN fail on a bad g_pat, 15.25.4)."""
    if value >> 64:
        return False
    return all(((value >> (8 * i)) & 0xFF) in PAT_TYPES for i in range(8))


def pat_index(pat_bit: bool | int, pcd: bool | int, pwt: bool | int) -> int:
    """The PAT entry a leaf selects: PAT*4 + PCD*2 + PWT (APM vol. 2, 7.8.2, Table 7-10)."""
    return (int(bool(pat_bit)) << 2) | (int(bool(pcd)) << 1) | int(bool(pwt))


# --- MTRRs (APM vol. 2, 7.7) ------------------------------------------------------------------


class Mtrrs:
    """The MTRR register file as the MSRs hold it; the MSR file owns one per CPU and routes
    RDMSR/WRMSR of MTRR_MSRS to :meth:`read`/:meth:`write` after checking
    :func:`mtrr_msr_valid`. Plain ints and lists so snapshots can serialise it directly."""

    __slots__ = ("cap", "def_type", "fixed", "phys_base", "phys_mask")

    def __init__(self, cap: int = MTRRCAP_DEFAULT, def_type: int = 0,
                 fixed: list[int] | None = None, phys_base: list[int] | None = None,
                 phys_mask: list[int] | None = None) -> None:
        self.cap = cap
        self.def_type = def_type
        self.fixed = fixed if fixed is not None else [0] * len(FIXED_MTRR_MSRS)
        self.phys_base = phys_base if phys_base is not None else [0] * NUM_VAR_MTRRS
        self.phys_mask = phys_mask if phys_mask is not None else [0] * NUM_VAR_MTRRS

    @classmethod
    def from_msr_values(cls, values: Mapping[int, int]) -> "Mtrrs":
        """Build from an MSR-number -> value mapping (what the MSR file keeps); MSRs missing
        from it keep their reset value."""
        m = cls()
        for index, value in values.items():
            if index == MSR_MTRRCAP:
                m.cap = value
            elif is_mtrr_msr(index):
                m.write(index, value)
        return m

    def read(self, index: int) -> int:
        if index == MSR_MTRRCAP:
            return self.cap
        if index == MSR_MTRRDEFTYPE:
            return self.def_type
        if index in FIXED_MTRR_MSRS:
            return self.fixed[FIXED_MTRR_MSRS.index(index)]
        n, is_mask = _var_slot(index)
        return self.phys_mask[n] if is_mask else self.phys_base[n]

    def write(self, index: int, value: int) -> None:
        """Store without checking; MTRRcap is read-only and refuses."""
        if index == MSR_MTRRCAP:
            raise ValueError("MTRRcap is read-only")
        if index == MSR_MTRRDEFTYPE:
            self.def_type = value
        elif index in FIXED_MTRR_MSRS:
            self.fixed[FIXED_MTRR_MSRS.index(index)] = value
        else:
            n, is_mask = _var_slot(index)
            if is_mask:
                self.phys_mask[n] = value
            else:
                self.phys_base[n] = value


def _var_slot(index: int) -> tuple[int, bool]:
    off = index - MSR_MTRRPHYSBASE0
    if not 0 <= off < 2 * NUM_VAR_MTRRS:
        raise ValueError(f"MSR {index:#x} is not an MTRR")
    return off // 2, bool(off & 1)


def _fixed_type(mtrrs: Mtrrs, pa: int) -> int:
    """Fixed-range layout (APM vol. 2, 7.7.2, Table 7-7): 8 x 64 KB from 0, 16 x 16 KB from
    0x80000, 64 x 4 KB from 0xC0000; byte 0 of each MSR is its lowest range."""
    if pa < 0x80000:
        msr, byte = 0, pa >> 16
    elif pa < 0xC0000:
        off = pa - 0x80000
        msr, byte = 1 + (off >> 17), (off >> 14) & 7
    else:
        off = pa - 0xC0000
        msr, byte = 3 + (off >> 15), (off >> 12) & 7
    return (mtrrs.fixed[msr] >> (8 * byte)) & 0xFF


def mtrr_type(mtrrs: Mtrrs, pa: int, maxphyaddr: int = 40) -> MemType:
    """The MTRR memory type of a physical address (APM vol. 2, 7.7).

    MTRRdefType.E=0 makes all memory UC. Below 1 MB with FE=1 the fixed ranges decide and the
    variable ones are not consulted. Otherwise each enabled variable pair matches when
    (pa & mask) == (base & mask) over the address bits 12..MAXPHYADDR-1. Overlaps (APM 7.7.3,
    "Overlapping MTRRs"): identical types give that type; any UC gives UC; WT with WB gives WT;
    every other combination is undefined, and we choose UC, the one choice that never claims
    caching the platform might not allow. No match gives the default type.

    A reserved encoding in a register (which WRMSR would have refused) is reported as UC.
    AMD's TOM2/IORR/SYSCFG extensions are not modelled.
    """
    if not mtrrs.def_type & MTRRDEF_E:
        return UC
    if pa < 0x100000 and mtrrs.def_type & MTRRDEF_FE and mtrrs.cap & MTRRCAP_FIX:
        return _as_mtrr_type(_fixed_type(mtrrs, pa))
    addr_bits = ((1 << maxphyaddr) - 1) & ~0xFFF
    matched: set[int] = set()
    vcnt = min(mtrrs.cap & MTRRCAP_VCNT_MASK, NUM_VAR_MTRRS)
    for n in range(vcnt):
        mask = mtrrs.phys_mask[n]
        if not mask & MTRR_MASK_VALID:
            continue
        m = mask & addr_bits
        base = mtrrs.phys_base[n]
        if (pa & m) == (base & m):
            matched.add(_as_mtrr_type(base & 0xFF))
    if not matched:
        return _as_mtrr_type(mtrrs.def_type & MTRRDEF_TYPE_MASK)
    if len(matched) == 1:
        return MemType(next(iter(matched)))
    if matched == {WT, WB}:
        return WT
    return UC  # includes "any UC"; the rest is undefined by the APM


def _as_mtrr_type(t: int) -> MemType:
    return MemType(t) if t in MTRR_TYPES else UC


def mtrr_msr_valid(index: int, value: int, maxphyaddr: int = 40) -> bool:
    """Whether WRMSR(index, value) is allowed for an MTRR MSR; False means #GP (APM vol. 2,
    7.7: reserved bits, and type fields holding anything but UC/WC/WT/WP/WB).

    MTRRcap is read-only, so every write to it is invalid. The AMD extended fixed-range
    RdMem/WrMem bits (4:3 of each fixed type byte, writable only with
    SYSCFG.MtrrFixDramModEn=1) are treated as reserved: svmemu runs with that bit clear.
    """
    if value < 0 or value >> 64:
        return False
    phys_rsvd = ((1 << 64) - 1) & ~((1 << maxphyaddr) - 1)
    if index == MSR_MTRRCAP:
        return False
    if index == MSR_MTRRDEFTYPE:
        rsvd = ~(MTRRDEF_TYPE_MASK | MTRRDEF_FE | MTRRDEF_E) & ((1 << 64) - 1)
        return not value & rsvd and (value & 0xFF) in MTRR_TYPES
    if index in FIXED_MTRR_MSRS:
        return all(((value >> (8 * i)) & 0xFF) in MTRR_TYPES for i in range(8))
    n, is_mask = _var_slot(index)
    if is_mask:
        return not value & (phys_rsvd | 0x7FF)
    return not value & (phys_rsvd | 0xF00) and (value & 0xFF) in MTRR_TYPES


# --- Combination tables -------------------------------------------------------------------------
#
# Both tables are written out cell by cell, as the APM presents them, rather than derived from a
# precedence rule: a rule would hide exactly the irregular cells (UC- vs WC, WC+) that matter.
#
# Sources, checked cell by cell (the APM's own tables are not in our reference corpus,
# so each cell rests on what the sources below agree on):
# - PAT x MTRR: APM vol. 2, 7.8.3. Cross-checked against Bochs cpu/paging.cc resolve_memtype()
#   and the Intel SDM vol. 3A Table 11-7, which agree with every cell here except the ones the
#   AMD table marks CD (UC- over WT/WP/WB, WT over WC/WP, WP over WC/WT): Intel and Bochs say
#   UC (or WP for WP-over-WT) there. CD is uncacheable too, but honours cache hits, which is
#   AMD's wording for an uncacheable type that arises from page attributes.
# - guest x host: APM vol. 2, 15.25.8 and the text quoted on kvm@vger ("the intent is for the
#   VMM to use its PAT type to simulate guest MTRRs"), so each row is the PAT x MTRR row of the
#   same type with the host type as the MTRR. Where that is not so (guest WC over host
#   WT/WP/WB gives WC+, not WC; guest UC- over host WB gives CD, which a later MTRR WC no longer
#   turns into WC) is confirmed by SimpleSvm's (tandasat) analysis of NPT leaves left at host
#   PAT WB. The host UC- column is our reading: host UC- acts as an uncacheable type that
#   honours hits (CD) except for guest UC (UC) and guest WC (WC, as PAT WC beats any MTRR).
# - MTRR overlaps: APM vol. 2, 7.7.3; Bochs memtype_by_mtrr() applies the same WT+WB rule and
#   leaves the other mixed pairs undefined, where we choose UC (see mtrr_type).

_MTRR_COLUMNS = (UC, WC, WT, WP, WB)

# APM vol. 2, 7.8.3 "Combining PAT and MTRR Types" (Table 7-11). Rows are the PAT type,
# including CD and WC+, which arrive here as the combined guest/host type under nested paging.
_PAT_MTRR: dict[MemType, tuple[MemType, ...]] = {
    #           MTRR: UC  WC       WT       WP       WB
    UC:       (UC, UC,      UC,      UC,      UC),
    UC_MINUS: (UC, WC,      CD,      CD,      CD),
    CD:       (UC, CD,      CD,      CD,      CD),
    WC:       (WC, WC,      WC,      WC,      WC),
    WC_PLUS:  (UC, WC,      WC_PLUS, WC_PLUS, WC_PLUS),
    WT:       (UC, CD,      WT,      CD,      WT),
    WP:       (UC, CD,      CD,      WP,      WP),
    WB:       (UC, WC,      WT,      WP,      WB),
}

_HOST_COLUMNS = (UC, WC, WT, WP, WB, UC_MINUS)

# APM vol. 2, 15.25.8, "Combining Guest and Host PAT Types" (Table 15-19). The APM states the
# intent: the host's PAT type plays, for the guest, the role MTRRs play natively (a VMM
# simulates guest MTRRs with it), so each row follows the PAT x MTRR row of the same guest
# type, except that guest WC over host-cacheable memory becomes WC+ (it must snoop, since
# the host may cache the same page), and guest UC- becomes CD unless the host says WC.
_GUEST_HOST: dict[MemType, tuple[MemType, ...]] = {
    #             host: UC  WC  WT       WP       WB       UC-
    UC:       (UC, UC, UC,      UC,      UC,      UC),
    UC_MINUS: (UC, WC, CD,      CD,      CD,      CD),
    WC:       (WC, WC, WC_PLUS, WC_PLUS, WC_PLUS, WC),
    WT:       (UC, CD, WT,      CD,      WT,      CD),
    WP:       (UC, CD, CD,      WP,      WP,      CD),
    WB:       (UC, WC, WT,      WP,      WB,      CD),
}


def combine_pat_mtrr(pat_type: int, mtrr: int) -> MemType:
    """Effective type of a page from its PAT type and its MTRR type (APM vol. 2, 7.8.3)."""
    try:
        row = _PAT_MTRR[MemType(pat_type)]
        return row[_MTRR_COLUMNS.index(MemType(mtrr))]
    except (ValueError, KeyError):
        raise ValueError(
            f"no combination for PAT {memtype_name(pat_type)} with MTRR {memtype_name(mtrr)}"
        ) from None


def combine_guest_host(guest_type: int, host_type: int) -> MemType:
    """Combined PAT type under nested paging (APM vol. 2, 15.25.8): the guest's type (guest
    leaf x gPAT) with the host's (nested leaf x hPAT). The result then meets the MTRRs through
    :func:`combine_pat_mtrr`."""
    try:
        row = _GUEST_HOST[MemType(guest_type)]
        return row[_HOST_COLUMNS.index(MemType(host_type))]
    except (ValueError, KeyError):
        raise ValueError(
            f"no combination for guest {memtype_name(guest_type)} with host "
            f"{memtype_name(host_type)}"
        ) from None


def _pat_type(pat: int, index: Optional[int]) -> MemType:
    if index is None:
        return WB  # paging off: no PAT entry applies, so the MTRR type stands alone
    t = pat_entry(pat, index)
    if t not in PAT_TYPES:
        raise ValueError(f"PAT entry {index} holds reserved type {t}")
    return MemType(t)


def effective_type(
    pat_idx: Optional[int],
    pat: int,
    mtrrs: Mtrrs,
    pa: int,
    *,
    cr0_cd: bool = False,
    host_pat_idx: Optional[int] = None,
    host_pat: Optional[int] = None,
    host_cr0_cd: bool = False,
    maxphyaddr: int = 40,
) -> MemType:
    """The memory type an access to system-physical ``pa`` gets.

    Natively: the PAT type selected by ``pat_idx`` (the leaf's PAT/PCD/PWT; None when paging
    is off) combined with the MTRR type of ``pa`` (APM vol. 2, 7.8.3). Under nested paging,
    pass ``host_pat`` (hPAT) and ``host_pat_idx`` (the nested leaf's index): then ``pat`` is
    gPAT and ``pat_idx`` the guest leaf's index, the two PAT types combine first
    (15.25.8, Table 15-19) and the result meets the MTRRs, which are the host's.

    CR0.CD=1 disables caching, which AMD reports as the CD type whatever the tables say
    (APM vol. 2, 7.6.1). Under nested paging either the guest's or the host's CR0.CD being set
    is enough; the APM does not spell this case out and this is the conservative reading.
    """
    if cr0_cd or host_cr0_cd:
        return CD
    mt = mtrr_type(mtrrs, pa, maxphyaddr)
    ptype = _pat_type(pat, pat_idx)
    if host_pat is not None:
        ptype = combine_guest_host(ptype, _pat_type(host_pat, host_pat_idx))
    return combine_pat_mtrr(ptype, mt)
