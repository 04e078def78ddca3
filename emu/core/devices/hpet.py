"""The High Precision Event Timer of QEMU's pc machine (IA-PC HPET specification 1.0a).

What QEMU 7.2 presents at 0xFED00000, and what kernels that prefer the HPET to the PIT (Linux,
Xen: "Platform timer is 100.000MHz HPET") find: a 64-bit main counter at 100 MHz (a period of
10,000,000 fs), three comparators, legacy replacement routing (timer 0 on ISA IRQ 0, timer 1 on
IRQ 8, the PIT and the RTC cut off from their lines while it is on), and on the pc machine only
GSI 2 offered to each timer's own routing (its capability word). Every timer can be periodic and
is 64 bits wide, as QEMU makes them; no FSB (MSI) delivery.

Time is the machine's virtual time (clock.py): the counter is floor(tsc / 10) plus what the
guest wrote, counting only while the ENABLE bit is set. Every register read advances virtual
time as a PM-timer read does, so loops that poll the counter or the status register progress. As on QEMU, a comparator that
is already behind the counter when it is set fires at the next count (not after the counter
wraps), and a 32-bit one-shot timer also fires when the low 32 bits wrap first. Several periods
passing between two looks raise one interrupt, as with the PIT.
"""
from __future__ import annotations

from typing import Callable

from emu.core.devices.clock import cycles, tsc_at
from emu.core.devices.pm_timer import TIME_PER_READ

HPET_BASE = 0xFED00000
HPET_MMIO_SIZE = 0x400                     # the register block
HPET_MAP_SIZE = 0x1000                     # the page it sits in; the rest is open bus
HPET_HZ = 100_000_000
HPET_CLK_PERIOD_FS = 10_000_000            # femtoseconds per count: 100 MHz
HPET_TIMERS = 3
HPET_VENDOR_ID = 0x8086
HPET_REV_ID = 1

# General registers (offsets in the 1 KiB block).
GCAP_ID = 0x000
GEN_CONF = 0x010
GINTR_STA = 0x020
MAIN_CNT = 0x0F0
TIMER_BASE = 0x100
TIMER_STRIDE = 0x20
TN_CONF_CAP = 0x00
TN_COMPARATOR = 0x08
TN_FSB_ROUTE = 0x10

GCAP_COUNT_SIZE_CAP = 1 << 13
GCAP_LEG_RT_CAP = 1 << 15
GCAP_LOW = (HPET_VENDOR_ID << 16 | GCAP_LEG_RT_CAP | GCAP_COUNT_SIZE_CAP
            | (HPET_TIMERS - 1) << 8 | HPET_REV_ID)          # 0x8086A201, as QEMU reports
GCAP = HPET_CLK_PERIOD_FS << 32 | GCAP_LOW

CONF_ENABLE = 1 << 0
CONF_LEG_RT = 1 << 1

TN_INT_TYPE_LEVEL = 1 << 1
TN_INT_ENB = 1 << 2
TN_TYPE_PERIODIC = 1 << 3
TN_PER_INT_CAP = 1 << 4
TN_SIZE_CAP = 1 << 5
TN_VAL_SET = 1 << 6
TN_32MODE = 1 << 8
TN_INT_ROUTE_SHIFT = 9
TN_INT_ROUTE_MASK = 0x1F << TN_INT_ROUTE_SHIFT
TN_FSB_EN = 1 << 14
TN_WRITABLE = (TN_INT_TYPE_LEVEL | TN_INT_ENB | TN_TYPE_PERIODIC | TN_VAL_SET | TN_32MODE
               | TN_INT_ROUTE_MASK)
PC_INT_ROUTE_CAP = 1 << 2                  # the pc machine offers GSI 2 only
TN_RESET = PC_INT_ROUTE_CAP << 32 | TN_SIZE_CAP | TN_PER_INT_CAP

LEGACY_IRQS = (0, 8)                       # timer 0 -> IRQ 0 (PIT), timer 1 -> IRQ 8 (RTC)
MASK32 = 0xFFFFFFFF
MASK64 = (1 << 64) - 1


class _Timer:
    __slots__ = ("config", "cmp", "period", "fire_at", "wrap")

    def __init__(self) -> None:
        self.config = TN_RESET
        self.cmp = MASK64
        self.period = 0
        self.fire_at: int | None = None     # counter value of the next match
        self.wrap = False                   # the next match is a 32-bit one-shot's wrap


