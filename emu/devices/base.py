"""What a port-I/O device looks like to the machine."""
from __future__ import annotations

from typing import Iterable


class PortDevice:
    """A device on the I/O port bus.

    `ports` lists the ports it decodes. `precise_stop` asks the machine to route its ports
    through the I/O permission map rather than Unicorn's IN/OUT hooks: slower, but the machine can
    then stop with RIP exactly after the instruction (isa-debug-exit needs that; a UART does not).
    """
    name = "device"
    precise_stop = False

    def ports(self) -> Iterable[int]:
        return ()

    def read(self, port: int, size: int) -> int:
        return (1 << (8 * size)) - 1

    def write(self, port: int, size: int, value: int) -> None:
        pass

    def reset(self) -> None:
        pass

    def state(self) -> dict:
        """Snapshot section: plain data only."""
        return {}

    def load_state(self, state: dict) -> None:
        pass
