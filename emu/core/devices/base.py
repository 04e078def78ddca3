"""What a port-I/O device looks like to the machine."""
from __future__ import annotations

from typing import Iterable


class PortDevice:
    """A device on the I/O port bus.

    `ports` lists the ports it decodes. Accesses arrive from Unicorn's IN/OUT hooks, with RIP
    at the instruction. (Unicorn 2.1.4 never consults the I/O permission map: its translator's
    I/O check returns early, so port intercepts cannot be used to stop before an access.)
    """
    name = "device"

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
