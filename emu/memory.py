"""Guest RAM and the accesses L0 makes to it.

RAM is one host mmap mapped into Unicorn with `mem_map_ptr`, so Python reads guest memory with no
copy and no Unicorn call. Linear accesses (pushing an exception frame, reading an IDT gate,
fetching an instruction to decode) go through our own page walker with the checks the CPU would
make, so a bad stack during delivery faults exactly like hardware.
"""
from __future__ import annotations

import ctypes
import mmap
import struct

from unicorn import UC_PROT_READ, Uc, UcError
from unicorn.unicorn_py3 import unicorn as _unicorn_lib

from . import paging
from .arch_bits import CR0_PG
from .hw_switch import (CS, HF2_NPT, NPT_MODE_LMA, NPT_MODE_NXE, NPT_MODE_PAE, OFF_HFLAGS2,
                        OFF_NESTED_CR3, OFF_NESTED_PG_MODE, Context)
from .arch_bits import CR4_PAE, EFER_LMA, EFER_NXE, CR0_WP
from .errors import Unsupported
from .hostvm import MAXPHYADDR
from .interrupts import GP, PF, Fault

_Q = struct.Struct("<Q")
_uclib = _unicorn_lib.uclib
_uclib.uc_vmem_read.argtypes = [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_int, ctypes.c_void_p,
                                ctypes.c_size_t]
_uclib.uc_vmem_read.restype = ctypes.c_int


def _vmem_read(uc: Uc, va: int, size: int) -> bytes | None:
    """Read through the CPU's current paging (debug walk: no faults, no A/D updates); None if
    any byte is unmapped, so the caller can fall back to the exact walker."""
    buf = ctypes.create_string_buffer(size)
    if _uclib.uc_vmem_read(uc._uch, va & 0xFFFFFFFFFFFFFFFF, UC_PROT_READ, buf, size) != 0:
        return None
    return buf.raw
_L = struct.Struct("<I")


class GuestMemory:
    def __init__(self, uc: Uc, ram: mmap.mmap, size: int, ctx: Context) -> None:
        self.uc = uc
        self.ram = ram
        self.size = size
        self.ctx = ctx
        self.view = memoryview(ram)

    # ---- physical ---------------------------------------------------------------------------------
    def _unbacked(self, pa: int, size: int, what: str) -> Unsupported:
        return Unsupported(f"{what} of physical address {pa:#x}+{size} (no RAM or device there)")

    def read_phys(self, pa: int, size: int) -> bytes:
        if 0 <= pa and pa + size <= self.size:
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
            try:
                return paging.walk_2d(self.read_u64, regs, self.ctx.u64(OFF_NESTED_CR3), va, access,
                                      host=self._nested_host(), write_u64=self.write_u64,
                                      read_u32=self.read_u32, write_u32=self.write_u32,
                                      maxphyaddr=MAXPHYADDR).hpa
            except paging.PageFault as pf:
                raise Fault(PF, pf.error_code, va)
            except paging.NonCanonicalAddress:
                raise Fault(GP, 0)
        if not regs.cr0 & CR0_PG:
            return va & 0xFFFFFFFF
        try:
            return paging.walk(self.read_u64, regs, va, access,
                               read_u32=self.read_u32, write_u64=self.write_u64,
                               write_u32=self.write_u32, maxphyaddr=MAXPHYADDR).pa
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
        mode = self.ctx.u32(OFF_NESTED_PG_MODE)
        return paging.PagingRegs(cr0=CR0_PG | CR0_WP | 1, cr3=0,
                                 cr4=CR4_PAE if mode & NPT_MODE_PAE else 0,
                                 efer=(EFER_LMA if mode & NPT_MODE_LMA else 0)
                                 | (EFER_NXE if mode & NPT_MODE_NXE else 0))

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

    def read_code(self, rip: int, size: int) -> bytes:
        """Instruction bytes at CS:RIP, stopping early at an unmapped page.

        Without nested paging, Unicorn's debug translation (C, no side effects, 0.5 us) does the
        walk; under nested paging it would raise a nested fault by longjmp, so ours does."""
        ctx = self.ctx.save()
        va = ctx.seg(CS).base + rip if ctx.mode_bits() != 64 else rip
        if not ctx.u32(OFF_HFLAGS2) & HF2_NPT:
            got = _vmem_read(self.uc, va, size)
            if got is not None:
                return got
        out = b""
        for v, n in self._chunks(va, size):
            try:
                out += self.read_phys(self.translate(v, user=ctx.cpl == 3, fetch=True), n)
            except Fault:
                break
        return out
