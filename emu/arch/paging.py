"""svmemu's own software page walker (AMD APM vol. 2, ch. 5; nested paging 15.25).

Unicorn translates addresses for execution, but it cannot tell us *why* a translation failed in
the terms the architecture reports (the #PF error code, the #NPF EXITINFO1 bits, the level at
which a walk stopped), and it cannot answer "what would this address map to" for a trace, the
debugger or a memory-type query without touching guest state. This module answers those
questions from the page tables alone. It is pure Python and reaches memory only through the
callbacks it is given, so it can be tested against tables built in a bytearray and reused by the
machine (exception delivery), svm_ext (exact #NPF reporting) and memtype queries.

Modes: paging off, legacy 32-bit (4K, and 4M with CR4.PSE including the PSE-36/40 high address
bits), legacy PAE (4K/2M) and long mode 4-level (4K/2M/1G). 5-level paging (CR4.LA57) is not
modelled: svmemu's CPU does not advertise LA57, and a walk with LA57 set raises
:class:`emu.errors.Unsupported` rather than guessing. Protection keys (CR4.PKE) and shadow
stacks are likewise not modelled: PK bits are treated as ignored (available) bits.
"""

from __future__ import annotations

from enum import Enum
from typing import Callable, NamedTuple, Optional

from emu.arch.bits import (
    CR0_PG,
    CR0_WP,
    CR4_LA57,
    CR4_PAE,
    CR4_PKE,
    CR4_PKS,
    CR4_PSE,
    CR4_SMAP,
    CR4_SMEP,
    EFER_LMA,
    EFER_NXE,
    NPF_GUEST_PAGE,
    NPF_GUEST_TABLE,
    PF_ID,
    PF_P,
    PF_PK,
    PF_RSV,
    PF_U,
    PF_W,
    PTE_A,
    PTE_D,
    PTE_NX,
    PTE_P,
    PTE_PAT_4K,
    PTE_PAT_LARGE,
    PTE_PCD,
    PTE_PKEY_MASK,
    PTE_PKEY_SHIFT,
    PTE_PS,
    PTE_PWT,
    PTE_RW,
    PTE_US,
)
from emu.arch.value import Value
from emu.errors import Unsupported

__all__ = [
    "Access",
    "canonical",
    "NestedFault",
    "NonCanonicalAddress",
    "PageFault",
    "PagingMode",
    "PagingRegs",
    "Translation",
    "Translation2D",
    "WalkStep",
    "PathEntry",
    "READ",
    "WRITE",
    "FETCH",
    "GUEST_TABLE_ACCESS",
    "walk",
    "walk_nested",
    "walk_2d",
    "walk_with_path",
    "pf_error_name",
]

ReadFn = Callable[[int], int]
WriteFn = Callable[[int, int], None]

_U64 = (1 << 64) - 1


def _bits(lo: int, hi: int) -> int:
    """Mask of bits lo..hi inclusive (empty when hi < lo)."""
    if hi < lo:
        return 0
    return ((1 << (hi - lo + 1)) - 1) << lo


class PagingMode(Enum):
    OFF = "off"
    LEGACY = "legacy"  # 32-bit, 2-level
    PAE = "pae"  # legacy-mode PAE, 3-level
    LONG4 = "long4"  # long mode, 4-level


class PagingRegs(Value):
    """The control state that selects and parameterises a walk (APM vol. 2, 5.1, Table 5-1).

    The mode is taken from EFER.LMA rather than EFER.LME because LMA is what the processor
    actually uses once paging is on; callers read EFER back from the CPU, where LMA is live.
    A value: equal and hashing alike when the registers are; never changed after it is made.
    """

    __slots__ = ("cr0", "cr3", "cr4", "efer", "gmet", "pkru", "pkrs")

    def __init__(self, cr0: int, cr3: int, cr4: int, efer: int, gmet: bool = False,
                 pkru: int = 0, pkrs: int = 0) -> None:
        self.cr0 = cr0
        self.cr3 = cr3
        self.cr4 = cr4
        self.efer = efer
        # Nested tables only: the guest-mode execute trap (GMET, VMCB nested_ctl bit 3) is in
        # force, so U/S governs instruction fetches by privilege instead of making every access
        # a user access (APM vol. 2, 15.25).
        self.gmet = gmet
        # The protection-key rights registers (APM vol. 2, 5.6.6): PKRU for user pages under
        # CR4.PKE, IA32_PKRS for supervisor pages under CR4.PKS. 0 grants every key all rights.
        self.pkru = pkru
        self.pkrs = pkrs

    def replace(self, **changes: int) -> "PagingRegs":
        """A copy with the named registers changed."""
        fields = dict(cr0=self.cr0, cr3=self.cr3, cr4=self.cr4, efer=self.efer, gmet=self.gmet,
                      pkru=self.pkru, pkrs=self.pkrs)
        fields.update(changes)
        return PagingRegs(**fields)

    @property
    def mode(self) -> PagingMode:
        if not self.cr0 & CR0_PG:
            return PagingMode.OFF
        if not self.cr4 & CR4_PAE:
            return PagingMode.LEGACY
        if self.efer & EFER_LMA:
            if self.cr4 & CR4_LA57:
                raise Unsupported("5-level paging (CR4.LA57)")
            return PagingMode.LONG4
        return PagingMode.PAE

    @property
    def nxe(self) -> bool:
        return bool(self.efer & EFER_NXE)

    @property
    def wp(self) -> bool:
        return bool(self.cr0 & CR0_WP)

    @property
    def smep(self) -> bool:
        return bool(self.cr4 & CR4_SMEP)

    @property
    def smap(self) -> bool:
        return bool(self.cr4 & CR4_SMAP)

    @property
    def pse(self) -> bool:
        return bool(self.cr4 & CR4_PSE)

    def key_rights(self, user_page: bool, key: int) -> int:
        """The two rights bits (PKR_AD, PKR_WD) the registers in force hold for `key`."""
        if user_page:
            pkr = self.pkru if self.cr4 & CR4_PKE else 0
        else:
            pkr = self.pkrs if self.cr4 & CR4_PKS else 0
        return (pkr >> 2 * key) & (PKR_AD | PKR_WD)


