"""Guest RAM and the accesses L0 makes to it.

RAM is one host mmap mapped into Unicorn with `mem_map_ptr`, so Python reads guest memory with no
copy and no Unicorn call. Linear accesses (pushing an exception frame, reading an IDT gate,
fetching an instruction to decode) go through our own page walker with the checks the CPU would
make, so a bad stack during delivery faults exactly like hardware.
"""
from __future__ import annotations

import mmap
import struct
from functools import partial
from typing import Callable, Optional

from unicorn import UC_PROT_READ, Uc, UcError

from emu.arch import paging
from emu.arch.bits import CR0_PG
from emu.arch.value import Value
from emu.engine import binding
from emu.engine.hw_switch import (CS, HF2_GMET, HF2_NPT, HF_CPL_MASK, HF_CS64, NPT_MODE_LMA,
                        NPT_MODE_NXE, NPT_MODE_PAE, OFF_CR, OFF_EFER, OFF_HFLAGS, OFF_HFLAGS2, OFF_NESTED_CR3,
                        OFF_NESTED_PG_MODE, OFF_PKRS, OFF_PKRU, OFF_SEGS, SEG_SIZE, Context)
from emu.arch.bits import (CR4_LA57, CR4_PAE, CR4_PKE, CR4_PKS, CR4_PSE, CR4_SMAP, CR4_SMEP,
                           EFER_LMA, EFER_NXE, CR0_WP)
from emu.errors import Unsupported
from emu.engine.hostvm import MAXPHYADDR
from emu.core.interrupts import GP, PF, Fault

_Q = struct.Struct("<Q")


def _vmem_read(uc: Uc, va: int, size: int) -> bytes | None:
    """Read through the CPU's current paging (debug walk: no faults, no A/D updates); None if
    any byte is unmapped, so the caller can fall back to the exact walker."""
    return binding.vmem_read(uc, va, size, UC_PROT_READ)
_L = struct.Struct("<I")
_FOUR_GIB = 1 << 32

# The only register bits a page walk reads (paging.PagingRegs: mode, NXE, WP, SMEP, SMAP, PSE;
# CR3 whole), and the nested-paging mode bits VMRUN records for the host (GuestMemory.host_regs).
CR0_WALK = CR0_PG | CR0_WP
CR4_WALK = CR4_PAE | CR4_PSE | CR4_LA57 | CR4_SMEP | CR4_SMAP | CR4_PKE | CR4_PKS
EFER_WALK = EFER_LMA | EFER_NXE
NPT_MODE_WALK = NPT_MODE_PAE | NPT_MODE_LMA | NPT_MODE_NXE
# Not a bit of Unicorn's nested paging mode: hflags2's GMET folded into the mode value this
# module keys nested walks by, so a walk's inputs say whether GMET was in force.
NPT_MODE_GMET = 1 << 8

_HFLAGS = struct.Struct("<II")            # hflags, hflags2
_CRS = struct.Struct("<5Q")               # CR0..CR4
_NESTED = struct.Struct("<QI")            # nested CR3, nested paging mode
_CS_BASE = OFF_SEGS + CS * SEG_SIZE + 8   # the base in a segment cache (hw_switch._SEG)
assert OFF_NESTED_PG_MODE == OFF_NESTED_CR3 + 8
_FETCH = paging.Access(fetch=True)
_USER_FETCH = paging.Access(fetch=True, user=True)
_CODE_CACHE_SIZE = 64    # code pages remembered (all forgotten when full)


