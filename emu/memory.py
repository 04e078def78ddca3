"""Guest RAM and the accesses L0 makes to it.

RAM is one host mmap mapped into Unicorn with `mem_map_ptr`, so Python reads guest memory with no
copy and no Unicorn call. Linear accesses (pushing an exception frame, reading an IDT gate,
fetching an instruction to decode) go through our own page walker with the checks the CPU would
make, so a bad stack during delivery faults exactly like hardware.
"""
from __future__ import annotations

import mmap
import struct

from unicorn import Uc

from . import paging
from .arch_bits import CR0_PG
from .hw_switch import CS, Context
from .hostvm import MAXPHYADDR
from .interrupts import GP, PF, Fault

_Q = struct.Struct("<Q")
_L = struct.Struct("<I")


class GuestMemory:
    def __init__(self, uc: Uc, ram: mmap.mmap, size: int, ctx: Context) -> None:
        self.uc = uc
        self.ram = ram
        self.size = size
        self.ctx = ctx
        self.view = memoryview(ram)

    # ---- physical ---------------------------------------------------------------------------------
    def read_phys(self, pa: int, size: int) -> bytes:
        if 0 <= pa and pa + size <= self.size:
            return bytes(self.view[pa:pa + size])
        return bytes(self.uc.mem_read(pa, size))

    def write_phys(self, pa: int, data: bytes) -> None:
        self.uc.mem_write(pa, data)

    def read_u64(self, pa: int) -> int:
        if 0 <= pa and pa + 8 <= self.size:
            return _Q.unpack_from(self.view, pa)[0]
        return _Q.unpack(bytes(self.uc.mem_read(pa, 8)))[0]

    def read_u32(self, pa: int) -> int:
        if 0 <= pa and pa + 4 <= self.size:
            return _L.unpack_from(self.view, pa)[0]
        return _L.unpack(bytes(self.uc.mem_read(pa, 4)))[0]

    def write_u64(self, pa: int, value: int) -> None:
        self.uc.mem_write(pa, _Q.pack(value))

    def write_u32(self, pa: int, value: int) -> None:
        self.uc.mem_write(pa, _L.pack(value))

    # ---- linear -----------------------------------------------------------------------------------
    def regs(self) -> paging.PagingRegs:
        c = self.ctx
        return paging.PagingRegs(cr0=c.cr(0), cr3=c.cr(3), cr4=c.cr(4), efer=c.efer)

    def translate(self, va: int, *, write: bool = False, user: bool = False,
                  fetch: bool = False) -> int:
        """Linear → physical for the current L1 context, raising #PF as the CPU would."""
        regs = self.regs()
        if not regs.cr0 & CR0_PG:
            return va & 0xFFFFFFFF
        try:
            return paging.walk(self.read_u64, regs, va,
                               paging.Access(write=write, user=user, fetch=fetch),
                               read_u32=self.read_u32, write_u64=self.write_u64,
                               write_u32=self.write_u32, maxphyaddr=MAXPHYADDR).pa
        except paging.PageFault as pf:
            raise Fault(PF, pf.error_code, va)
        except paging.NonCanonicalAddress:
            raise Fault(GP, 0)

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
        """Instruction bytes at CS:RIP, stopping early at an unmapped page."""
        ctx = self.ctx.save()
        va = ctx.seg(CS).base + rip if ctx.mode_bits() != 64 else rip
        out = b""
        for v, n in self._chunks(va, size):
            try:
                out += self.read_phys(self.translate(v, user=ctx.cpl == 3, fetch=True), n)
            except Fault:
                break
        return out