PKR_AD, PKR_WD = 1, 2    # a key's access-disable and write-disable bits in PKRU/PKRS


class Access:
    """One memory access as the protection checks see it (APM vol. 2, 5.6).

    ``user`` means CPL 3. ``ac`` is RFLAGS.AC, which lets a supervisor data access reach user
    pages under SMAP. Implicit supervisor accesses (descriptor tables from CPL 3) are not
    modelled: a caller wanting one passes user=False, ac=False. A value, as PagingRegs (walk
    caches key by it).
    """

    __slots__ = ("write", "user", "fetch", "ac")

    def __init__(self, write: bool = False, user: bool = False, fetch: bool = False,
                 ac: bool = False) -> None:
        if write and fetch:
            raise ValueError("an access is a write or a fetch, not both")
        self.write = write
        self.user = user
        self.fetch = fetch
        self.ac = ac

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return ((self.write, self.user, self.fetch, self.ac)
                == (other.write, other.user, other.fetch, other.ac))  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((self.write, self.user, self.fetch, self.ac))

    def __repr__(self) -> str:
        return (f"Access(write={self.write!r}, user={self.user!r}, fetch={self.fetch!r}, "
                f"ac={self.ac!r})")


READ = Access()
WRITE = Access(write=True)
FETCH = Access(fetch=True)

# How a guest page-table access is presented to the nested walk (APM vol. 2, 15.25.5): nested
# walks are always user-level, and the processor treats its accesses to guest page tables as
# writes (it may have to set guest A/D bits), so a read-only nested mapping of a guest page
# table faults with RW=1 even when the guest's own access was a read.
GUEST_TABLE_ACCESS = Access(write=True, user=True)


class WalkStep(NamedTuple):
    """One paging-structure entry read during a walk (value as read, before any A/D update)."""

    level: int  # 4 = PML4E, 3 = PDPE, 2 = PDE, 1 = PTE
    addr: int  # physical address of the entry (a GPA for a guest walk under NPT)
    value: int


class Translation(Value):
    """The outcome of a successful walk.

    ``pat_index`` is the 3-bit PAT/PCD/PWT selector of the leaf (APM vol. 2, 7.8.2), or None
    when paging is off and no PAT entry applies (memtype then treats the page as PAT WB so the
    MTRR type stands alone). ``level`` is 0 for paging off. ``user``/``writable``/``nx`` are the
    combined rights of every level. A value, as PagingRegs.
    """

    __slots__ = ("va", "pa", "page_size", "level", "leaf_entry", "pat_index", "user",
                 "writable", "nx", "walk")

    def __init__(self, va: int, pa: int, page_size: int, level: int, leaf_entry: int,
                 pat_index: Optional[int], user: bool, writable: bool, nx: bool,
                 walk: tuple[WalkStep, ...]) -> None:
        self.va = va
        self.pa = pa
        self.page_size = page_size
        self.level = level
        self.leaf_entry = leaf_entry
        self.pat_index = pat_index
        self.user = user
        self.writable = writable
        self.nx = nx
        self.walk = walk

    @property
    def page_base(self) -> int:
        return self.pa & ~(self.page_size - 1)


def is_canonical(va: int) -> bool:
    """Bits 63:47 all equal (48-bit linear addresses; APM vol. 2, 5.3.1)."""
    top = va >> 47
    return top == 0 or top == (1 << 17) - 1


def canonical(va: int) -> int:
    """`va` with bits 63:48 copied from bit 47: the canonical form of a 48-bit linear address."""
    va &= (1 << 48) - 1
    return va | (0xFFFF << 48) if va >> 47 else va


class NonCanonicalAddress(Exception):
    """A long-mode linear address that is not canonical: #GP/#SS, never #PF, so not ours to
    report as a page fault (APM vol. 2, 5.3.1)."""

    def __init__(self, address: int) -> None:
        super().__init__(f"non-canonical address {address:#x}")
        self.address = address


