"""What memory type does an access to this virtual address get, and why?

The answer takes the whole path (APM vol. 2, 7.8 and 15.25.8): the world's own page walk (its
leaf's PAT/PCD/PWT select an entry of the PAT that world uses: hPAT for L1, gPAT or the shared
PAT for L2 per PAT model), then, under nested paging, the nested walk of the guest-physical
address (its leaf selects an hPAT entry, the host type) and the guest x host combination, and
finally the MTRR type of the system-physical address. The extension says how each world
translates (`Extension.world_paging`); this module only walks and combines, with no side
effects: no A/D bits are set, nothing is cached.

Used by `svmemu memtype`, by `--trace mem` and by tests.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

from emu.arch import memtype, paging
from emu.arch.bits import CR0_CD, CR4_SMAP, CR4_SMEP
from emu.errors import OptionError, SvmemuError
from emu.core.extension import WorldPaging
from emu.engine.hostvm import MAXPHYADDR
from emu.arch.memtype import MemType, memtype_name

if TYPE_CHECKING:
    from emu.core.machine import Machine

WORLDS = ("current", "L1", "L2")


class NotMapped(SvmemuError):
    """The address has no translation in that world (the access would fault)."""


@dataclass(frozen=True)
class Leaf:
    """The leaf entry of one walk and the PAT entry it selects."""

    entry: int
    level: int          # 0: paging off (no leaf, no PAT entry)
    page_size: int
    pat_index: Optional[int]

    @property
    def pat_pcd_pwt(self) -> str:
        if self.pat_index is None:
            return "paging off"
        i = self.pat_index
        return f"PAT={i >> 2} PCD={(i >> 1) & 1} PWT={i & 1}"


@dataclass(frozen=True)
class MemtypeResult:
    world: str
    va: int
    pa: int                        # the world's physical address (guest-physical under NPT)
    spa: int                       # system-physical: what the MTRRs see
    guest: Leaf
    pat_name: str
    pat: int
    guest_type: MemType            # the world's PAT entry (WB when its paging is off)
    host: Optional[Leaf] = None    # nested leaf, under nested paging only
    host_pat: Optional[int] = None
    host_type: Optional[MemType] = None
    combined: Optional[MemType] = None   # guest x host (15.25.8), under nested paging only
    mtrr: MemType = memtype.UC
    cache_disabled: bool = False   # CR0.CD in the world (or its host)
    effective: MemType = memtype.UC

    @property
    def nested(self) -> bool:
        return self.host is not None

    def describe(self) -> str:
        """Multi-line human-readable breakdown (the `svmemu memtype` output)."""
        n = memtype_name
        out = [f"{self.world} va {self.va:#x}"]
        g = self.guest
        phys = "gpa" if self.nested else "pa"
        walk, ptype = ("guest walk:", "guest type:") if self.nested else ("walk:", "PAT type:")
        if g.pat_index is None:
            out.append(f"  {walk:14}paging off -> {phys} {self.pa:#x}")
        else:
            out.append(f"  {walk:14}level {g.level} leaf {g.entry:#018x} ({g.page_size >> 10} KiB"
                       f" page) -> {phys} {self.pa:#x}")
        out.append(f"  {ptype:14}{g.pat_pcd_pwt}"
                   + (f" -> {self.pat_name}[{g.pat_index}] of {self.pat:#018x}"
                      if g.pat_index is not None else "") + f" = {n(self.guest_type)}")
        if self.host is not None:
            h = self.host
            out.append(f"  nested walk:  level {h.level} leaf {h.entry:#018x} ({h.page_size >> 10}"
                       f" KiB page) -> spa {self.spa:#x}")
            out.append(f"  host type:    {h.pat_pcd_pwt} -> hPAT[{h.pat_index}] of "
                       f"{self.host_pat:#018x} = {n(self.host_type)}")
            out.append(f"  guest x host: {n(self.guest_type)} x {n(self.host_type)} = "
                       f"{n(self.combined)}")
        out.append(f"  MTRR type:    {n(self.mtrr)} (spa {self.spa:#x})")
        if self.cache_disabled:
            out.append("  CR0.CD=1:     caching disabled")
        out.append(f"  effective:    {n(self.effective)}")
        return "\n".join(out)

    def short(self) -> str:
        """One line, for `--trace mem`."""
        addr = f"gpa {self.pa:#x} spa {self.spa:#x}" if self.nested else f"pa {self.pa:#x}"
        types = f"{memtype_name(self.guest_type)}"
        if self.nested:
            types += f"x{memtype_name(self.host_type)}"
        types += f"+mtrr {memtype_name(self.mtrr)} = {memtype_name(self.effective)}"
        return f"va {self.va:#x} {addr} type {types}"


def world_paging(machine: "Machine", world: str = "current") -> WorldPaging:
    """How `world` translates now; "current" is the world the CPU is running."""
    if world not in WORLDS:
        raise OptionError(f"unknown world {world!r} (choose from {', '.join(WORLDS)})")
    current = machine.level()
    if world == "current":
        world = current
    for ext in machine.extensions:
        view = ext.world_paging(world)
        if view is not None:
            return view
    if world == "L1" and current == "L1":
        machine.ctx.save()
        return WorldPaging("L1", machine.mem.regs(), machine.msrs.values[memtype.MSR_PAT], "PAT")
    raise OptionError(f"there is no {world} to query: L1 has not entered a guest")


def _leaf(t: paging.Translation) -> Leaf:
    return Leaf(t.leaf_entry, t.level, t.page_size, t.pat_index)


def _type(pat: int, index: Optional[int]) -> MemType:
    if index is None:
        return memtype.WB
    t = memtype.pat_entry(pat, index)
    if t not in memtype.PAT_TYPES:   # cannot be loaded architecturally; say so, do not guess
        raise OptionError(f"PAT entry {index} of {pat:#018x} holds reserved type {t}")
    return MemType(t)


def effective_memtype(machine: "Machine", va: int, world: str = "current") -> MemtypeResult:
    """The memory type a data read of `va` in `world` gets, with every step that decided it.

    Protection is not the question here, only translation: the walk is a supervisor read with
    SMEP/SMAP ignored, so any mapped address has an answer. An unmapped one raises NotMapped."""
    view = world_paging(machine, world)
    return memtype_for(machine, view, va)


def memtype_for(machine: "Machine", view: WorldPaging, va: int) -> MemtypeResult:
    """`effective_memtype` for an already known world (the trace hook asks once per access)."""
    mem = machine.mem
    regs = view.regs.replace(cr4=view.regs.cr4 & ~(CR4_SMEP | CR4_SMAP))
    try:
        if view.ncr3 is None:
            t = paging.walk(mem.read_u64, regs, va, paging.READ, read_u32=mem.read_u32,
                            maxphyaddr=MAXPHYADDR)
            guest, pa, spa, host = _leaf(t), t.pa, t.pa, None
        else:
            t2 = paging.walk_2d(mem.read_u64, regs, view.ncr3, va, paging.READ,
                                host=view.host_regs, read_u32=mem.read_u32,
                                maxphyaddr=MAXPHYADDR)
            guest, pa, spa, host = _leaf(t2.guest), t2.gpa, t2.hpa, _leaf(t2.nested)
    except paging.PageFault as e:
        raise NotMapped(f"{view.world} va {va:#x} is not mapped: {e}") from None
    except paging.NestedFault as e:
        raise NotMapped(f"{view.world} va {va:#x} is not mapped by nested paging: {e}") from None
    except paging.NonCanonicalAddress as e:
        raise NotMapped(f"{view.world} va {va:#x}: {e}") from None
    mtrrs = memtype.Mtrrs.from_msr_values(machine.msrs.mtrr_values())
    mtrr = memtype.mtrr_type(mtrrs, spa, MAXPHYADDR)
    guest_type = _type(view.pat, guest.pat_index)
    cd = bool(view.regs.cr0 & CR0_CD) or bool(host is not None and view.host_cr0 & CR0_CD)
    host_type = combined = None
    if host is not None:
        assert view.host_pat is not None
        host_type = _type(view.host_pat, host.pat_index)
        combined = memtype.combine_guest_host(guest_type, host_type)
    # memtype.effective_type's rule, from the parts already computed above.
    effective = memtype.CD if cd else memtype.combine_pat_mtrr(
        combined if combined is not None else guest_type, mtrr)
    return MemtypeResult(view.world, va, pa, spa, guest, view.pat_name, view.pat, guest_type,
                         host, view.host_pat, host_type, combined, mtrr, cd, effective)


__all__ = ["MemtypeResult", "Leaf", "NotMapped", "effective_memtype", "memtype_for",
           "world_paging", "WORLDS"]