class Hpet:
    """`irq(line, level)` drives ISA/GSI line `line`; `routed(line)` says whether an edge on it
    could reach a CPU (so the timer bounds time slices only then)."""
    name = "hpet"

    def __init__(self, now: Callable[[], int], advance: Callable[[int], None],
                 irq: Callable[[int, int], None], routed: Callable[[int], bool]) -> None:
        self.now = now
        self.advance = advance
        self.irq = irq
        self.routed = routed
        self.sync: Callable[[], None] = lambda: None      # bring timers up to now
        self.changed: Callable[[], None] = lambda: None   # routing or a deadline moved
        self.reset()

    def reset(self) -> None:
        self.config = 0
        self.isr = 0
        self.counter_base = 0        # the counter when it was last written or stopped
        self.started_at = 0          # HPET cycles of virtual time when it last started
        self.timers = [_Timer() for _ in range(HPET_TIMERS)]

    # ---- the counter ------------------------------------------------------------------------
    @property
    def enabled(self) -> bool:
        return bool(self.config & CONF_ENABLE)

    @property
    def legacy(self) -> bool:
        """Legacy replacement: the PIT's and the RTC's lines belong to timers 0 and 1."""
        return bool(self.config & CONF_LEG_RT)

    def counter(self, now: int | None = None) -> int:
        if not self.enabled:
            return self.counter_base
        now = self.now() if now is None else now
        return (self.counter_base + cycles(now, HPET_HZ) - self.started_at) & MASK64

    def _time_of(self, count: int) -> int:
        """The virtual time at which the running counter reaches `count`."""
        return tsc_at(count - self.counter_base + self.started_at, HPET_HZ)

    # ---- timers -----------------------------------------------------------------------------
    def _line(self, n: int) -> int:
        if n < len(LEGACY_IRQS) and self.legacy:
            return LEGACY_IRQS[n]
        return (self.timers[n].config & TN_INT_ROUTE_MASK) >> TN_INT_ROUTE_SHIFT

    def _arm(self, n: int, wrap: bool = True) -> None:
        """Set the next match from the comparator and the counter now (QEMU's rules: a match
        already behind fires at the next count; `wrap`: a 32-bit one-shot fires at the wrap if
        that comes first)."""
        t = self.timers[n]
        t.wrap = False
        if not self.enabled:
            t.fire_at = None
            return
        cur = self.counter()
        if t.config & TN_32MODE:
            diff = (t.cmp - cur) & MASK32
            if diff == 0 or diff >= 1 << 31:
                diff = 1
            if wrap and not t.config & TN_TYPE_PERIODIC:
                to_wrap = MASK32 - (cur & MASK32)
                if to_wrap < diff:
                    diff, t.wrap = to_wrap, True
        else:
            diff = (t.cmp - cur) & MASK64
            if diff == 0 or diff >= 1 << 63:
                diff = 1
        t.fire_at = cur + max(diff, 1)

    def _arm_all(self) -> None:
        for n in range(HPET_TIMERS):
            self._arm(n)

    def deadline(self) -> int | None:
        """The virtual time of the next match that would interrupt a CPU."""
        times = [self._time_of(t.fire_at) for n, t in enumerate(self.timers)
                 if t.fire_at is not None and t.config & TN_INT_ENB and self.routed(self._line(n))]
        return min(times) if times else None

    def tick(self, now: int) -> None:
        if not self.enabled:
            return
        cur = self.counter(now)
        for n, t in enumerate(self.timers):
            if t.fire_at is None or cur < t.fire_at:
                continue
            self._fire(n)
            if t.wrap:
                self._arm(n, wrap=False)             # now the comparator itself
            elif t.config & TN_TYPE_PERIODIC and t.period:
                width = MASK32 if t.config & TN_32MODE else MASK64
                behind = (cur - t.cmp) & width        # the comparator is at or behind cur
                t.cmp = (t.cmp + (behind // t.period + 1) * t.period) & width
                self._arm(n)
            else:
                t.fire_at = None

    def _fire(self, n: int) -> None:
        t = self.timers[n]
        if not t.config & TN_INT_ENB:
            return
        line = self._line(n)
        if t.config & TN_INT_TYPE_LEVEL:
            self.isr |= 1 << n
            self.irq(line, 1)
        else:
            self.irq(line, 1)
            self.irq(line, 0)

    def _lower(self, n: int) -> None:
        if self.timers[n].config & TN_INT_TYPE_LEVEL:
            self.irq(self._line(n), 0)

    # ---- registers --------------------------------------------------------------------------
    def read_reg(self, offset: int) -> int:
        """The 64-bit register at `offset` (8-byte aligned)."""
        if offset == GCAP_ID:
            return GCAP
        if offset == GEN_CONF:
            return self.config
        if offset == GINTR_STA:
            return self.isr
        if offset == MAIN_CNT:
            return self.counter()
        n, reg = divmod(offset - TIMER_BASE, TIMER_STRIDE)
        if offset >= TIMER_BASE and n < HPET_TIMERS:
            t = self.timers[n]
            if reg == TN_CONF_CAP:
                return t.config
            if reg == TN_COMPARATOR:
                return t.cmp & (MASK32 if t.config & TN_32MODE else MASK64)
        return 0

    def write_reg(self, offset: int, value: int, mask: int) -> None:
        """Write the bits `mask` selects of the 64-bit register at `offset`."""
        if offset == GEN_CONF:
            old = self.config
            new = (old & ~mask | value & mask) & (CONF_ENABLE | CONF_LEG_RT)
            if (old ^ new) & CONF_ENABLE:
                if new & CONF_ENABLE:
                    self.started_at = cycles(self.now(), HPET_HZ)
                else:
                    self.counter_base = self.counter()
            self.config = new
            if (old ^ new) & CONF_LEG_RT:
                for n in range(len(LEGACY_IRQS)):
                    self._lower(n)
            self._arm_all()
            self.changed()
        elif offset == GINTR_STA:
            cleared = self.isr & value & mask
            for n in range(HPET_TIMERS):
                if cleared >> n & 1:
                    self.isr &= ~(1 << n)
                    self._lower(n)
        elif offset == MAIN_CNT:
            if not self.enabled:          # writable while halted only (the spec's rule)
                self.counter_base = (self.counter_base & ~mask | value & mask) & MASK64
                self._arm_all()
        elif offset >= TIMER_BASE:
            n, reg = divmod(offset - TIMER_BASE, TIMER_STRIDE)
            if n < HPET_TIMERS:
                self._write_timer(n, reg, value, mask)

    def _write_timer(self, n: int, reg: int, value: int, mask: int) -> None:
        t = self.timers[n]
        if reg == TN_CONF_CAP:
            old = t.config
            writable = mask & TN_WRITABLE
            t.config = old & ~writable | value & writable
            if (old ^ t.config) & TN_INT_TYPE_LEVEL and self.isr >> n & 1:
                self.isr &= ~(1 << n)                 # a level no longer held
                self.irq(self._line(n), 0)
            if t.config & TN_32MODE:
                t.cmp &= MASK32
                t.period &= MASK32
            self._arm(n)
            self.changed()
        elif reg == TN_COMPARATOR:
            if t.config & TN_32MODE:
                value &= MASK32
                mask &= MASK32
            if not t.config & TN_TYPE_PERIODIC or t.config & TN_VAL_SET:
                t.cmp = t.cmp & ~mask | value & mask
            t.period = t.period & ~mask | value & mask
            t.config &= ~TN_VAL_SET
            self._arm(n)
            self.changed()

    # ---- MMIO -------------------------------------------------------------------------------
    def mmio_read(self, offset: int, size: int) -> int:
        if offset >= HPET_MMIO_SIZE:
            return (1 << (8 * size)) - 1
        self.advance(TIME_PER_READ)      # then bring every timer, this one's too, up to now
        self.sync()
        aligned = offset & ~7
        shift = (offset & 7) * 8
        return (self.read_reg(aligned) >> shift) & ((1 << (8 * size)) - 1)

    def mmio_write(self, offset: int, size: int, value: int) -> None:
        if offset >= HPET_MMIO_SIZE:
            return
        self.sync()
        aligned = offset & ~7
        shift = (offset & 7) * 8
        mask = ((1 << (8 * size)) - 1) << shift
        self.write_reg(aligned, (value << shift) & mask, mask)

    # ---- snapshots ---------------------------------------------------------------------------
    def state(self) -> dict:
        return {"config": self.config, "isr": self.isr, "counter_base": self.counter_base,
                "started_at": self.started_at,
                "timers": [[t.config, t.cmp, t.period, t.fire_at, t.wrap] for t in self.timers]}

    def load_state(self, state: dict) -> None:
        self.config = int(state["config"])
        self.isr = int(state["isr"])
        self.counter_base = int(state["counter_base"])
        self.started_at = int(state["started_at"])
        for t, (config, cmp, period, fire_at, wrap) in zip(self.timers, state["timers"]):
            t.config, t.cmp, t.period = int(config), int(cmp), int(period)
            t.fire_at = None if fire_at is None else int(fire_at)
            t.wrap = bool(wrap)