class PageFault(Exception):
    """A #PF the walk would raise (APM vol. 2, 8.4.2 for the error code).

    ``level`` is the level of the entry at which the walk stopped (the leaf level for a
    protection fault); ``final`` is True when the fault concerns the translation of the page
    itself (a leaf entry not present or with reserved bits, or a protection check on the
    completed translation) and False when the walk stopped at a non-leaf table entry. Nested
    paging and traces use both to say where in the walk things went wrong.
    """

    def __init__(
        self, error_code: int, address: int, level: int, final: bool, walk: tuple[WalkStep, ...]
    ) -> None:
        super().__init__(f"#PF({pf_error_name(error_code)}) at {address:#x} level {level}")
        self.error_code = error_code
        self.address = address
        self.level = level
        self.final = final
        self.walk = walk

    @property
    def present(self) -> bool:
        return bool(self.error_code & PF_P)

    @property
    def reserved(self) -> bool:
        return bool(self.error_code & PF_RSV)


class NestedFault(Exception):
    """A #VMEXIT(NPF) the nested walk would cause (APM vol. 2, 15.25.6).

    ``exitinfo1`` carries the #PF-style bits P/RW/US/RSV/ID of the nested walk plus exactly one
    of NPF_GUEST_PAGE (bit 32: translating the final guest physical address) or NPF_GUEST_TABLE
    (bit 33: translating the address of a guest page-table entry). ``exitinfo2`` is the GPA.
    ``level``/``final`` describe the nested walk as in :class:`PageFault`; ``gva`` is the guest
    linear address when the fault arose from a two-dimensional walk.
    """

    def __init__(
        self,
        exitinfo1: int,
        gpa: int,
        level: int,
        final: bool,
        walk: tuple[WalkStep, ...],
        gva: Optional[int] = None,
    ) -> None:
        where = "guest table" if exitinfo1 & NPF_GUEST_TABLE else "guest page"
        super().__init__(
            f"#NPF({pf_error_name(exitinfo1 & 0xFFFFFFFF)}, {where}) gpa {gpa:#x} level {level}"
        )
        self.exitinfo1 = exitinfo1
        self.exitinfo2 = gpa
        self.level = level
        self.final = final
        self.walk = walk
        self.gva = gva

    @property
    def gpa(self) -> int:
        return self.exitinfo2

    @property
    def guest_table(self) -> bool:
        return bool(self.exitinfo1 & NPF_GUEST_TABLE)

    @property
    def guest_page(self) -> bool:
        return bool(self.exitinfo1 & NPF_GUEST_PAGE)


def pf_error_name(code: int) -> str:
    """Readable error code for traces, e.g. ``P|W|U``; ``0`` spelled ``not-present read``."""
    names = [(PF_P, "P"), (PF_W, "W"), (PF_U, "U"), (PF_RSV, "RSV"), (PF_ID, "ID"),
             (PF_PK, "PK")]
    parts = [n for bit, n in names if code & bit]
    return "|".join(parts) if parts else "0"


# ---------------------------------------------------------------------------------------------
# The walk proper. One core serves native walks, nested walks and the guest leg of a 2D walk;
# what differs is how an entry address becomes data (``read_entry``) and who commits A/D bits.

# (entry address, entry width) -> A/D bits to set, committed only when the whole access succeeds
_Pending = dict[tuple[int, int], int]


def _id_bit(regs: PagingRegs, mode: PagingMode) -> int:
    """I/D is defined only with no-execute in force (APM vol. 2, 8.4.2: EFER.NXE=1 and PAE
    paging). The APM leaves it undefined otherwise; we also set it when SMEP is on, since an
    instruction-fetch fault can then come from SMEP alone and reporting ID is what software
    (and QEMU, against which we compare) expects."""
    if regs.nxe and mode in (PagingMode.PAE, PagingMode.LONG4):
        return PF_ID
    if regs.smep:
        return PF_ID
    return 0


def _access_bits(access: Access, id_bit: int) -> int:
    code = 0
    if access.write:
        code |= PF_W
    if access.user:
        code |= PF_U
    if access.fetch:
        code |= id_bit
    return code


def _check_rights(
    regs: PagingRegs, access: Access, user_ok: bool, write_ok: bool, nx: bool
) -> bool:
    """The access checks of APM vol. 2, 5.6 (and 5.6.4/5.6.5 for SMEP/SMAP) on the combined
    rights of the walk. True means allowed."""
    if regs.gmet:
        # A nested walk under GMET: reads and writes ignore U/S (R/W still counts, at any
        # privilege); a supervisor fetch needs a supervisor page, as SMEP has it, and a user
        # fetch a user page.
        if access.fetch:
            return not nx and user_ok == access.user
        return write_ok or not access.write
    if access.fetch:
        if nx:
            return False
        if access.user:
            return user_ok
        # Supervisor fetch: SMEP forbids executing user pages.
        return not (user_ok and regs.smep)
    if access.user:
        if not user_ok:
            return False
        return write_ok or not access.write
    # Supervisor data access.
    if user_ok and regs.smap and not access.ac:
        return False
    if access.write and not write_ok and regs.wp:
        return False
    return True


