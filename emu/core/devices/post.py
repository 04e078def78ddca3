"""Port 0x80, the POST diagnostic port: firmware and kernels write progress codes (Linux also
uses it as an I/O delay); nothing listens. Reads give 0xFF as on QEMU. It is a device only so
`--trace io` names it."""
from __future__ import annotations

from typing import Iterable

from emu.core.devices.base import PortDevice

POST_PORT = 0x80


class PostPort(PortDevice):
    name = "post"

    def ports(self) -> Iterable[int]:
        return (POST_PORT,)
