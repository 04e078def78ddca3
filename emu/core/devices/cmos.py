"""The MC146818 RTC and CMOS RAM at 0x70 (index) / 0x71 (data), as QEMU's pc machine fills it.

Index writes: bits 6:0 select one of 128 bytes; bit 7 is the NMI mask, which the chipset keeps
(no device raises NMIs, so masking them changes nothing); reading port 0x70 gives 0xFF as QEMU.

The clock shows a fixed date (DEFAULT_DATE, 2024-01-01 00:00:00, a Monday) plus virtual time
(clock.py: one second per TSC_HZ ticks), so a run reads the same date every time. Status A is
0x26 (32.768 kHz divider, 1024 Hz rate) with UIP set during the last 244 µs of each second;
status B 0x02 (24-hour, BCD; the guest may select binary or 12-hour, and bit 7 SET freezes the
clock while the guest writes it); status D 0x80 (valid RAM and time). Time registers can be
written.

Interrupts on ISA IRQ 8, in virtual time: status C collects the periodic flag (at the rate
status A's RS bits select from the 32.768 kHz divider chain; as in QEMU, only while PIE is set,
where an MC146818 sets it regardless), the update-ended flag at each second and the alarm flag when the time matches the
alarm bytes (0xC0-0xFF in an alarm byte matches anything); a flag that status B enables sets IRQF
and raises the line, and reading status C clears the flags and lowers it. The oscillator runs
only with status A's divider at 010 (the firmware's setting).

Memory-size bytes, as QEMU's pc machine sets them: 0x15/0x16 base memory (640 KiB), 0x17/0x18
and 0x30/0x31 extended memory above 1 MiB in KiB (at most 0xFFFF), 0x34/0x35 memory above 16 MiB
in 64 KiB units (at most 0xFFFF), 0x5B-0x5D memory above 4 GiB in 64 KiB units; also 0x32 the
century (BCD), 0x5F the CPU count minus 1, and QEMU 7.2's defaults for the floppy (0x10 0x50),
equipment (0x14 0x07) and boot-order bytes (0x38 0x30, 0x3D 0x12) (measured).
"""
from __future__ import annotations

import datetime
from typing import Callable, Iterable

from emu.core.devices.base import PortDevice
from emu.core.devices.clock import TSC_HZ, cycles, tsc_at

CMOS_INDEX = 0x70
CMOS_DATA = 0x71
CMOS_SIZE = 128
NMI_MASK = 0x80

RTC_SECONDS, RTC_MINUTES, RTC_HOURS = 0x00, 0x02, 0x04
RTC_DAY_OF_WEEK, RTC_DAY_OF_MONTH, RTC_MONTH, RTC_YEAR = 0x06, 0x07, 0x08, 0x09
RTC_ALARMS = (0x01, 0x03, 0x05)
RTC_REG_A, RTC_REG_B, RTC_REG_C, RTC_REG_D = 0x0A, 0x0B, 0x0C, 0x0D
RTC_CENTURY = 0x32
# The shutdown status byte: what the BIOS does after the CPU restarts at the reset vector.
# 0x05, 0x0A, 0x0B and 0x0C resume the OS through the far pointer at 40:67 (SeaBIOS's
# handle_resume, as the IBM PC BIOS did); any other value reboots the machine.
CMOS_SHUTDOWN_STATUS = 0x0F
SHUTDOWN_RESUME_CODES = frozenset({0x05, 0x0A, 0x0B, 0x0C})
SHUTDOWN_S3_RESUME = 0xFE      # QEMU's RTC writes it when the machine suspends to RAM

REG_A_UIP = 0x80
REG_A_DEFAULT = 0x26
REG_A_DV_MASK = 0x70
REG_A_DV_32KHZ = 0x20          # divider 010: the 32.768 kHz time base runs
REG_A_RS_MASK = 0x0F
REG_B_SET = 0x80
REG_B_PIE, REG_B_AIE, REG_B_UIE, REG_B_SQWE = 0x40, 0x20, 0x10, 0x08
REG_C_IRQF, REG_C_PF, REG_C_AF, REG_C_UF = 0x80, 0x40, 0x20, 0x10
REG_C_FLAGS = REG_C_PF | REG_C_AF | REG_C_UF
ALARM_DONT_CARE = 0xC0
RTC_OSC_HZ = 32_768
RTC_IRQ = 8
REG_B_DM_BINARY = 0x04
REG_B_24H = 0x02
REG_D_VRT = 0x80
UIP_WINDOW = 244_000            # TSC ticks (244 µs) before each second's update