def _key_denies(regs: PagingRegs, access: Access, user_ok: bool, leaf: int) -> bool:
    """Protection keys (APM vol. 2, 5.6.6), long mode only: a data access to a page whose
    key's rights forbid it, checked before the other rights as the processor reports PK. A
    user access to a supervisor page is refused by U/S alone; fetches ignore keys."""
    if access.fetch or (access.user and not user_ok):
        return False
    rights = regs.key_rights(user_ok, (leaf & PTE_PKEY_MASK) >> PTE_PKEY_SHIFT)
    if rights & PKR_AD:
        return True
    return bool(access.write and rights & PKR_WD and (access.user or regs.wp))


class _Level(NamedTuple):
    level: int
    shift: int  # bit position of the lowest VA bit this level indexes
    rsvd: int  # reserved bits when the entry points to a table (or is the only form)
    rsvd_large: Optional[int]  # reserved bits when PS=1 maps a page; None: PS not a leaf here
    has_rights: bool  # R/W, U/S and NX are meaningful at this level
    has_a: bool  # the entry has an Accessed bit the processor sets


def _pae_levels(regs: PagingRegs, mode: PagingMode, maxphyaddr: int, gbpages: bool) -> list[_Level]:
    """Reserved-bit masks per level, from the entry figures of APM vol. 2, 5.3 (PAE) and 5.3.3
    (long mode). Physical-address bits at or above MAXPHYADDR are reserved; in legacy PAE the
    whole 62:MAXPHYADDR range is (bits 62:52 are MBZ there), in long mode only 51:MAXPHYADDR
    (62:52 are available to software). NX (bit 63) is reserved when EFER.NXE=0."""
    nx_rsvd = 0 if regs.nxe else PTE_NX
    if mode is PagingMode.PAE:
        high = _bits(maxphyaddr, 62)
        # Legacy PAE PDPE: 63:MAXPHYADDR, 8:5 and 2:1 MBZ; no R/W, U/S, A or NX there.
        pdpe_rsvd = _bits(maxphyaddr, 63) | _bits(5, 8) | _bits(1, 2)
        return [
            _Level(3, 30, pdpe_rsvd, None, False, False),
            _Level(2, 21, high | nx_rsvd, high | nx_rsvd | _bits(13, 20), True, True),
            _Level(1, 12, high | nx_rsvd, None, True, True),
        ]
    high = _bits(maxphyaddr, 51)
    base = high | nx_rsvd
    # PML4E: bits 8:7 MBZ. PDPE with PS=1 maps 1 GB only if the CPU has 1-GB pages; without
    # them PS itself is reserved. Large pages: the address bits below the page size, above
    # the PAT bit, are MBZ (29:13 for 1 GB, 20:13 for 2 MB).
    pdpe_large = (base | _bits(13, 29)) if gbpages else (base | PTE_PS)
    return [
        _Level(4, 39, base | _bits(7, 8), None, True, True),
        _Level(3, 30, base, pdpe_large, True, True),
        _Level(2, 21, base, base | _bits(13, 20), True, True),
        _Level(1, 12, base, None, True, True),
    ]


def long_mode_reserved(maxphyaddr: int, nxe: bool,
                       gbpages: bool = True) -> list[tuple[int, int, Optional[int]]]:
    """(level, reserved bits of a table pointer, reserved bits of a page or None where PS maps
    none) for each level of 4-level paging, PML4E first: the masks _walk_core applies, for a
    walker outside Python that must fault (or refuse) exactly where this one does."""
    regs = PagingRegs(cr0=CR0_PG, cr3=0, cr4=CR4_PAE, efer=EFER_LMA | (EFER_NXE if nxe else 0))
    return [(lv.level, lv.rsvd, lv.rsvd_large)
            for lv in _pae_levels(regs, PagingMode.LONG4, maxphyaddr, gbpages)]

