"""The ACPI power-management block of the PIIX4 (PMBASE 0x600 as SeaBIOS sets it): PM1a status
(+0), enable (+2), control (+4) and the PM timer (+8).

The PM timer is a 24-bit counter at PM_TIMER_HZ (3.579545 MHz) derived from virtual time (see
clock.py); a read returns it zero-extended to 32 bits and advances virtual time by TIME_PER_READ
(1 µs), so a guest polling it makes progress. PM1 status bit 0 (TMR_STS) is set whenever bit 23
of the counter has changed since the guest last cleared it (writing 1 clears a status bit); no
SCI is raised. Writing PM1 control with SLP_EN and sleep type 0 powers the machine off (QEMU's
S5), which ends the run (`on_poweroff`); other sleep types stop the run as unsupported.
"""
from __future__ import annotations

from typing import Callable, Iterable

from emu.core.devices.base import PortDevice
from emu.core.devices.clock import PM_TIMER_HZ, cycles
from emu.errors import Unsupported

PM1_STS = 0
PM1_EN = 2
PM1_CNT = 4
PM_TMR = 8
PM_BLOCK_SIZE = 0x40
PM_TIMER_MASK = 0xFFFFFF
TMR_STS = 0x0001
PM1_CNT_SCI_EN = 0x0001
PM1_CNT_SLP_EN = 1 << 13
PM1_CNT_SLP_TYP_SHIFT = 10
TIME_PER_READ = 1000


class PmBlock(PortDevice):
    name = "acpi-pm"

    def __init__(self, now: Callable[[], int], advance: Callable[[int], None],
                 on_poweroff: Callable[[str], None], base: int = 0x600) -> None:
        self.now = now
        self.advance = advance
        self.on_poweroff = on_poweroff
        self.moved: Callable[[int | None], None] = lambda base: None   # re-decode the ports
        self.base: int | None = base
        self.enable = 0
        self.control = 0
        self.sts = 0                  # status bits other than TMR_STS
        self.tmr_epoch = 0            # counter bit-23 epoch at the last TMR_STS clear

    def ports(self) -> Iterable[int]:
        return range(self.base, self.base + PM_BLOCK_SIZE) if self.base is not None else ()

    def _epoch(self) -> int:
        return cycles(self.now(), PM_TIMER_HZ) >> 23

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
            if typ != 0:
                raise Unsupported(f"unsupported: ACPI sleep type {typ} (only S5 power-off, "
                                  "type 0, is modelled)")
            self.on_poweroff("ACPI power-off (PM1 control SLP_EN, sleep type 0)")

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