CMOS_BASE_MEM_LO, CMOS_BASE_MEM_HI = 0x15, 0x16
CMOS_EXT_MEM_LO, CMOS_EXT_MEM_HI = 0x17, 0x18
CMOS_EXT_MEM2_LO, CMOS_EXT_MEM2_HI = 0x30, 0x31
CMOS_MEM_16M_LO, CMOS_MEM_16M_HI = 0x34, 0x35
CMOS_MEM_4G = 0x5B             # three bytes, 0x5B-0x5D
CMOS_CPUS_MINUS_1 = 0x5F

DEFAULT_DATE = datetime.datetime(2024, 1, 1, 0, 0, 0)
BASE_MEMORY_KIB = 640
_QEMU_DEFAULTS = {0x10: 0x50, 0x14: 0x07, 0x38: 0x30, 0x3D: 0x12}


def memory_bytes(below_4g: int, above_4g: int, cpus: int = 1) -> dict[int, int]:
    """The CMOS bytes that report RAM sizes (see the module docstring)."""
    ext = min(0xFFFF, max(0, below_4g - (1 << 20)) >> 10)
    m16 = min(0xFFFF, max(0, below_4g - (16 << 20)) >> 16)
    high = above_4g >> 16
    return {CMOS_BASE_MEM_LO: BASE_MEMORY_KIB & 0xFF, CMOS_BASE_MEM_HI: BASE_MEMORY_KIB >> 8,
            CMOS_EXT_MEM_LO: ext & 0xFF, CMOS_EXT_MEM_HI: ext >> 8,
            CMOS_EXT_MEM2_LO: ext & 0xFF, CMOS_EXT_MEM2_HI: ext >> 8,
            CMOS_MEM_16M_LO: m16 & 0xFF, CMOS_MEM_16M_HI: m16 >> 8,
            CMOS_MEM_4G: high & 0xFF, CMOS_MEM_4G + 1: (high >> 8) & 0xFF,
            CMOS_MEM_4G + 2: (high >> 16) & 0xFF, CMOS_CPUS_MINUS_1: cpus - 1}