def _walk_core(
    regs: PagingRegs,
    va: int,
    access: Access,
    read_entry: Callable[[int, int], int],
    maxphyaddr: int,
    gbpages: bool,
    canonical: bool = True,
) -> tuple[Translation, _Pending]:
    if not 32 <= maxphyaddr <= 52:
        raise ValueError(f"MAXPHYADDR {maxphyaddr} outside 32..52")
    mode = regs.mode
    if mode is PagingMode.OFF:
        pa = va & 0xFFFFFFFF
        return (
            Translation(va, pa, 4096, 0, 0, None, True, True, False, ()),
            {},
        )
    if mode is PagingMode.LEGACY:
        return _walk_legacy(regs, va, access, read_entry, maxphyaddr)

    id_bit = _id_bit(regs, mode)
    acc = _access_bits(access, id_bit)
    if mode is PagingMode.LONG4:
        if canonical:
            if not is_canonical(va):
                raise NonCanonicalAddress(va)
        elif va >> 52:
            raise ValueError(f"guest physical address {va:#x} wider than 52 bits")
        vaddr = va & ((1 << 48) - 1)
        table = regs.cr3 & _bits(12, 51)
    else:
        vaddr = va & 0xFFFFFFFF
        table = regs.cr3 & 0xFFFFFFE0  # the PDPT is 32-byte aligned

    addr_mask = _bits(12, maxphyaddr - 1)
    steps: list[WalkStep] = []
    pending: _Pending = {}
    user_ok = write_ok = True
    nx = False
    for lv in _pae_levels(regs, mode, maxphyaddr, gbpages):
        # 9 index bits per level, except the 4-entry PDPT of legacy PAE (VA bits 31:30).
        index_mask = 0x3 if mode is PagingMode.PAE and lv.level == 3 else 0x1FF
        entry_addr = table | (((vaddr >> lv.shift) & index_mask) << 3)
        entry = read_entry(entry_addr, 8) & _U64
        steps.append(WalkStep(lv.level, entry_addr, entry))
        if not entry & PTE_P:
            # Nothing else in a not-present entry means anything, PS included: only a PTE is
            # known to be the leaf.
            raise PageFault(acc, va, lv.level, lv.level == 1, tuple(steps))
        is_large = lv.rsvd_large is not None and bool(entry & PTE_PS)
        is_leaf = lv.level == 1 or is_large
        rsvd = lv.rsvd_large if is_large else lv.rsvd
        if entry & rsvd:
            raise PageFault(acc | PF_P | PF_RSV, va, lv.level, is_leaf, tuple(steps))
        if lv.has_rights:
            user_ok = user_ok and bool(entry & PTE_US)
            write_ok = write_ok and bool(entry & PTE_RW)
            nx = nx or (regs.nxe and bool(entry & PTE_NX))
        if lv.has_a:
            pending[(entry_addr, 8)] = pending.get((entry_addr, 8), 0) | PTE_A
        if is_leaf:
            size = 1 << lv.shift
            frame = entry & addr_mask & ~(size - 1)
            pat_bit = bool(entry & (PTE_PAT_LARGE if is_large else PTE_PAT_4K))
            if mode is PagingMode.LONG4 and _key_denies(regs, access, user_ok, entry):
                raise PageFault(acc | PF_P | PF_PK, va, lv.level, True, tuple(steps))
            if not _check_rights(regs, access, user_ok, write_ok, nx):
                raise PageFault(acc | PF_P, va, lv.level, True, tuple(steps))
            if access.write:
                pending[(entry_addr, 8)] |= PTE_D
            pat_index = (int(pat_bit) << 2) | (int(bool(entry & PTE_PCD)) << 1) | int(
                bool(entry & PTE_PWT)
            )
            return (
                Translation(
                    va,
                    frame | (vaddr & (size - 1)),
                    size,
                    lv.level,
                    entry,
                    pat_index,
                    user_ok,
                    write_ok,
                    nx,
                    tuple(steps),
                ),
                pending,
            )
        table = entry & addr_mask
    raise AssertionError("walk fell off the last level")  # pragma: no cover


def _walk_legacy(
    regs: PagingRegs,
    va: int,
    access: Access,
    read_entry: Callable[[int, int], int],
    maxphyaddr: int,
) -> tuple[Translation, _Pending]:
    """Legacy 32-bit paging (APM vol. 2, 5.3 non-PAE). Entries have no NX and no reserved bits
    except in a 4-MB PDE: bit 21 is MBZ, and bits 20:13 hold physical-address bits 39:32
    (PSE-36 extended to 40 bits on AMD), so those above MAXPHYADDR are reserved too."""
    va32 = va & 0xFFFFFFFF
    acc = _access_bits(access, _id_bit(regs, PagingMode.LEGACY))
    steps: list[WalkStep] = []
    pending: _Pending = {}
    pde_addr = (regs.cr3 & 0xFFFFF000) | ((va32 >> 22) << 2)
    pde = read_entry(pde_addr, 4) & 0xFFFFFFFF
    steps.append(WalkStep(2, pde_addr, pde))
    if not pde & PTE_P:
        raise PageFault(acc, va, 2, False, tuple(steps))
    large = regs.pse and bool(pde & PTE_PS)
    pending[(pde_addr, 4)] = PTE_A
    if large:
        width = min(maxphyaddr, 40)
        rsvd = (1 << 21) | _bits(13 + max(width - 32, 0), 20)
        if pde & rsvd:
            raise PageFault(acc | PF_P | PF_RSV, va, 2, True, tuple(steps))
        leaf, leaf_addr, level, size = pde, pde_addr, 2, 1 << 22
        frame = (pde & 0xFFC00000) | (((pde >> 13) & 0xFF) << 32)
        pat_bit = bool(pde & PTE_PAT_LARGE)
        user_ok = bool(pde & PTE_US)
        write_ok = bool(pde & PTE_RW)
    else:
        pte_addr = (pde & 0xFFFFF000) | (((va32 >> 12) & 0x3FF) << 2)
        pte = read_entry(pte_addr, 4) & 0xFFFFFFFF
        steps.append(WalkStep(1, pte_addr, pte))
        if not pte & PTE_P:
            raise PageFault(acc, va, 1, True, tuple(steps))
        pending[(pte_addr, 4)] = PTE_A
        leaf, leaf_addr, level, size = pte, pte_addr, 1, 1 << 12
        frame = pte & 0xFFFFF000
        pat_bit = bool(pte & PTE_PAT_4K)
        user_ok = bool(pde & PTE_US) and bool(pte & PTE_US)
        write_ok = bool(pde & PTE_RW) and bool(pte & PTE_RW)
    if not _check_rights(regs, access, user_ok, write_ok, False):
        raise PageFault(acc | PF_P, va, level, True, tuple(steps))
    if access.write:
        pending[(leaf_addr, 4)] |= PTE_D
    pat_index = (int(pat_bit) << 2) | (int(bool(leaf & PTE_PCD)) << 1) | int(bool(leaf & PTE_PWT))
    return (
        Translation(
            va, frame | (va32 & (size - 1)), size, level, leaf, pat_index, user_ok, write_ok,
            False, tuple(steps),
        ),
        pending,
    )