class CodePath(Value):
    """Where the instruction byte at a RIP is, and everything that decided it.

    ``va`` is the linear address (CS base added outside 64-bit mode), ``pa`` the physical
    address of the byte (host-physical under nested paging, so an offset into Unicorn's RAM),
    ``page_end`` the bytes from ``pa`` to the end of its 4 KiB page (a longer read must look
    up ``va + page_end`` separately). ``entries`` holds every paging-structure entry the
    translation read, guest and nested levels alike, each as ``(addr, value, width)``
    (:class:`emu.arch.paging.PathEntry`: host-physical address, value after the walk's own A/D
    updates, 8 or 4 bytes). The remaining fields are the walk's inputs: ``cr3``; ``ncr3`` and
    ``nested_mode`` (the NPT_MODE_* bits VMRUN recorded for the host, with NPT_MODE_GMET),
    both 0 when ``nested`` is False; ``cr0``/``cr4``/``efer`` masked to the bits a walk reads (CR0_WALK, CR4_WALK,
    EFER_WALK); ``user``, CPL 3 (fetches are user accesses then).

    Contract: while ``inputs`` are unchanged and every entry still holds its value, an
    instruction fetch from any linear address in ``va``'s 4 KiB page translates to the same
    place (``pa`` moved by the same offset) and the walk has nothing to write. It holds
    because the walk ran on exactly these inputs and is a function of them and of the values
    it reads (see :func:`emu.arch.paging.walk_with_path`).
    """

    __slots__ = ("va", "pa", "page_end", "entries", "cr3", "ncr3", "cr0", "cr4", "efer",
                 "nested", "nested_mode", "user")

    def __init__(self, va: int, pa: int, page_end: int, entries: tuple[paging.PathEntry, ...],
                 cr3: int, ncr3: int, cr0: int, cr4: int, efer: int, nested: bool,
                 nested_mode: int, user: bool) -> None:
        self.va = va
        self.pa = pa
        self.page_end = page_end
        self.entries = entries
        self.cr3 = cr3
        self.ncr3 = ncr3
        self.cr0 = cr0
        self.cr4 = cr4
        self.efer = efer
        self.nested = nested
        self.nested_mode = nested_mode
        self.user = user

    @property
    def inputs(self) -> tuple[bool, int, int, int, int, int, int, bool]:
        """What must be equal, besides the entries, for the path to still hold."""
        return (self.nested, self.cr3, self.ncr3, self.cr0, self.cr4, self.efer,
                self.nested_mode, self.user)


