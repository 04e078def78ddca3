"""The APM control and status ports (0xB2, 0xB3) of QEMU's PIIX4, through which an OS switches
the machine into ACPI mode.

The FADT (emu/core/firmware/acpi.py) names 0xB2 as SMI_CMD with ACPI_ENABLE 0xF1 and
ACPI_DISABLE 0xF0: an OS that finds PM1a_CNT.SCI_EN clear writes ACPI_ENABLE there and waits
for SCI_EN to read 1.  QEMU's PIIX4 sets SCI_EN on 0xF1 and clears it on 0xF0 (the write also
raises an SMI there when the firmware enabled APMC; svmemu has no SMM, so nothing else
happens).  Both ports read back what was last written, as QEMU's APM device does.
"""
from __future__ import annotations

from typing import Iterable

from emu.core.devices.base import PortDevice
from emu.core.devices.pm_timer import PM1_CNT_SCI_EN, PmBlock
from emu.core.firmware.acpi import ACPI_DISABLE_VALUE, ACPI_ENABLE_VALUE, SMI_CMD_PORT

APM_CNT_PORT = SMI_CMD_PORT
APM_STS_PORT = SMI_CMD_PORT + 1


class ApmControl(PortDevice):
    name = "apm"

    def __init__(self, pm: PmBlock) -> None:
        self.pm = pm
        self.cnt = 0
        self.sts = 0

    def ports(self) -> Iterable[int]:
        return (APM_CNT_PORT, APM_STS_PORT)

    def read(self, port: int, size: int) -> int:
        value = self.cnt if port == APM_CNT_PORT else self.sts
        return value | (((1 << (8 * size)) - 1) & ~0xFF)

    def write(self, port: int, size: int, value: int) -> None:
        value &= 0xFF
        if port == APM_STS_PORT:
            self.sts = value
            return
        self.cnt = value
        if value == ACPI_ENABLE_VALUE:
            self.pm.control |= PM1_CNT_SCI_EN
        elif value == ACPI_DISABLE_VALUE:
            self.pm.control &= ~PM1_CNT_SCI_EN

    def state(self) -> dict:
        return {"cnt": self.cnt, "sts": self.sts}

    def load_state(self, state: dict) -> None:
        self.cnt = int(state["cnt"])
        self.sts = int(state["sts"])
