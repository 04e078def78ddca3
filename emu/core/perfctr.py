"""The performance counters count the one event svmemu's clock can measure: CPU clocks not
halted (event 0x76, AMD APM vol. 2, 13.2.1; the cycles event Linux's perf and its NMI watchdog
program).  Virtual time (emu/core/timebase.py) is the core clock, so a counter enabled for it
advances with the machine's time, minus the time HLT jumped over (a halted CPU's clock does
not count).

What is counted exactly as configured: both USR and OS set (every CPL), no edge detect,
inversion or count mask, host/guest bits both clear or both set.  Anything else enabled stops
the run (`unsupported:`) rather than leaving a counter that silently never moves: another
event, one privilege level alone.  With several CPUs each CPU counts its own clock: the
scheduler (emu/core/smp.py) adds the time a halted CPU's clock jumps to its halted time.
A counter that has overflowed with the interrupt bit (INT) set stops the run at the next
interrupt point (the counter-overflow interrupt through the local APIC's LVT is not
modelled).  Linux's NMI watchdog counts 10 s of cycles before its first overflow.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from emu.arch.msrs import MSR_CORE_PERF_CTL0, MSR_PERF_CTL0, MSR_PERF_CTR0
from emu.core.msrs_amd import LEGACY_PERF_COUNTERS, PERF_CTR_MASK as CTR_MASK
from emu.errors import Unsupported

if TYPE_CHECKING:
    from emu.core.board import Board


# PerfEvtSeln fields (APM 2, 13.2.1.1)
EVENT_SELECT = 0xFF | (0xF << 32)
UNIT_MASK = 0xFF << 8
USR = 1 << 16
OS = 1 << 17
EDGE = 1 << 18
INT = 1 << 20
EN = 1 << 22
INV = 1 << 23
CNT_MASK = 0xFF << 24
HOST_GUEST = 3 << 40
EVENT_CPU_CLOCKS_NOT_HALTED = 0x76


def countable(ctl: int) -> str | None:
    """None when an enabled PerfEvtSel value is one svmemu counts exactly, else why not."""
    event = (ctl & 0xFF) | ((ctl >> 32) & 0xF) << 8
    if event != EVENT_CPU_CLOCKS_NOT_HALTED or ctl & UNIT_MASK:
        return f"event {event:#x} unit mask {(ctl & UNIT_MASK) >> 8:#x} is not counted"
    if ctl & (USR | OS) != USR | OS:
        return "counting at one privilege level alone (USR or OS) is not counted"
    if ctl & (EDGE | INV | CNT_MASK):
        return "edge detect, inversion and count masks are not counted"
    if ctl & HOST_GUEST not in (0, HOST_GUEST):
        return "host-only or guest-only counting is not counted"
    return None


class PerfCounters:
    """The legacy counters 0-3 (and the core aliases of them): each PerfCtr read while its
    PerfEvtSel is enabled gives the value it has counted to now."""

    def __init__(self, m: "Board") -> None:
        self.m = m
        self.start: dict[int, int] = {}     # counter -> clock when its count was last set
        msrs = m.msrs
        for n in range(LEGACY_PERF_COUNTERS):
            self._wrap(MSR_PERF_CTL0 + n, MSR_PERF_CTR0 + n, n)
            core_ctl = MSR_CORE_PERF_CTL0 + 2 * n
            if core_ctl in msrs.owners:
                self._wrap(core_ctl, core_ctl + 1, n)
        m.irq.timers.append(self)

    def clock(self) -> int:
        return self.m.tsc - self.m.irq.halted_ticks

    def _ctl(self, n: int) -> int:
        return self.m.msrs.values.get(MSR_PERF_CTL0 + n, 0)

    def _stored(self, n: int) -> int:
        return self.m.msrs.values.get(MSR_PERF_CTR0 + n, 0)

    def value(self, n: int) -> int:
        """Counter n now."""
        if n not in self.start:
            return self._stored(n)
        return (self._stored(n) + self.clock() - self.start[n]) & CTR_MASK

    def _wrap(self, ctl_index: int, ctr_index: int, n: int) -> None:
        msrs = self.m.msrs
        ctl_owner, ctr_owner = msrs.owners[ctl_index], msrs.owners[ctr_index]

        def write_ctl(v: int) -> None:
            now, old = self.value(n), self._ctl(n)
            ctl_owner.write(v)                 # absent, reserved bits: #GP, nothing changed
            why = countable(v) if v & EN else None
            if why is not None:
                self.m.msrs.values[MSR_PERF_CTL0 + n] = old
                raise Unsupported(f"performance counter enabled (PerfEvtSel {v:#x}): {why} "
                                  f"by svmemu (only event 0x76, CPU clocks not halted)")
            self._settle(n, now, v & EN)

        def read_ctr() -> int:
            ctr_owner.read()                   # presence checks
            return self.value(n)

        def write_ctr(v: int) -> None:
            ctr_owner.write(v)
            self._settle(n, self._stored(n), self._ctl(n) & EN)

        msrs.register(ctl_index, ctl_owner.read, write_ctl)
        msrs.register(ctr_index, read_ctr, write_ctr)

    def _settle(self, n: int, value: int, running: int) -> None:
        """Counter n holds `value` from now, counting on if `running`."""
        self.m.msrs.values[MSR_PERF_CTR0 + n] = value
        if running:
            self.start[n] = self.clock()
        else:
            self.start.pop(n, None)
        self.m.irq.changed()

    # ---- snapshots (emu/core/snapshot.py): the MSR table holds every counter's value ----------
    def fold(self) -> None:
        """Store each running counter's count to now in the MSR table (it keeps counting)."""
        for n in list(self.start):
            self._settle(n, self.value(n), 1)

    def restored(self) -> None:
        """The MSR table was replaced: enabled counters count on from their stored values."""
        self.start = {n: self.clock() for n in range(LEGACY_PERF_COUNTERS)
                      if self._ctl(n) & EN}

    # ---- the overflow, checked at interrupt points (emu/core/irq.py's timers) ----------------
    def deadline(self) -> int | None:
        """None: the overflow is not an interrupt the run loop may bound slices or open
        interrupt windows for (those follow IF; a counter's would be an NMI through the LVT,
        which is not modelled); `tick` finds it at the next interrupt point instead."""
        return None

    def tick(self, now: int) -> None:
        for n in list(self.start):
            if self._ctl(n) & INT and self._stored(n) + self.clock() - self.start[n] > CTR_MASK:
                raise Unsupported(f"performance counter {n} overflowed with its interrupt "
                                  f"enabled: the counter-overflow interrupt is not modelled")
