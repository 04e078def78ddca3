"""The 8254 programmable interval timer at 0x40-0x43 and port 0x61 (system control port B),
counting virtual time as QEMU's i8254 and pcspk count host time.

Clock: PIT_HZ (1.193182 MHz) derived from the virtual TSC, see clock.py: a channel loaded at
virtual time t0 has counted cycles(now) - cycles(t0) input cycles. Counting follows QEMU's model
of each mode: modes 0 and 4 count down once (mode 0's output rises at terminal count and stays
high, mode 4 strobes it once), mode 2 (rate generator) and mode 3 (square wave) reload the count
(0 = 65536) every period, mode 3's output high for the first half. Modes 1 and 5 start on a gate
rising edge. Channel 0 drives ISA IRQ0 (the 8259's IRQ0 and I/O APIC pin 2); its rising edges
are delivered when virtual time passes them (`tick`), and `deadline` tells the run loop when the
next one falls so that HLT and time slices stop there. Channel 2's gate is port 0x61 bit 0 and
its output reads back as bit 5 (bit 1 is the speaker enable, bit 4 a refresh toggle that flips
on every read, as in QEMU).

Each read of a counter, of the read-back status or of port 0x61 advances virtual time by
TIME_PER_READ (1 µs, about what an ISA access costs), so a guest polling the PIT makes progress.

Programming: the control word at 0x43 selects a channel, access mode (latch command, low byte,
high byte, low then high), mode and BCD; 0xC0-0xFE are read-back commands (latch the count
and/or the status of the selected channels). Entry state is what SeaBIOS leaves: channel 0 in
mode 2 with count 65536 (18.2 Hz), loaded at time 0; channels 1 and 2 as reset (mode 3).
"""
from __future__ import annotations

from typing import Callable, Iterable

from emu.core.devices.base import PortDevice
from emu.core.devices.clock import PIT_HZ, cycles, tsc_at

PIT_CHANNEL0 = 0x40
PIT_CONTROL = 0x43
PORT_B = 0x61
PIT_IRQ = 0
TIME_PER_READ = 1000

RW_LATCH = 0
RW_LSB = 1
RW_MSB = 2
RW_WORD0 = 3                  # low then high byte, expecting the low byte
RW_WORD1 = 4                  # expecting the high byte

PORT_B_GATE2 = 0x01
PORT_B_SPEAKER = 0x02
PORT_B_REFRESH = 0x10
PORT_B_OUT2 = 0x20

_FIELDS = ("count", "latched_count", "count_latched", "status_latched", "status", "read_state",
           "write_state", "write_latch", "rw_mode", "mode", "bcd", "gate", "load_time",
           "edges", "out_high")


class Channel:
    def __init__(self, gate: int) -> None:
        self.count = 0x10000
        self.latched_count = 0
        self.count_latched = 0
        self.status_latched = 0
        self.status = 0
        self.read_state = 0
        self.write_state = 0
        self.write_latch = 0
        self.rw_mode = 0
        self.mode = 3
        self.bcd = 0
        self.gate = gate
        self.load_time = 0          # input cycle at which the count was loaded
        self.edges = 0              # rising output edges delivered (channel 0); -1: not counting
        self.out_high = 0           # the IRQ line level last driven (mode 0 holds it high)

    def elapsed(self, now_cycles: int) -> int:
        return now_cycles - self.load_time

    def get_count(self, d: int) -> int:
        if self.mode in (0, 1, 4, 5):
            return (self.count - d) & 0xFFFF
        if self.mode == 3:
            return self.count - (2 * d) % self.count
        return self.count - d % self.count

    def get_out(self, d: int) -> int:
        count = self.count
        if self.mode == 0:
            return int(d >= count)
        if self.mode == 1:
            return int(d < count)
        if self.mode == 2:
            return int(d % count == 0 and d != 0)
        if self.mode == 3:
            return int(d % count < (count + 1) >> 1)
        return int(d == count)                        # modes 4, 5

    def rising_edges(self, d: int) -> int:
        """Rising edges of the output in (0, d] input cycles after loading."""
        if self.mode in (2, 3):
            return d // self.count
        if self.mode in (0, 4):
            return int(d >= self.count)
        return 0

    def next_edge(self) -> int | None:
        """Elapsed input cycles at which the next undelivered rising edge falls."""
        if self.edges < 0:
            return None
        if self.mode in (2, 3):
            return (self.edges + 1) * self.count
        if self.mode in (0, 4) and self.edges == 0:
            return self.count
        return None

    def state(self) -> dict:
        return {name: getattr(self, name) for name in _FIELDS}

    def load_state(self, state: dict) -> None:
        for name in _FIELDS:
            setattr(self, name, int(state[name]))