class GuestMemory:
    def __init__(self, uc: Uc, ram: mmap.mmap, size: int, ctx: Context, *,
                 high_end: int = 0) -> None:
        self.uc = uc
        self.ram = ram
        self.size = size            # RAM from 0 (below the PCI hole); the host buffer's offsets
        self.high_end = high_end    # are guest addresses, RAM from 4 GiB up to high_end too
        self.ctx = ctx
        self.view = memoryview(ram)
        # Told of every store made here (emu/engine/code_group.py: several CPUs), else None.
        self.written: Callable[[int, int], None] | None = None
        # 2D translations (read_code, translate) under nested paging: (inputs, [access,] va page)
        # -> (pa page, 8-byte entry addresses, their values as 1-tuples, the same for 4-byte
        # entries); see _path_cached.
        self._code_cache: dict[tuple, tuple[int, tuple[int, ...], list[tuple[int]],
                                            tuple[int, ...], list[tuple[int]]]] = {}
        self._peek_q = partial(_Q.unpack_from, self.view)
        self._peek_l = partial(_L.unpack_from, self.view)

    # ---- physical ---------------------------------------------------------------------------------
    def _unbacked(self, pa: int, size: int, what: str) -> Unsupported:
        return Unsupported(f"{what} of physical address {pa:#x}+{size} (no RAM or device there)")

    def read_phys(self, pa: int, size: int) -> bytes:
        if 0 <= pa and pa + size <= self.size or _FOUR_GIB <= pa and pa + size <= self.high_end:
            return bytes(self.view[pa:pa + size])
        try:
            return bytes(self.uc.mem_read(pa, size))
        except UcError:
            raise self._unbacked(pa, size, "read")

    def write_phys(self, pa: int, data: bytes) -> None:
        try:
            self.uc.mem_write(pa, data)
        except UcError:
            raise self._unbacked(pa, len(data), "write")
        if self.written is not None:    # several CPUs: the others' code there is stale
            self.written(pa, len(data))

    def read_u64(self, pa: int) -> int:
        if 0 <= pa and pa + 8 <= self.size:
            return _Q.unpack_from(self.view, pa)[0]
        return _Q.unpack(self.read_phys(pa, 8))[0]

    def read_u32(self, pa: int) -> int:
        if 0 <= pa and pa + 4 <= self.size:
            return _L.unpack_from(self.view, pa)[0]
        return _L.unpack(self.read_phys(pa, 4))[0]

    def write_u64(self, pa: int, value: int) -> None:
        self.write_phys(pa, _Q.pack(value))

    def write_u32(self, pa: int, value: int) -> None:
        self.write_phys(pa, _L.pack(value))

    # ---- linear -----------------------------------------------------------------------------------
    def regs(self) -> paging.PagingRegs:
        c = self.ctx
        return paging.PagingRegs(cr0=c.cr(0), cr3=c.cr(3), cr4=c.cr(4), efer=c.efer)

    def translate(self, va: int, *, write: bool = False, user: bool = False,
                  fetch: bool = False) -> int:
        """Linear → physical for the current L1 context, raising #PF as the CPU would."""
        regs = self.regs()
        access = paging.Access(write=write, user=user, fetch=fetch)
        if self.ctx.u32(OFF_HFLAGS2) & HF2_NPT:
            # A nested guest: its linear addresses go through its own paging and then nested
            # paging. A NestedFault propagates: it is a #VMEXIT(NPF) for the extension to raise.
            # The page's translation is remembered with its path, as read_code's (_path_cached).
            inputs = self._fetch_inputs(self.ctx)[:-1]
            keys = self._key_registers()
            try:
                return self._path_cached((inputs, keys, access, va >> 12), va,
                                         lambda: self._data_walk(inputs, access, va, keys))
            except paging.PageFault as pf:
                raise Fault(PF, pf.error_code, va)
            except paging.NonCanonicalAddress:
                raise Fault(GP, 0)
        if not regs.cr0 & CR0_PG:
            return va & 0xFFFFFFFF
        # L1's own paging: the same remembered translation with its path (exception delivery
        # reads the IDT and GDT and pushes its frame through here, once per exception).
        inputs = self._fetch_inputs(self.ctx)[:-1]
        keys = self._key_registers()
        try:
            return self._path_cached((inputs, keys, access, va >> 12), va,
                                     lambda: self._data_walk(inputs, access, va, keys))
        except paging.PageFault as pf:
            raise Fault(PF, pf.error_code, va)
        except paging.NonCanonicalAddress:
            raise Fault(GP, 0)

    def debug_translate(self, va: int) -> int:
        """Linear -> physical as a debugger sees it (gdb's m/M packets): the current paging,
        nested paging included, with no A/D updates and no protection checks, so a debugger can
        read kernel pages and patch read-only code without changing what the guest observes.
        Uses the context as last saved. Raises Fault (#PF/#GP) or NestedFault when unmapped."""
        regs = self.regs()
        access = paging.Access(ac=True)
        try:
            if self.ctx.u32(OFF_HFLAGS2) & HF2_NPT:
                return paging.walk_2d(self.read_u64, regs, self.ctx.u64(OFF_NESTED_CR3), va, access,
                                      host=self._nested_host(), read_u32=self.read_u32,
                                      maxphyaddr=MAXPHYADDR).hpa
            if not regs.cr0 & CR0_PG:
                return va & 0xFFFFFFFF
            return paging.walk(self.read_u64, regs, va, access, read_u32=self.read_u32,
                               maxphyaddr=MAXPHYADDR).pa
        except paging.PageFault as pf:
            raise Fault(PF, pf.error_code, va)
        except paging.NonCanonicalAddress:
            raise Fault(GP, 0)

    def _nested_host(self) -> paging.PagingRegs:
        """The host paging mode Unicorn's nested walk uses, as VMRUN recorded it."""
        gmet = NPT_MODE_GMET if self.ctx.u32(OFF_HFLAGS2) & HF2_GMET else 0
        return self.host_regs(self.ctx.u32(OFF_NESTED_PG_MODE) | gmet)

    @staticmethod
    def host_regs(mode: int) -> paging.PagingRegs:
        """The paging registers a nested walk uses for host paging mode `mode` (NPT_MODE_*)."""
        return paging.PagingRegs(cr0=CR0_PG | CR0_WP | 1, cr3=0,
                                 cr4=CR4_PAE if mode & NPT_MODE_PAE else 0,
                                 efer=(EFER_LMA if mode & NPT_MODE_LMA else 0)
                                 | (EFER_NXE if mode & NPT_MODE_NXE else 0),
                                 gmet=bool(mode & NPT_MODE_GMET))

    def _chunks(self, va: int, size: int):
        while size > 0:
            n = min(size, 0x1000 - (va & 0xFFF))
            yield va, n
            va += n
            size -= n

    def read_linear(self, va: int, size: int, cpl: int) -> bytes:
        """Uses the paging state of the context as last saved: callers save it first."""
        out = b""
        for v, n in self._chunks(va, size):
            out += self.read_phys(self.translate(v, user=cpl == 3), n)
        return out

    def write_linear(self, va: int, data: bytes, cpl: int) -> None:
        pas = [(self.translate(v, write=True, user=cpl == 3), n) for v, n in self._chunks(va, len(data))]
        off = 0
        for pa, n in pas:
            self.write_phys(pa, data[off:off + n])
            off += n

    # ---- instruction bytes -------------------------------------------------------------------
    @staticmethod
    def _fetch_inputs(ctx: Context) -> tuple[bool, int, int, int, int, int, int, bool]:
        """The inputs of an instruction-fetch walk in the saved context, in CodePath.inputs
        order, read with three unpacks (this runs on every exit under nested paging)."""
        view = ctx.view
        hflags, hflags2 = _HFLAGS.unpack_from(view, OFF_HFLAGS)
        cr0, _, _, cr3, cr4 = _CRS.unpack_from(view, OFF_CR)
        efer = _Q.unpack_from(view, OFF_EFER)[0]
        if hflags2 & HF2_NPT:
            ncr3, nmode = _NESTED.unpack_from(view, OFF_NESTED_CR3)
            nested = True
            nmode = (nmode & NPT_MODE_WALK) | (NPT_MODE_GMET if hflags2 & HF2_GMET else 0)
        else:
            nested, ncr3, nmode = False, 0, 0
        return (nested, cr3, ncr3, cr0 & CR0_WALK, cr4 & CR4_WALK, efer & EFER_WALK, nmode,
                hflags & HF_CPL_MASK == 3)

    @staticmethod
    def _code_va(ctx: Context, rip: int) -> int:
        if ctx.hflags & HF_CS64:
            return rip
        return _Q.unpack_from(ctx.view, _CS_BASE)[0] + rip

    def _fetch_walk(self, inputs: tuple[bool, int, int, int, int, int, int, bool],
                    va: int) -> tuple[int, Optional[tuple[paging.PathEntry, ...]]]:
        """The walk read_code has always made for a fetch (A bits set as the CPU would), from
        ``inputs`` alone, with its path (None: no stable one). Raises what the walk raises."""
        nested, cr3, ncr3, cr0, cr4, efer, nmode, user = inputs
        regs = paging.PagingRegs(cr0=cr0, cr3=cr3, cr4=cr4, efer=efer)
        access = _USER_FETCH if user else _FETCH
        if not nested and not cr0 & CR0_PG:
            return va & 0xFFFFFFFF, ()
        return paging.walk_with_path(
            self.read_u64, regs, va, access, ncr3=ncr3 if nested else None,
            host=self.host_regs(nmode) if nested else None, read_u32=self.read_u32,
            write_u64=self.write_u64, write_u32=self.write_u32, maxphyaddr=MAXPHYADDR)

    def code_path(self, rip: int) -> Optional[CodePath]:
        """The translation of the instruction byte at CS:RIP in the current world (context
        saved first, as read_code does), with every entry it depends on: for a caller that
        caches it and revalidates by comparing entries instead of walking (CodePath's
        contract). Walks as a fetch does, so Accessed bits get set. None when the fetch would
        fault (#PF, #GP for a non-canonical RIP, #NPF) or, for page tables that overlap so
        that the walk's own A-bit updates rewrite entries on its path, when no path is stable;
        either way the caller must take the slow path."""
        ctx = self.ctx.save()
        va = self._code_va(ctx, rip)
        inputs = self._fetch_inputs(ctx)
        try:
            pa, entries = self._fetch_walk(inputs, va)
        except (paging.PageFault, paging.NestedFault, paging.NonCanonicalAddress):
            return None
        if entries is None:
            return None
        nested, cr3, ncr3, cr0, cr4, efer, nmode, user = inputs
        return CodePath(va, pa, 0x1000 - (pa & 0xFFF), entries, cr3, ncr3, cr0, cr4, efer,
                        nested, nmode, user)

    def _code_pa(self, inputs: tuple[bool, int, int, int, int, int, int, bool],
                 va: int) -> Optional[int]:
        """read_code's translation under nested paging (see _path_cached). None for a #PF or
        #GP (read_code stops there); #NPF propagates, as it always has."""
        try:
            return self._path_cached((inputs, va >> 12), va, lambda: self._fetch_walk(inputs, va))
        except (paging.PageFault, paging.NonCanonicalAddress):
            return None

    def _key_registers(self) -> tuple[int, int]:
        """PKRU and IA32_PKRS in the saved context: data accesses check them (paging.py)."""
        return self.ctx.u32(OFF_PKRU), self.ctx.u32(OFF_PKRS)

    def _data_walk(self, inputs: tuple, access: paging.Access, va: int,
                   keys: tuple[int, int]
                   ) -> tuple[int, Optional[tuple[paging.PathEntry, ...]]]:
        """translate's walk of a data access (2D under nested paging), from the walk's inputs
        and the key registers alone, with its path."""
        nested, cr3, ncr3, cr0, cr4, efer, nmode = inputs
        regs = paging.PagingRegs(cr0=cr0, cr3=cr3, cr4=cr4, efer=efer, pkru=keys[0],
                                 pkrs=keys[1])
        return paging.walk_with_path(
            self.read_u64, regs, va, access,
            ncr3=ncr3 if nested else None, host=self.host_regs(nmode) if nested else None,
            read_u32=self.read_u32,
            write_u64=self.write_u64, write_u32=self.write_u32, maxphyaddr=MAXPHYADDR)

    def _path_cached(self, key: tuple, va: int,
                     walk: Callable[[], tuple[int, Optional[tuple[paging.PathEntry, ...]]]]
                     ) -> int:
        """A 2D translation of va's page under `key` (the walk's inputs, the access, the page):
        the remembered page when its path still holds (a few entry compares instead of a 2D
        walk; walk_with_path's contract: then a walk returns the same and writes nothing),
        else `walk()`, remembered when it has a stable path whose entries all lie in RAM.
        Raises what the walk raises."""
        hit = self._code_cache.get(key)
        if hit is not None:
            base, a8, v8, a4, v4 = hit
            if list(map(self._peek_q, a8)) == v8 and (not a4 or list(map(self._peek_l, a4)) == v4):
                return base | (va & 0xFFF)
            del self._code_cache[key]
        pa, entries = walk()
        if entries is not None and all(e.addr + e.width <= self.size for e in entries):
            if len(self._code_cache) >= _CODE_CACHE_SIZE:
                self._code_cache.clear()
            e8 = [e for e in entries if e.width == 8]
            e4 = [e for e in entries if e.width == 4]
            self._code_cache[key] = (pa & ~0xFFF, tuple(e.addr for e in e8),
                                     [(e.value,) for e in e8], tuple(e.addr for e in e4),
                                     [(e.value,) for e in e4])
        return pa

    def read_code(self, rip: int, size: int) -> bytes:
        """Instruction bytes at CS:RIP, stopping early at an unmapped page.

        Without nested paging, Unicorn's debug translation (C, no side effects, 0.5 us) does the
        walk; under nested paging it would raise a nested fault by longjmp, so ours does, and
        remembers each code page's translation with its path (CodePath): the next read of the
        page re-reads those few entries instead of walking guest and nested tables again. A
        fault (#PF, #GP) ends the bytes early; #NPF propagates as a NestedFault."""
        ctx = self.ctx.save()
        va = self._code_va(ctx, rip)
        if ctx.u32(OFF_HFLAGS2) & HF2_NPT:
            inputs = self._fetch_inputs(ctx)
            if 0 < size <= 0x1000 - (va & 0xFFF):       # the usual case: one page
                pa = self._code_pa(inputs, va)
                return b"" if pa is None else self.read_phys(pa, size)
            out = b""
            for v, n in self._chunks(va, size):
                pa = self._code_pa(inputs, v)
                if pa is None:
                    break
                out += self.read_phys(pa, n)
            return out
        got = _vmem_read(self.uc, va, size)
        return got if got is not None else self._read_code_walking(ctx, va, size)

    def read_code_uncached(self, rip: int, size: int) -> bytes:
        """read_code with a full walk per page and nothing remembered: the reference the code
        cache is measured and tested against (bench/read_code.py, tests/test_code_path.py)."""
        ctx = self.ctx.save()
        return self._read_code_walking(ctx, self._code_va(ctx, rip), size)

    def _read_code_walking(self, ctx: Context, va: int, size: int) -> bytes:
        out = b""
        for v, n in self._chunks(va, size):
            try:
                out += self.read_phys(self.translate(v, user=ctx.cpl == 3, fetch=True), n)
            except Fault:
                break
        return out
