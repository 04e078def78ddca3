"""QEMU's pc-testdev, which kvm-unit-tests' runner adds (`-device pc-testdev`): port 0xE0-0xE3
holds the last value written at any width and reads it back; a write to 0xE4 (QEMU's TLB
"flush page") is accepted and needs nothing here; ports 0x2000-0x2017 drive interrupt lines
0-23 (ISA IRQs through the 8259 and the I/O APIC; 16-23 on the I/O APIC alone) to the level
written, which is how kvm-unit-tests raises device interrupts (QEMU 7.2 aborts on lines
16-23; here they reach their I/O APIC pins). svmemu always has it."""
from __future__ import annotations

from typing import Callable, Iterable

from emu.core.devices.base import PortDevice

TESTDEV_IOPORT = 0xE0
TESTDEV_FLUSHPAGE = 0xE4
TESTDEV_IRQ_BASE = 0x2000
TESTDEV_IRQ_LINES = 24


class PcTestdev(PortDevice):
    name = "pc-testdev"

    def __init__(self, set_line: Callable[[int, int], None]) -> None:
        self.set_line = set_line
        self.data = 0

    def ports(self) -> Iterable[int]:
        return (*range(TESTDEV_IOPORT, TESTDEV_IOPORT + 4),
                *range(TESTDEV_FLUSHPAGE, TESTDEV_FLUSHPAGE + 4),
                *range(TESTDEV_IRQ_BASE, TESTDEV_IRQ_BASE + TESTDEV_IRQ_LINES))

    def read(self, port: int, size: int) -> int:
        if TESTDEV_IOPORT <= port < TESTDEV_IOPORT + 4:
            return self.data & ((1 << (8 * size)) - 1)
        return (1 << (8 * size)) - 1

    def write(self, port: int, size: int, value: int) -> None:
        if TESTDEV_IOPORT <= port < TESTDEV_IOPORT + 4:
            self.data = value & ((1 << (8 * size)) - 1)
        elif port >= TESTDEV_IRQ_BASE:
            self.set_line(port - TESTDEV_IRQ_BASE, value & 1)

    def state(self) -> dict:
        return {"data": self.data}

    def load_state(self, state: dict) -> None:
        self.data = int(state["data"])