# ---------------------------------------------------------------------------------------------
# Memory adapters and A/D commit


def _reader(read_u64: ReadFn, read_u32: Optional[ReadFn]) -> Callable[[int, int], int]:
    def read_entry(addr: int, width: int) -> int:
        if width == 8:
            return read_u64(addr)
        if read_u32 is not None:
            return read_u32(addr)
        return read_u64(addr) & 0xFFFFFFFF

    return read_entry


def _commit(
    pending: _Pending,
    read_u64: ReadFn,
    write_u64: Optional[WriteFn],
    read_u32: Optional[ReadFn],
    write_u32: Optional[WriteFn],
) -> None:
    """Set A/D bits, re-reading each entry so that one entry reached twice (recursive tables,
    or several nested walks sharing an NPT entry) collects the union of its updates. Writes
    happen only for entries whose bits actually change."""
    if write_u64 is None:
        return
    for (addr, width), bits in pending.items():
        if width == 8:
            cur = read_u64(addr)
            if cur | bits != cur:
                write_u64(addr, cur | bits)
        else:
            if read_u32 is not None and write_u32 is not None:
                cur = read_u32(addr)
                if cur | bits != cur:
                    write_u32(addr, cur | bits)
            else:
                cur64 = read_u64(addr)
                if cur64 | bits != cur64:
                    write_u64(addr, cur64 | bits)


def walk(
    read_u64: ReadFn,
    regs: PagingRegs,
    va: int,
    access: Access = READ,
    *,
    read_u32: Optional[ReadFn] = None,
    write_u64: Optional[WriteFn] = None,
    write_u32: Optional[WriteFn] = None,
    maxphyaddr: int = 40,
    gbpages: bool = True,
) -> Translation:
    """Translate ``va`` as the processor would for ``access`` (APM vol. 2, 5.2-5.6).

    Raises :class:`PageFault` or :class:`NonCanonicalAddress`. With ``write_u64`` given, the
    Accessed bit of every entry walked (the legacy-PAE PDPE has none) and the Dirty bit of the
    leaf for writes are set, and only when the access succeeds: a faulting access leaves the
    tables untouched, so a debugger or trace query with no write callback is side-effect free
    and a real access is idempotent when retried. Legacy entries are 32-bit: ``read_u32`` and
    ``write_u32`` are used when given, else the low half of a 64-bit access.
    """
    t, pending = _walk_core(regs, va, access, _reader(read_u64, read_u32), maxphyaddr, gbpages)
    _commit(pending, read_u64, write_u64, read_u32, write_u32)
    return t


_DEFAULT_HOST = PagingRegs(cr0=CR0_PG | CR0_WP, cr3=0, cr4=CR4_PAE, efer=EFER_LMA | EFER_NXE)


def _nested_core(
    read_u64: ReadFn,
    read_u32: Optional[ReadFn],
    ncr3: int,
    gpa: int,
    access: Access,
    host: Optional[PagingRegs],
    maxphyaddr: int,
    gbpages: bool,
    guest_table: bool,
    gva: Optional[int],
) -> tuple[Translation, _Pending]:
    regs = (host if host is not None else _DEFAULT_HOST).replace(cr3=ncr3)
    if regs.mode is PagingMode.OFF:
        raise ValueError("nested paging needs the host's paging on")
    # Every nested access is a user access, except under GMET, where the final access keeps
    # its privilege (a guest page-table access stays a user one: GUEST_TABLE_ACCESS).
    nested_access = access if regs.gmet else Access(write=access.write, user=True,
                                                    fetch=access.fetch)
    try:
        return _walk_core(
            regs, gpa, nested_access, _reader(read_u64, read_u32), maxphyaddr, gbpages,
            canonical=False,
        )
    except PageFault as pf:
        kind = NPF_GUEST_TABLE if guest_table else NPF_GUEST_PAGE
        raise NestedFault(pf.error_code | kind, gpa, pf.level, pf.final, pf.walk, gva) from None


