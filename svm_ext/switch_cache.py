"""Replaying the last world switch when only the volatile registers changed.

A hypervisor's run loop re-enters the same L2 over and over with a vmcb12 that differs from what
the last #VMEXIT wrote only in RIP (and RAX, RSP, RFLAGS, DR6, DR7, CR2, which L2 changes as it
runs). The full VMRUN decodes ~30 save-area and control fields into the CPU context; the full
#VMEXIT encodes them back and reloads the host. Each time they compute what they computed the
time before. This module memoises the three steps, one entry each:

- VMRUN, `load_guest`: the context bytes it produced (REGIONS: segment caches, CR0/3/4, EFER,
  hidden flags, the SVM controls Unicorn enforces), keyed by everything it read: vmcb12's bytes
  with the volatile fields left out, and the host context it read;
- #VMEXIT, `restore_host`: the REGIONS bytes it produced, keyed by the host context VMRUN kept and
  the current hidden flags it carries over;
- #VMEXIT, `store_guest`: its non-volatile output is a function of REGIONS alone, so when REGIONS
  equal what the last full store encoded, and vmcb12 still holds that encoding untouched, only
  the volatile fields need writing.

A hit replays bytes the full path produced for the same inputs, so the result is the same by
construction; volatile fields always go field by field. vmcb02 (L0 memory) is written only by the
full VMRUN, for the one key cached. SVMEMU_SWITCH_VERIFY=1 runs the full path after every hit and
fails loudly on any difference (tests/test_switch_cache.py runs the nested suites that way).
"""
from __future__ import annotations

import os
import struct
from typing import TYPE_CHECKING, Callable

from unicorn.x86_const import UC_X86_REG_DR6, UC_X86_REG_DR7, UC_X86_REG_RFLAGS

from emu.engine.hw_switch import (ES, GDTR, OFF_CR, OFF_CR2, OFF_EFER, OFF_EFLAGS, OFF_EIP, OFF_HFLAGS,
                           OFF_NESTED_PG_MODE, OFF_RAX, OFF_RSP, OFF_SEGS, OFF_VM_VMCB, SEG_SIZE, flush_tlb)

from emu.arch.vmcb import OFFSETS, VMCB_SIZE

from .switch_steps import FullSteps
from .vmexit import restore_host_volatile

if TYPE_CHECKING:
    from .vcpu import Vcpu
    from emu.arch.vmcb import Vmcb, Vmcb12Cache
    from emu.engine.hw_switch import Context

VERIFY = os.environ.get("SVMEMU_SWITCH_VERIFY") == "1"

# Context regions a world switch loads wholesale (offsets into Unicorn's CPU state).
REGIONS: tuple[tuple[int, int], ...] = (
    (OFF_SEGS + ES * SEG_SIZE, 4 * SEG_SIZE),        # ES CS SS DS
    (OFF_SEGS + GDTR * SEG_SIZE, 2 * SEG_SIZE),      # GDTR IDTR
    (OFF_CR, 8),                                     # CR0
    (OFF_CR + 24, 16),                               # CR3 CR4
    (OFF_EFER, 8),
    (OFF_HFLAGS, 8),                                 # hflags, hflags2
    (OFF_VM_VMCB, OFF_NESTED_PG_MODE + 4 - OFF_VM_VMCB),   # vm_vmcb .. nested paging mode
)
# Not V_TPR (right after): VMRUN sets it outside load_guest (svm_ext/vintr.py) and #VMEXIT
# leaves it as L2 had it, so it is nobody's output here.

# The volatile fields and where each lives in the CPU: at an offset of the context, or (lazily
# split there) behind Unicorn's register API, in the order VMRUN writes them (DR7, DR6, RFLAGS).
VOLATILE_IN_CONTEXT = ((OFF_EIP, "rip"), (OFF_RAX, "rax"), (OFF_RSP, "rsp"), (OFF_CR2, "cr2"))
VOLATILE_BY_REGISTER = ((UC_X86_REG_DR7, "dr7"), (UC_X86_REG_DR6, "dr6"),
                        (UC_X86_REG_RFLAGS, "rflags"))
_VOLATILE = tuple(name for _, name in VOLATILE_IN_CONTEXT + VOLATILE_BY_REGISTER)
_SAVE_END = 0x700
_DR_TO_RIP = struct.Struct("<4Q")                # dr7 dr6 rflags rip: contiguous in the save area
_Q = struct.Struct("<Q")
assert [OFFSETS[n] for n in ("dr7", "dr6", "rflags", "rip")] == [OFFSETS["dr7"] + 8 * i for i in range(4)]


def _vmcb_ranges() -> tuple[tuple[int, int], ...]:
    """vmcb12 bytes VMRUN reads, minus the volatile fields and the exit fields (0x70-0x8F,
    0xC0 on: written by #VMEXIT or clean bits / NRIP / instruction bytes)."""
    spans, start = [(0x000, 0x070), (0x090, 0x0C0)], 0x400
    for lo in sorted(OFFSETS[n] for n in _VOLATILE):
        if lo > start:
            spans.append((start, lo))
        start = max(start, lo + 8)
    spans.append((start, _SAVE_END))
    return tuple(spans)


VMCB_RANGES = _vmcb_ranges()


def regions_of(view: memoryview) -> bytes:
    return b"".join([view[off:off + n] for off, n in REGIONS])


def _put_regions(view: memoryview, data: bytes) -> None:
    pos = 0
    for off, n in REGIONS:
        view[off:off + n] = data[pos:pos + n]
        pos += n


def _vm_flag(view: memoryview) -> bytes:
    """EFLAGS.VM, the one EFLAGS bit the hidden-flag recomputation reads."""
    return b"\x01" if view[OFF_EFLAGS + 2] & 2 else b"\x00"