class Pit8254(PortDevice):
    """`set_irq(level)` drives ISA IRQ0; `routed()` says whether an edge on it could interrupt
    (only then does `deadline` bound the run loop's time slices)."""
    name = "pit"

    def __init__(self, now: Callable[[], int], advance: Callable[[int], None],
                 set_irq: Callable[[int], None], routed: Callable[[], bool]) -> None:
        self.now = now
        self.advance = advance
        self.set_irq = set_irq
        self.routed = routed
        self.channels = [Channel(1), Channel(1), Channel(0)]
        self.speaker = 0
        self.refresh = 0
        self.firmware_state()

    def firmware_state(self) -> None:
        ch = self.channels[0]
        ch.mode, ch.rw_mode, ch.read_state, ch.write_state = 2, RW_WORD0, RW_WORD0, RW_WORD0
        ch.count, ch.load_time, ch.edges = 0x10000, cycles(self.now(), PIT_HZ), 0

    def ports(self) -> Iterable[int]:
        return (0x40, 0x41, 0x42, PIT_CONTROL, PORT_B)

    def _cycles(self) -> int:
        return cycles(self.now(), PIT_HZ)

    # ---- time ------------------------------------------------------------------------------
    def deadline(self) -> int | None:
        """Virtual time of channel 0's next rising edge, when an edge could interrupt."""
        ch = self.channels[0]
        nxt = ch.next_edge()
        if nxt is None or not self.routed():
            return None
        return tsc_at(ch.load_time + nxt, PIT_HZ)

    def tick(self, now: int) -> None:
        """Deliver channel 0's rising edges up to `now` (one edge stands for several, as one
        IRR bit does)."""
        ch = self.channels[0]
        nxt = ch.next_edge()
        if nxt is None:
            return
        d = ch.elapsed(cycles(now, PIT_HZ))
        if d < nxt:
            return
        ch.edges = max(ch.rising_edges(d), ch.edges + 1)
        self.set_irq(1)
        if ch.mode in (2, 3, 4):
            self.set_irq(0)          # a pulse: the 8259 latched the edge
        else:
            ch.out_high = 1          # mode 0 holds the line high until reprogrammed

    def _load(self, n: int, ch: Channel, value: int) -> None:
        ch.count = value if value else 0x10000
        ch.load_time = self._cycles()
        ch.edges = 0
        if n == 0:
            self._lower(ch)

    def _lower(self, ch: Channel) -> None:
        if ch.out_high:
            ch.out_high = 0
            self.set_irq(0)

    # ---- ports -----------------------------------------------------------------------------
    def write(self, port: int, size: int, value: int) -> None:
        value &= 0xFF
        if port == PORT_B:
            ch2 = self.channels[2]
            gate = value & PORT_B_GATE2
            if gate and not ch2.gate and ch2.mode in (1, 2, 3, 5):
                ch2.load_time = self._cycles()        # a rising gate restarts the count
            ch2.gate = gate
            self.speaker = 1 if value & PORT_B_SPEAKER else 0
            return
        self.tick(self.now())
        if port == PIT_CONTROL:
            n = value >> 6
            if n == 3:
                self._read_back(value)
                return
            ch = self.channels[n]
            access = (value >> 4) & 3
            if access == RW_LATCH:
                if not ch.count_latched:
                    ch.latched_count = ch.get_count(ch.elapsed(self._cycles()))
                    ch.count_latched = ch.rw_mode
                return
            ch.rw_mode = access
            ch.read_state = ch.write_state = access
            ch.mode = (value >> 1) & 7
            if ch.mode > 5:
                ch.mode -= 4         # 6 and 7 alias modes 2 and 3
            ch.bcd = value & 1
            if n == 0:
                self._lower(self.channels[0])
                ch.edges = -1         # no edges until a count is loaded
            return
        n = port - PIT_CHANNEL0
        ch = self.channels[n]
        if ch.write_state == RW_LSB:
            self._load(n, ch, value)
        elif ch.write_state == RW_MSB:
            self._load(n, ch, value << 8)
        elif ch.write_state == RW_WORD0:
            ch.write_latch = value
            ch.write_state = RW_WORD1
        elif ch.write_state == RW_WORD1:
            self._load(n, ch, ch.write_latch | (value << 8))
            ch.write_state = RW_WORD0

    def _read_back(self, value: int) -> None:
        now = self._cycles()
        for n, ch in enumerate(self.channels):
            if not value & (2 << n):
                continue
            d = ch.elapsed(now)
            if not value & 0x20 and not ch.count_latched:        # latch the count
                ch.latched_count = ch.get_count(d)
                ch.count_latched = ch.rw_mode
            if not value & 0x10 and not ch.status_latched:       # latch the status
                ch.status = (ch.get_out(d) << 7) | (ch.rw_mode << 4) | (ch.mode << 1) | ch.bcd
                ch.status_latched = 1

    def read(self, port: int, size: int) -> int:
        self.advance(TIME_PER_READ)
        now = self.now()
        self.tick(now)
        if port == PORT_B:
            ch2 = self.channels[2]
            self.refresh ^= PORT_B_REFRESH
            out = ch2.get_out(ch2.elapsed(cycles(now, PIT_HZ)))
            return ch2.gate | (self.speaker << 1) | self.refresh | (out << 5)
        if port == PIT_CONTROL:
            return 0xFF              # the control register is write-only
        ch = self.channels[port - PIT_CHANNEL0]
        if ch.status_latched:
            ch.status_latched = 0
            return ch.status
        if ch.count_latched:
            if ch.count_latched == RW_LSB:
                ch.count_latched = 0
                return ch.latched_count & 0xFF
            if ch.count_latched == RW_MSB:
                ch.count_latched = 0
                return (ch.latched_count >> 8) & 0xFF
            if ch.count_latched == RW_WORD0:
                ch.count_latched = RW_MSB
                return ch.latched_count & 0xFF
            ch.count_latched = 0
            return (ch.latched_count >> 8) & 0xFF
        count = ch.get_count(ch.elapsed(cycles(now, PIT_HZ)))
        if ch.read_state in (RW_LATCH, RW_LSB):
            return count & 0xFF
        if ch.read_state == RW_MSB:
            return (count >> 8) & 0xFF
        if ch.read_state == RW_WORD0:
            ch.read_state = RW_WORD1
            return count & 0xFF
        ch.read_state = RW_WORD0
        return (count >> 8) & 0xFF

    # ---- snapshots -------------------------------------------------------------------------
    def state(self) -> dict:
        return {"channels": [ch.state() for ch in self.channels], "speaker": self.speaker,
                "refresh": self.refresh}

    def load_state(self, state: dict) -> None:
        for ch, s in zip(self.channels, state["channels"]):
            ch.load_state(s)
        self.speaker = int(state["speaker"])
        self.refresh = int(state["refresh"])