def _bcd(v: int) -> int:
    return ((v // 10) << 4) | (v % 10)


def _from_bcd(v: int) -> int:
    return (v >> 4) * 10 + (v & 0xF)


class Cmos(PortDevice):
    name = "cmos"

    def __init__(self, now: Callable[[], int], below_4g: int, above_4g: int,
                 date: datetime.datetime = DEFAULT_DATE) -> None:
        self.now = now
        self.ram = bytearray(CMOS_SIZE)
        for index, value in {**_QEMU_DEFAULTS, **memory_bytes(below_4g, above_4g)}.items():
            self.ram[index] = value
        self.ram[RTC_REG_A] = REG_A_DEFAULT
        self.ram[RTC_REG_B] = REG_B_24H
        self.ram[RTC_REG_D] = REG_D_VRT
        self.index = 0
        self.nmi_masked = 0
        # The clock: seconds since the epoch at virtual time 0.
        self.base = int((date - datetime.datetime(1970, 1, 1)).total_seconds())
        self.frozen: int | None = None          # seconds shown while status B.SET is 1
        self.irq: Callable[[int], None] = lambda level: None     # IRQ 8, set by the platform
        self.routed: Callable[[], bool] = lambda: False
        self.reg_c = 0
        self.level = 0
        self.periods = self._periods(self.now())    # periodic ticks counted so far
        self.seconds = self.now() // TSC_HZ         # second boundaries counted so far

    def ports(self) -> Iterable[int]:
        return (CMOS_INDEX, CMOS_DATA)

    # ---- the clock -------------------------------------------------------------------------
    def _seconds(self) -> int:
        if self.frozen is not None:
            return self.frozen
        return self.base + self.now() // TSC_HZ

    def _time(self) -> datetime.datetime:
        return datetime.datetime(1970, 1, 1) + datetime.timedelta(seconds=self._seconds())

    def _encode(self, v: int) -> int:
        return v if self.ram[RTC_REG_B] & REG_B_DM_BINARY else _bcd(v)

    def _decode(self, v: int) -> int:
        return v if self.ram[RTC_REG_B] & REG_B_DM_BINARY else _from_bcd(v)

    def _hours(self, h: int) -> int:
        if self.ram[RTC_REG_B] & REG_B_24H:
            return self._encode(h)
        pm = 0x80 if h >= 12 else 0
        return self._encode(h % 12 or 12) | pm

    def _clock_reg(self, index: int) -> int:
        t = self._time()
        if index == RTC_SECONDS:
            return self._encode(t.second)
        if index == RTC_MINUTES:
            return self._encode(t.minute)
        if index == RTC_HOURS:
            return self._hours(t.hour)
        if index == RTC_DAY_OF_WEEK:
            return self._encode((t.weekday() + 1) % 7 + 1)       # Sunday = 1
        if index == RTC_DAY_OF_MONTH:
            return self._encode(t.day)
        if index == RTC_MONTH:
            return self._encode(t.month)
        if index == RTC_YEAR:
            return self._encode(t.year % 100)
        return self._encode(t.year // 100)                        # RTC_CENTURY

    def _set_clock_reg(self, index: int, value: int) -> None:
        t = self._time()
        fields = dict(year=t.year, month=t.month, day=t.day, hour=t.hour, minute=t.minute,
                      second=t.second)
        if index == RTC_HOURS:
            if self.ram[RTC_REG_B] & REG_B_24H:
                fields["hour"] = self._decode(value)
            else:
                fields["hour"] = self._decode(value & 0x7F) % 12 + (12 if value & 0x80 else 0)
        elif index == RTC_YEAR:
            fields["year"] = t.year // 100 * 100 + self._decode(value)
        elif index == RTC_CENTURY:
            fields["year"] = self._decode(value) * 100 + t.year % 100
        else:
            key = {RTC_SECONDS: "second", RTC_MINUTES: "minute", RTC_DAY_OF_MONTH: "day",
                   RTC_MONTH: "month"}[index]
            fields[key] = self._decode(value)
        try:
            new = datetime.datetime(**fields)
        except ValueError:
            return                   # an impossible date: keep the clock as it was
        secs = int((new - datetime.datetime(1970, 1, 1)).total_seconds())
        if self.frozen is not None:
            self.frozen = secs
        else:
            self.base = secs - self.now() // TSC_HZ

    # ---- interrupts (IRQ 8) ----------------------------------------------------------------
    def _running(self) -> bool:
        return self.ram[RTC_REG_A] & REG_A_DV_MASK == REG_A_DV_32KHZ

    def _period(self) -> int | None:
        """Oscillator cycles between periodic flags, or None when RS selects none."""
        rs = self.ram[RTC_REG_A] & REG_A_RS_MASK
        if not rs or not self._running():
            return None
        return 1 << ((rs + 7 if rs <= 2 else rs) - 1)   # RS 1 and 2 repeat RS 8 and 9

    def _periods(self, now: int) -> int:
        period = self._period()
        return cycles(now, RTC_OSC_HZ) // period if period else 0

    def deadline(self) -> int | None:
        """The next time a flag that status B enables is set, while it could raise the line."""
        if self.level or not self.routed():
            return None
        b = self.ram[RTC_REG_B]
        times = []
        period = self._period()
        if b & REG_B_PIE and period:
            times.append(tsc_at((self.periods + 1) * period, RTC_OSC_HZ))
        if b & (REG_B_UIE | REG_B_AIE) and self.frozen is None and self._running():
            times.append((self.seconds + 1) * TSC_HZ)
        return min(times) if times else None

    def tick(self, now: int) -> None:
        periods = self._periods(now)
        if periods > self.periods and self.ram[RTC_REG_B] & REG_B_PIE:
            self.reg_c |= REG_C_PF
        self.periods = periods
        seconds = now // TSC_HZ
        if seconds > self.seconds and self.frozen is None and self._running():
            self.reg_c |= REG_C_UF
            if all(self.ram[alarm] >= ALARM_DONT_CARE or self.ram[alarm] == self._clock_reg(reg)
                   for alarm, reg in zip(RTC_ALARMS, (RTC_SECONDS, RTC_MINUTES, RTC_HOURS))):
                self.reg_c |= REG_C_AF
        self.seconds = seconds
        self._update_irq()

    def _update_irq(self) -> None:
        if self.reg_c & self.ram[RTC_REG_B] & REG_C_FLAGS:
            self.reg_c |= REG_C_IRQF
        else:
            self.reg_c &= ~REG_C_IRQF
        level = int(bool(self.reg_c & REG_C_IRQF))
        if level != self.level:
            self.level = level
            self.irq(level)

    # ---- sleep (ACPI S3, emu/core/acpi_sleep.py) ----------------------------------------------
    def suspend(self) -> None:
        """The machine suspends to RAM: the shutdown status tells the firmware to resume."""
        self.ram[CMOS_SHUTDOWN_STATUS] = SHUTDOWN_S3_RESUME

    def alarm_wake_time(self) -> int | None:
        """The next second update at which the alarm matches, with AIE set: the time the RTC
        wakes a sleeping machine (QEMU's RTC requests a wake-up for the alarm only). None when
        it never will (AIE clear, the clock stopped or frozen, an alarm no time matches)."""
        b = self.ram[RTC_REG_B]
        if not b & REG_B_AIE or self.frozen is not None or not self._running():
            return None
        alarms = [self.ram[a] for a in RTC_ALARMS]
        first = self.now() // TSC_HZ + 1
        for k in range(first, first + 24 * 3600):
            t = datetime.datetime(1970, 1, 1) + datetime.timedelta(seconds=self.base + k)
            shown = (self._encode(t.second), self._encode(t.minute), self._hours(t.hour))
            if all(a >= ALARM_DONT_CARE or a == v for a, v in zip(alarms, shown)):
                return k * TSC_HZ
        return None

    def platform_reset(self) -> None:
        """The reset that ends a sleep, as QEMU's RTC takes it: PIE, AIE and SQWE cleared, the
        flags of status C cleared and IRQ 8 lowered; the clock and CMOS RAM run on."""
        self.tick(self.now())
        self.ram[RTC_REG_B] &= ~(REG_B_PIE | REG_B_AIE | REG_B_SQWE)
        self.reg_c = 0
        self._update_irq()

    # ---- ports -----------------------------------------------------------------------------
    def read(self, port: int, size: int) -> int:
        if port == CMOS_INDEX:
            return 0xFF
        i = self.index
        if i in (RTC_SECONDS, RTC_MINUTES, RTC_HOURS, RTC_DAY_OF_WEEK, RTC_DAY_OF_MONTH,
                 RTC_MONTH, RTC_YEAR, RTC_CENTURY):
            return self._clock_reg(i)
        if i == RTC_REG_A:
            uip = REG_A_UIP if (self.frozen is None and
                                self.now() % TSC_HZ >= TSC_HZ - UIP_WINDOW) else 0
            return (self.ram[i] & 0x7F) | uip
        if i == RTC_REG_C:
            self.tick(self.now())
            value, self.reg_c = self.reg_c, 0
            self._update_irq()
            return value
        return self.ram[i]

    def write(self, port: int, size: int, value: int) -> None:
        value &= 0xFF
        if port == CMOS_INDEX:
            self.index = value & 0x7F
            self.nmi_masked = value & NMI_MASK
            return
        i = self.index
        if i in (RTC_SECONDS, RTC_MINUTES, RTC_HOURS, RTC_DAY_OF_MONTH, RTC_MONTH, RTC_YEAR,
                 RTC_CENTURY):
            self._set_clock_reg(i, value)
        elif i == RTC_REG_A:
            self.tick(self.now())
            self.ram[i] = value & 0x7F
            self.periods = self._periods(self.now())     # the new rate counts from here
        elif i == RTC_REG_B:
            if value & REG_B_SET and self.frozen is None:
                self.frozen = self._seconds()
            elif not value & REG_B_SET and self.frozen is not None:
                self.base = self.frozen - self.now() // TSC_HZ
                self.frozen = None
            self.tick(self.now())
            self.ram[i] = value
            self._update_irq()
        elif i in (RTC_REG_C, RTC_REG_D, RTC_DAY_OF_WEEK):
            pass                     # read-only (the day of the week follows the date)
        else:
            self.ram[i] = value

    # ---- snapshots -------------------------------------------------------------------------
    def state(self) -> dict:
        return {"ram": self.ram.hex(), "index": self.index, "nmi_masked": self.nmi_masked,
                "base": self.base, "frozen": self.frozen, "reg_c": self.reg_c,
                "level": self.level, "periods": self.periods, "seconds": self.seconds}

    def load_state(self, state: dict) -> None:
        self.ram = bytearray.fromhex(state["ram"])
        self.index = int(state["index"])
        self.nmi_masked = int(state["nmi_masked"])
        self.base = int(state["base"])
        self.frozen = None if state["frozen"] is None else int(state["frozen"])
        # Snapshots from before RTC interrupts hold none of these: no flag, counted up to now.
        self.reg_c = int(state.get("reg_c", 0))
        self.level = int(state.get("level", 0))
        self.periods = int(state.get("periods", self._periods(self.now())))
        self.seconds = int(state.get("seconds", self.now() // TSC_HZ))