def _vmcb_bytes(ext: "Vcpu") -> bytes:
    buf, pa = ext.machine.mem.view, ext.state.vmcb12_pa
    return pa.to_bytes(8, "little") + b"".join([buf[pa + lo:pa + hi] for lo, hi in VMCB_RANGES])


class CachedSteps(FullSteps):
    """The world switch's heavy steps, replayed when their inputs repeat (one entry each)."""

    def __init__(self) -> None:
        self.enter_key = self.enter_regions = b""
        self.exit_key = self.exit_regions = b""
        self.stored_key = b""          # vmcb12's bytes right after the last full store ...
        self.stored_regions = b""      # ... which encoded these context bytes
        self.hits: dict[str, int] = {"enter": 0, "store": 0, "restore": 0}

    def clear(self) -> None:
        self.enter_key = self.exit_key = self.stored_key = b""

    # ---- VMRUN: load_guest ---------------------------------------------------------------------
    def load_guest(self, ext: "Vcpu", c: "Vmcb12Cache") -> None:
        view = ext.machine.ctx.view        # the host context, saved
        key = _vmcb_bytes(ext) + regions_of(view) + _vm_flag(view)
        if key == self.enter_key:
            self.hits["enter"] += 1
            before = bytes(view) if VERIFY else b""
            _put_regions(view, self.enter_regions)
            _load_volatile(ext, c)
            if VERIFY:
                _verify_replay(ext, before, lambda: super(CachedSteps, self).load_guest(ext, c),
                               "VMRUN load_guest")
            return
        super().load_guest(ext, c)
        self.enter_key, self.enter_regions = key, regions_of(ext.machine.ctx.save().view)

    # ---- #VMEXIT: store_guest ------------------------------------------------------------------
    def store_guest(self, ext: "Vcpu", ctx: "Context", vm: "Vmcb") -> None:
        m = ext.machine                    # the guest context, saved
        regions = regions_of(m.ctx.view)
        if regions == self.stored_regions and _vmcb_bytes(ext) == self.stored_key:
            self.hits["store"] += 1
            _store_volatile(ext)
            if VERIFY:
                span = slice(ext.state.vmcb12_pa, ext.state.vmcb12_pa + VMCB_SIZE)
                mid = bytes(m.mem.view[span])
                super().store_guest(ext, ctx, vm)
                _same("#VMEXIT store_guest", mid, bytes(m.mem.view[span]))
            return
        super().store_guest(ext, ctx, vm)
        self.stored_regions, self.stored_key = regions, _vmcb_bytes(ext)

    # ---- #VMEXIT: restore_host -----------------------------------------------------------------
    def restore_host(self, ext: "Vcpu", ctx: "Context") -> None:
        view = ext.machine.ctx.view
        key = (regions_of(memoryview(ext.state.l1_host)) + bytes(view[OFF_HFLAGS:OFF_HFLAGS + 4])
               + _vm_flag(view))
        if key == self.exit_key:
            self.hits["restore"] += 1
            before = bytes(view) if VERIFY else b""
            _put_regions(view, self.exit_regions)
            restore_host_volatile(ext, ctx)     # the tail every path shares
            if VERIFY:
                _verify_replay(ext, before,
                               lambda: super(CachedSteps, self).restore_host(ext, ctx),
                               "#VMEXIT restore_host")
            return
        super().restore_host(ext, ctx)
        self.exit_key, self.exit_regions = key, regions_of(ext.machine.ctx.save().view)


def _load_volatile(ext: "Vcpu", c: "Vmcb12Cache") -> None:
    ctx = ext.machine.ctx
    ctx.set_u64(OFF_EIP, c.rip)
    ctx.set_u64(OFF_RAX, c.rax)
    ctx.set_u64(OFF_RSP, c.rsp)
    ctx.set_u64(OFF_CR2, c.cr2)
    ctx.restore()
    l1_dr7 = ext.machine.breakpoints.dr7()
    ext.dr_flags.write(c.dr7, c.dr6, c.rflags)
    ext.machine.breakpoints.loaded(l1_dr7)
    flush_tlb(ext.machine.uc)


def _store_volatile(ext: "Vcpu") -> None:
    m = ext.machine
    ctx, buf, base = m.ctx, m.mem.view, ext.state.vmcb12_pa
    dr7, dr6, rflags = ext.dr_flags.read()
    _DR_TO_RIP.pack_into(buf, base + OFFSETS["dr7"], dr7, dr6, rflags, ctx.u64(OFF_EIP))
    _Q.pack_into(buf, base + OFFSETS["rsp"], ctx.u64(OFF_RSP))
    _Q.pack_into(buf, base + OFFSETS["rax"], ctx.u64(OFF_RAX))
    _Q.pack_into(buf, base + OFFSETS["cr2"], ctx.cr(2))


# ---- verification --------------------------------------------------------------------------------
def _verify_replay(ext: "Vcpu", before: bytes, full: Callable[[], None], what: str) -> None:
    """Run the full step from the same starting context and compare the whole CPU context."""
    m = ext.machine
    replayed = bytes(m.ctx.save().view)
    m.ctx.view[:] = before
    m.ctx.restore()
    full()
    _same(what, replayed, bytes(m.ctx.save().view))


def _same(what: str, fast: bytes, full: bytes) -> None:
    if fast != full:
        diff = [i for i in range(min(len(fast), len(full))) if fast[i] != full[i]]
        raise AssertionError(f"switch cache: {what} differs from the full path at context/VMCB "
                             f"offsets {[hex(i) for i in diff[:16]]}")
