"""Data breakpoints (AMD APM vol. 2, 13.1.1.5 and 13.1.3.2): a breakpoint DR7 enables (Ln or Gn)
with R/Wn = 01b (writes) or 11b (reads or writes) raises a trap-like #DB once the instruction
that touched any of its LENn bytes completes, RIP at the next instruction, DR6.Bn set for each
breakpoint that matched and DR6's other bits kept.

Unicorn 2.1.4 builds QEMU's target without watchpoints, so such a breakpoint does nothing there.
L0 watches guest data accesses with a Unicorn memory hook instead. A memory hook slows every
access, so it exists only while DR7 enables a data breakpoint: L0 looks again after every MOV to
DR7 it intercepts, every DR7 load of its own (world switches) and a snapshot restore. DR0-DR3
are not intercepted, so the hook compares against their values at the time of the access;
Unicorn reports physical addresses, so a breakpoint's linear address is translated then.
Unicorn decides at translation time whether an access may take the inline fast path (which
runs no hook), so translated code is dropped whenever the hook comes or goes.

A hit stops the engine; engine patch 0004 stops it at the accessing instruction with its
accesses up to the hit already made. L0 puts back the bytes a hitting write replaced, runs the
instruction once more with the hook ignoring it, and delivers the #DB after it. After MOV SS or POP SS the #DB waits one more instruction, as the interrupt shadow holds
every debug trap back (APM vol. 2, 13.1.3.3); when that next instruction is INT1 (ICEBP), its
own #DB carries the DR6 bits and is the only one delivered. With RFLAGS.TF set the single-step
#DB of the instruction carries them the same way (one #DB, DR6.BS and DR6.Bn set)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from unicorn import UC_HOOK_MEM_READ, UC_HOOK_MEM_WRITE, UC_MEM_WRITE, Uc
from unicorn.x86_const import (UC_X86_REG_DR0, UC_X86_REG_DR1, UC_X86_REG_DR2, UC_X86_REG_DR3,
                               UC_X86_REG_DR6, UC_X86_REG_DR7, UC_X86_REG_RFLAGS,
                               UC_X86_REG_RIP)

from emu.arch.bits import (DR6_RESET, DR7_FIELDS_PER_BP, DR7_LEN0_SHIFT, DR7_RW0_SHIFT,
                           DR7_RW_READ_WRITE, DR7_RW_WRITE, PAGE_SIZE, RFLAGS_TF)
from emu.arch.decode import MAX_INSN_LENGTH, OPCODE_INT1, loads_ss, split_prefixes
from emu.arch.paging import NestedFault
from emu.core.interrupts import DB, Event, Fault, Kind
from emu.errors import Unsupported

if TYPE_CHECKING:
    from emu.core.board import Board

_DRS = (UC_X86_REG_DR0, UC_X86_REG_DR1, UC_X86_REG_DR2, UC_X86_REG_DR3)
_LENGTHS = (1, 2, 8, 4)      # LENn encodings 00b, 01b, 10b, 11b (APM vol. 2, 13.1.1.5)
_FIELD_MASK = 0b11
_PAGE_OFFSET = PAGE_SIZE - 1


def data_breakpoints(dr7: int) -> list[tuple[int, bool, int]]:
    """The data breakpoints `dr7` enables: (n, reads too, length in bytes) each."""
    out = []
    for n in range(len(_DRS)):
        if not (dr7 >> (2 * n)) & _FIELD_MASK:
            continue
        rw = (dr7 >> (DR7_RW0_SHIFT + DR7_FIELDS_PER_BP * n)) & _FIELD_MASK
        if rw not in (DR7_RW_WRITE, DR7_RW_READ_WRITE):
            continue
        length = _LENGTHS[(dr7 >> (DR7_LEN0_SHIFT + DR7_FIELDS_PER_BP * n)) & _FIELD_MASK]
        out.append((n, rw == DR7_RW_READ_WRITE, length))
    return out


class DataBreakpoints:
    """Keeps the memory hook present exactly while DR7 enables a data breakpoint, and turns a
    matching access into the #DB."""

    def __init__(self, machine: "Board") -> None:
        self.m = machine
        self._hook: int | None = None
        self._watch: list[tuple[int, bool, int]] = []
        self._hits = 0
        self._undo: list[tuple[int, bytes]] = []    # (physical address, bytes before the write)
        self._stepping = False

    @property
    def active(self) -> bool:
        return self._hook is not None

    def sync(self) -> None:
        """DR7 may have changed: install or remove the hook to match it."""
        uc = self.m.uc
        self._watch = data_breakpoints(uc.reg_read(UC_X86_REG_DR7))
        if self._watch and self._hook is None:
            self._hook = uc.hook_add(UC_HOOK_MEM_READ | UC_HOOK_MEM_WRITE, self._on_access)
            uc.ctl_flush_tb()
        elif not self._watch and self._hook is not None:
            uc.hook_del(self._hook)
            self._hook = None
            uc.ctl_flush_tb()

    def _on_access(self, uc: Uc, access: int, address: int, size: int, _value: int,
                   _data: object) -> None:
        # Unicorn gives the access's physical address: a breakpoint whose page offset it
        # overlaps is compared in full after translating DRn (its aligned range never crosses
        # a page), as the CPU compares linear addresses.
        hits = 0
        offset = address & _PAGE_OFFSET
        for n, reads, length in self._watch:
            if not reads and access != UC_MEM_WRITE:
                continue
            start = uc.reg_read(_DRS[n]) & ~(length - 1)     # LENn aligns the range down
            low = start & _PAGE_OFFSET
            if not (offset < low + length and low < offset + size):
                continue
            pa = self._physical(start)
            if pa is not None and address < pa + length and pa < address + size:
                hits |= 1 << n
        if not hits:
            return
        if self._stepping:                      # the instruction runs again, or the one after
            self._hits |= hits                  # MOV SS: the #DB to come reports it too
            return
        if access == UC_MEM_WRITE:              # the hook runs before the store
            try:
                self._undo.append((address, self.m.mem.read_phys(address, size)))
            except Unsupported:
                pass
        first = not self._hits
        self._hits |= hits
        if first:
            self.m.stop_at_access(self._trap)

    def _trap(self, rip: int) -> None:
        m = self.m
        uc = m.uc
        undo, self._undo = self._undo, []
        for address, old in reversed(undo):
            m.mem.write_phys(address, old)
        mode = m.ctx.save().mode_bits()
        stepping = bool(uc.reg_read(UC_X86_REG_RFLAGS) & RFLAGS_TF)
        self._stepping = True
        try:
            m.step(rip)
            held = loads_ss(self._code(rip), mode) and not m.finished()
            after = uc.reg_read(UC_X86_REG_RIP)
            if held:
                m.step(after)
        finally:
            self._stepping = False
        hits, self._hits = self._hits, 0
        if m.finished():
            return
        uc.reg_write(UC_X86_REG_DR6, uc.reg_read(UC_X86_REG_DR6) | DR6_RESET | hits)
        if held and self._is_int1(after, mode):
            return                              # INT1's #DB, already raised, reports the hits
        if stepping and not held:
            return                              # the single-step #DB reports them (one #DB)
        if held:
            m.run_deferred()                    # the event the next instruction raised comes first
        m.deliver_now(Event(DB, Kind.EXCEPTION), uc.reg_read(UC_X86_REG_RIP))

    def _physical(self, linear: int) -> int | None:
        """Where `linear` is in physical memory now (nested paging included), or None."""
        self.m.ctx.save()
        try:
            return self.m.mem.debug_translate(linear)
        except (Fault, NestedFault):
            return None

    def _code(self, rip: int) -> bytes:
        try:
            return self.m.mem.read_code(rip, MAX_INSN_LENGTH)
        except Fault:
            return b""

    def _is_int1(self, rip: int, mode: int) -> bool:
        op = split_prefixes(self._code(rip), mode).opcode
        return op[:1] == bytes([OPCODE_INT1])
