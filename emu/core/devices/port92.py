"""System control port A (0x92): bit 1 is the "fast A20" gate, a 0 -> 1 write of bit 0 resets
the machine, as QEMU's port92 device. Reads return the last value written, with bit 1 showing
A20 (enabled at entry, 0x02)."""
from __future__ import annotations

from typing import Callable, Iterable

from emu.core.devices.base import PortDevice

PORT_A = 0x92
PORT_A_RESET = 0x01
PORT_A_A20 = 0x02


class SystemPortA(PortDevice):
    name = "port92"

    def __init__(self, on_reset: Callable[[str], None], on_a20: Callable[[bool], None]) -> None:
        self.on_reset = on_reset
        self.on_a20 = on_a20
        self.value = PORT_A_A20

    def ports(self) -> Iterable[int]:
        return (PORT_A,)

    def read(self, port: int, size: int) -> int:
        return self.value

    def write(self, port: int, size: int, value: int) -> None:
        old, self.value = self.value, value & 0xFF
        self.on_a20(bool(value & PORT_A_A20))
        if value & PORT_A_RESET and not old & PORT_A_RESET:
            self.on_reset("reset through port 0x92")

    def state(self) -> dict:
        return {"value": self.value}

    def load_state(self, state: dict) -> None:
        self.value = int(state["value"])
