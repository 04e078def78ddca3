"""QEMU's isa-debug-exit: a write of V ends the run with process status (V << 1) | 1.

Same port and status rule as `-device isa-debug-exit,iobase=0xf4,iosize=4`, so a guest's exit
status means the same thing on svmemu and on QEMU.
"""
from __future__ import annotations

from typing import Callable, Iterable

from emu.core.devices.base import PortDevice

DEBUG_EXIT_PORT = 0xF4


class DebugExit(PortDevice):
    name = "debug-exit"

    def __init__(self, on_exit: Callable[[int], None], base: int = DEBUG_EXIT_PORT,
                 size: int = 4) -> None:
        self.base = base
        self.size = size
        self.on_exit = on_exit

    def ports(self) -> Iterable[int]:
        return range(self.base, self.base + self.size)

    def write(self, port: int, size: int, value: int) -> None:
        self.on_exit(((value & 0xFFFFFFFF) << 1) | 1)