def walk_nested(
    read_u64: ReadFn,
    ncr3: int,
    gpa: int,
    access: Access = READ,
    *,
    host: Optional[PagingRegs] = None,
    write_u64: Optional[WriteFn] = None,
    read_u32: Optional[ReadFn] = None,
    write_u32: Optional[WriteFn] = None,
    maxphyaddr: int = 40,
    gbpages: bool = True,
    guest_table: bool = False,
) -> Translation:
    """Translate a guest physical address through the nested page table (APM vol. 2, 15.25.5).

    The nested table has the format of the host's paging mode (``host``: CR0/CR4/EFER as they
    were at VMRUN; the CR3 field is ignored, ``ncr3`` is the root). svmemu's hosts run in long
    mode, which is the default (4-level, EFER.NXE=1). Every nested access is a user access, so
    U/S must be 1 at every level and SMEP/SMAP/WP never apply (with ``host.gmet``, U/S only
    decides who may fetch, see _check_rights); NX applies when the host has EFER.NXE. ``guest_table`` picks the EXITINFO1 bit a fault reports: set it when ``gpa`` is
    the address of a guest page-table entry (bit 33), leave it clear for the final GPA of the
    guest's access (bit 32). Raises :class:`NestedFault`.
    """
    t, pending = _nested_core(
        read_u64, read_u32, ncr3, gpa, access, host, maxphyaddr, gbpages, guest_table, None
    )
    _commit(pending, read_u64, write_u64, read_u32, write_u32)
    return t


class Translation2D(Value):
    """A guest-linear to host-physical translation under nested paging.

    ``guest`` is the guest's own walk (its steps carry guest-physical entry addresses),
    ``nested`` the nested walk of the final GPA, ``table_walks`` the nested walk of each guest
    page-table entry in the order the guest walk read them. A value, as PagingRegs.
    """

    __slots__ = ("va", "gpa", "hpa", "guest", "nested", "table_walks")

    def __init__(self, va: int, gpa: int, hpa: int, guest: Translation, nested: Translation,
                 table_walks: tuple[Translation, ...]) -> None:
        self.va = va
        self.gpa = gpa
        self.hpa = hpa
        self.guest = guest
        self.nested = nested
        self.table_walks = table_walks

    @property
    def page_size(self) -> int:
        """The span over which va+offset maps to hpa+offset: the smaller of the two pages."""
        return min(self.guest.page_size, self.nested.page_size)


def walk_2d(
    read_u64: ReadFn,
    guest: PagingRegs,
    ncr3: int,
    va: int,
    access: Access = READ,
    *,
    host: Optional[PagingRegs] = None,
    write_u64: Optional[WriteFn] = None,
    read_u32: Optional[ReadFn] = None,
    write_u32: Optional[WriteFn] = None,
    maxphyaddr: int = 40,
    gbpages: bool = True,
) -> Translation2D:
    """Translate a guest linear address with the guest's paging and nested paging combined
    (APM vol. 2, 15.25.5 "Nested Table Walk" and 15.25.6 for fault ordering).

    Every guest page-table entry address, starting from gCR3, is a GPA: it is translated by
    the nested walk first (as a user write, see GUEST_TABLE_ACCESS), which can end in #NPF with
    NPF_GUEST_TABLE. Then the guest entry is read and checked; a guest problem is a guest #PF
    (:class:`PageFault`, the guest's error code). Only when the guest walk and its protection
    checks succeed is the final GPA translated, with the guest's access kind, where a fault is
    #NPF with NPF_GUEST_PAGE. A/D bits (guest tables, nested tables) are set only when the whole
    access succeeds, as in :func:`walk`.
    """
    pending: _Pending = {}
    gpa_to_hpa: dict[int, int] = {}
    table_walks: list[Translation] = []
    raw_read = _reader(read_u64, read_u32)

    def merge(more: _Pending) -> None:
        for key, bits in more.items():
            pending[key] = pending.get(key, 0) | bits

    def read_guest_entry(gpa: int, width: int) -> int:
        t, upd = _nested_core(
            read_u64, read_u32, ncr3, gpa, GUEST_TABLE_ACCESS, host, maxphyaddr, gbpages,
            True, va,
        )
        merge(upd)
        table_walks.append(t)
        gpa_to_hpa[gpa] = t.pa
        return raw_read(t.pa, width)

    gt, guest_pending = _walk_core(guest, va, access, read_guest_entry, maxphyaddr, gbpages)
    nt, final_pending = _nested_core(
        read_u64, read_u32, ncr3, gt.pa, access, host, maxphyaddr, gbpages, False, va
    )
    merge(final_pending)
    for (gpa, width), bits in guest_pending.items():
        key = (gpa_to_hpa[gpa], width)
        pending[key] = pending.get(key, 0) | bits
    _commit(pending, read_u64, write_u64, read_u32, write_u32)
    return Translation2D(va, gt.pa, nt.pa, gt, nt, tuple(table_walks))


# ---------------------------------------------------------------------------------------------
# Dependency paths: what a translation read, so a cache can revalidate it instead of walking.


