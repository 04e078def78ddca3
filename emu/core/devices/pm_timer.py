"""The ACPI power-management block of the PIIX4 (PMBASE 0x600 as SeaBIOS sets it): PM1a status
(+0), enable (+2), control (+4) and the PM timer (+8).

The PM timer is a 24-bit counter at PM_TIMER_HZ (3.579545 MHz) derived from virtual time (see
clock.py); a read returns it zero-extended to 32 bits and advances virtual time by TIME_PER_READ
(1 µs), so a guest polling it makes progress. PM1 status bit 0 (TMR_STS) is set whenever bit 23
of the counter has changed since the guest last cleared it (writing 1 clears a status bit); no
SCI is raised. Writing PM1 control with SLP_EN enters the sleep state its SLP_TYP names, as
QEMU's PIIX4 (the DSDT's \\_S3, \\_S4 and \\_S5 packages give these numbers, firmware/acpi.py):
type 0 (S5) powers the machine off, which ends the run (`on_poweroff`); type 2 (S4, suspend to
disk) powers off too, as QEMU does; type 1 (S3, suspend to RAM) asks the machine to sleep
(`on_suspend`, emu/core/acpi_sleep.py), which stops at that instruction and wakes on an enabled
wake event: RTC_EN with the RTC alarm, TMR_EN with the PM timer's bit 23 toggling (QEMU's two
wake reasons a guest can arm). Waking sets WAK_STS and the cause's status bit; the platform reset
that follows clears enable and control (`woken`). Other sleep types stop the run as unsupported.
"""
from __future__ import annotations

from typing import Callable, Iterable

from emu.core.devices.base import PortDevice
from emu.core.devices.clock import PM_TIMER_HZ, cycles, tsc_at
from emu.errors import Unsupported

PM1_STS = 0
PM1_EN = 2
PM1_CNT = 4
PM_TMR = 8
PM_BLOCK_SIZE = 0x40
PM_TIMER_MASK = 0xFFFFFF
TMR_STS = 0x0001
RTC_STS = 0x0400
WAK_STS = 0x8000
TMR_EN = 0x0001
RTC_EN = 0x0400
PM1_CNT_SCI_EN = 0x0001
PM1_CNT_SLP_EN = 1 << 13
PM1_CNT_SLP_TYP_SHIFT = 10
TIME_PER_READ = 1000
SLP_TYP_S5 = 0                # soft off
SLP_TYP_S3 = 1                # suspend to RAM
SLP_TYP_S4 = 2                # suspend to disk: QEMU's PIIX4 s4_val
PM_TIMER_STATUS_BIT = 23      # TMR_STS follows this counter bit


class PmBlock(PortDevice):
    name = "acpi-pm"

    def __init__(self, now: Callable[[], int], advance: Callable[[int], None],
                 on_poweroff: Callable[[str], None], base: int = 0x600,
                 on_suspend: Callable[[int], None] | None = None) -> None:
        self.now = now
        self.advance = advance
        self.on_poweroff = on_poweroff
        self.on_suspend = on_suspend
        self.moved: Callable[[int | None], None] = lambda base: None   # re-decode the ports
        self.base: int | None = base
        self.enable = 0
        self.control = 0
        self.sts = 0                  # status bits other than TMR_STS
        self.tmr_epoch = 0            # counter bit-23 epoch at the last TMR_STS clear

    def ports(self) -> Iterable[int]:
        return range(self.base, self.base + PM_BLOCK_SIZE) if self.base is not None else ()

    def _epoch(self) -> int:
        return cycles(self.now(), PM_TIMER_HZ) >> PM_TIMER_STATUS_BIT

    def status(self) -> int:
        return self.sts | (TMR_STS if self._epoch() != self.tmr_epoch else 0)

    def read(self, port: int, size: int) -> int:
        off = port - self.base
        if PM_TMR <= off < PM_TMR + 4:
            self.advance(TIME_PER_READ)
            value = cycles(self.now(), PM_TIMER_HZ) & PM_TIMER_MASK
            return (value >> (8 * (off - PM_TMR))) & ((1 << (8 * size)) - 1)
        regs = self.status() | (self.enable << 16) | (self.control << 32)
        if off >= 8:
            return (1 << (8 * size)) - 1
        return (regs >> (8 * off)) & ((1 << (8 * size)) - 1)

    def write(self, port: int, size: int, value: int) -> None:
        off = port - self.base
        value &= (1 << (8 * size)) - 1
        for i in range(size):
            byte = (value >> (8 * i)) & 0xFF
            reg, shift = divmod(off + i, 2)
            if reg == PM1_STS // 2:
                bits = byte << (8 * shift)
                if bits & TMR_STS:
                    self.tmr_epoch = self._epoch()
                self.sts &= ~bits
            elif reg == PM1_EN // 2:
                self.enable = (self.enable & ~(0xFF << (8 * shift))) | (byte << (8 * shift))
            elif reg == PM1_CNT // 2:
                self.control = (self.control & ~(0xFF << (8 * shift))) | (byte << (8 * shift))
        if off <= PM1_CNT + 1 < off + size and self.control & PM1_CNT_SLP_EN:
            typ = (self.control >> PM1_CNT_SLP_TYP_SHIFT) & 7
            self.control &= ~PM1_CNT_SLP_EN
            if typ == SLP_TYP_S3 and self.on_suspend is not None:
                self.on_suspend(port)
            elif typ == SLP_TYP_S4:
                self.on_poweroff("ACPI S4 (PM1 control SLP_EN, sleep type 2): QEMU powers off")
            elif typ == SLP_TYP_S5:
                self.on_poweroff("ACPI power-off (PM1 control SLP_EN, sleep type 0)")
            else:
                raise Unsupported(f"ACPI sleep type {typ} (the DSDT names 0 = S5, 1 = S3 and "
                                  "2 = S4)")

    def timer_wake_time(self) -> int | None:
        """When the PM timer would wake a sleeping machine: with TMR_EN set, at the next toggle
        of its status bit, while TMR_STS is clear (QEMU arms it only then)."""
        if not self.enable & TMR_EN or self._epoch() != self.tmr_epoch:
            return None
        return tsc_at((self.tmr_epoch + 1) << PM_TIMER_STATUS_BIT, PM_TIMER_HZ)

    def woken(self, by_rtc: bool) -> None:
        """The machine woke from S3: WAK_STS and, for the RTC alarm, RTC_STS (TMR_STS follows
        the timer by itself); the reset clears enable and control, as QEMU's PIIX4 reset."""
        self.enable = 0
        self.control = 0
        self.sts |= WAK_STS | (RTC_STS if by_rtc else 0)

    def state(self) -> dict:
        return {"base": self.base, "enable": self.enable, "control": self.control,
                "sts": self.sts, "tmr_epoch": self.tmr_epoch}

    def load_state(self, state: dict) -> None:
        base = None if state["base"] is None else int(state["base"])
        if base != self.base:
            self.moved(base)
        self.enable = int(state["enable"])
        self.control = int(state["control"])
        self.sts = int(state["sts"])
        self.tmr_epoch = int(state["tmr_epoch"])