class PathEntry(NamedTuple):
    """One paging-structure entry a translation depends on.

    ``addr`` is where the entry sits in (host-)physical memory: for a guest entry under nested
    paging, the host-physical address the nested walk found for it, not its GPA. ``value`` is
    its content after the walk's own A/D updates. ``width`` is 8, or 4 for a legacy 32-bit
    (non-PAE) entry, guest or nested.
    """

    addr: int
    value: int
    width: int


def _width(regs: PagingRegs) -> int:
    return 4 if regs.mode is PagingMode.LEGACY else 8


def _path_entries(
    t: "Translation | Translation2D", guest: PagingRegs, host: Optional[PagingRegs]
) -> tuple[PathEntry, ...]:
    """Every entry read by the walk that produced ``t``, in read order, each once.

    For a 2D walk that is, per guest level, the nested walk of the guest entry's GPA and then
    the guest entry itself (at the HPA that walk produced), and finally the nested walk of the
    final GPA. Walk steps carry the values as read, so callers must pass a walk that wrote
    nothing (see :func:`walk_with_path`)."""
    seen: dict[tuple[int, int], int] = {}     # (addr, width) -> value; dicts keep order
    gw = _width(guest)
    if isinstance(t, Translation2D):
        nw = _width(host if host is not None else _DEFAULT_HOST)
        if len(t.table_walks) != len(t.guest.walk):  # pragma: no cover - walk_2d invariant
            raise AssertionError("one nested walk per guest entry")
        for step, tw in zip(t.guest.walk, t.table_walks):
            for s in tw.walk:
                seen.setdefault((s.addr, nw), s.value)
            seen.setdefault((tw.pa, gw), step.value)
        for s in t.nested.walk:
            seen.setdefault((s.addr, nw), s.value)
    else:
        for s in t.walk:
            seen.setdefault((s.addr, gw), s.value)
    return tuple(PathEntry(a, v, w) for (a, w), v in seen.items())


class _WouldWrite(Exception):
    pass


def _refuse_write(_addr: int, _value: int) -> None:
    raise _WouldWrite


def walk_with_path(
    read_u64: ReadFn,
    regs: PagingRegs,
    va: int,
    access: Access = READ,
    *,
    ncr3: Optional[int] = None,
    host: Optional[PagingRegs] = None,
    read_u32: Optional[ReadFn] = None,
    write_u64: Optional[WriteFn] = None,
    write_u32: Optional[WriteFn] = None,
    maxphyaddr: int = 40,
    gbpages: bool = True,
) -> tuple[int, Optional[tuple[PathEntry, ...]]]:
    """Translate ``va`` exactly as :func:`walk` (``ncr3`` None) or :func:`walk_2d` would,
    A/D updates and faults included, and also say what the translation depends on.

    Returns ``(pa, path)``: ``pa`` is the committing walk's result (host-physical under nested
    paging); ``path`` lists every entry (guest and nested) that a walk of ``va`` reads in the
    state that walk left behind. Contract: with the same ``regs`` inputs, ``ncr3``, ``host`` and
    ``access``, whenever every entry of ``path`` holds its recorded value, a walk of ``va``
    returns ``pa`` and writes nothing. It holds by construction: a walk is a deterministic
    function of the values it reads, and the path is taken from a second walk, made after the
    commit, that is refused any write. When that second walk would write or lands elsewhere
    (page tables overlapping so that an A/D update rewrites another entry on the path) there is
    no such path and ``path`` is None: the caller must walk every time.
    Raises what the walk raises (:class:`PageFault`, :class:`NestedFault`,
    :class:`NonCanonicalAddress`, :class:`emu.errors.Unsupported`).
    """

    def translate(w64: Optional[WriteFn], w32: Optional[WriteFn]) -> "Translation | Translation2D":
        if ncr3 is None:
            return walk(read_u64, regs, va, access, read_u32=read_u32, write_u64=w64,
                        write_u32=w32, maxphyaddr=maxphyaddr, gbpages=gbpages)
        return walk_2d(read_u64, regs, ncr3, va, access, host=host, write_u64=w64,
                       read_u32=read_u32, write_u32=w32, maxphyaddr=maxphyaddr, gbpages=gbpages)

    wrote = False

    def counted(write: Optional[WriteFn]) -> Optional[WriteFn]:
        if write is None:
            return None

        def w(addr: int, value: int) -> None:
            nonlocal wrote
            wrote = True
            write(addr, value)
        return w

    first = translate(counted(write_u64), counted(write_u32))
    pa = first.pa if isinstance(first, Translation) else first.hpa
    if not wrote:
        # Nothing was committed, so the first walk's reads are the state as it stands.
        return pa, _path_entries(first, regs, host)
    try:
        again = translate(_refuse_write, _refuse_write if write_u32 is not None else None)
    except (_WouldWrite, PageFault, NestedFault):
        return pa, None
    if (again.pa if isinstance(again, Translation) else again.hpa) != pa:
        return pa, None
    return pa, _path_entries(again, regs, host)
