"""QEMU's firmware configuration device (fw_cfg), legacy port interface at 0x510/0x511.

C test kernels written for QEMU probe it to learn the CPU count and RAM size, so it must behave
as QEMU's does: a 16-bit write to the selector port picks an item and rewinds its read offset;
each byte read from the data port returns the next byte of the item, then 0 past its end (and 0
for items that do not exist). Data-port writes are ignored, as on QEMU since 2.4. A read of the
selector port also returns the next data byte: QEMU decodes both ports as one region whose reads
all go to the data stream.

Only the traditional interface exists here: FW_CFG_ID reports bit 0 (no DMA interface at 0x514;
QEMU's pc machine also sets bit 1).
"""
from __future__ import annotations

import struct
from typing import Iterable

from emu.core.devices.base import PortDevice

FW_CFG_PORT_SEL = 0x510
FW_CFG_PORT_DATA = 0x511

# Item selectors (QEMU's docs/specs/fw_cfg.txt names).
FW_CFG_SIGNATURE = 0x00
FW_CFG_ID = 0x01
FW_CFG_UUID = 0x02
FW_CFG_RAM_SIZE = 0x03
FW_CFG_NOGRAPHIC = 0x04
FW_CFG_NB_CPUS = 0x05
FW_CFG_MACHINE_ID = 0x06
FW_CFG_MAX_CPUS = 0x0F
FW_CFG_FILE_DIR = 0x19
FW_CFG_INVALID = 0xFFFF

FW_CFG_SIGNATURE_BYTES = b"QEMU"
FW_CFG_VERSION = 0x01          # ID bit 0: traditional (port) interface
FW_CFG_VERSION_DMA = 0x02      # ID bit 1: DMA interface (not provided)


class FwCfg(PortDevice):
    name = "fw_cfg"

    def __init__(self, ram_size: int, cpus: int = 1) -> None:
        self.items: dict[int, bytes] = {
            FW_CFG_SIGNATURE: FW_CFG_SIGNATURE_BYTES,
            FW_CFG_ID: struct.pack("<I", FW_CFG_VERSION),
            FW_CFG_UUID: bytes(16),
            FW_CFG_RAM_SIZE: struct.pack("<Q", ram_size),
            FW_CFG_NOGRAPHIC: struct.pack("<H", 0),
            FW_CFG_NB_CPUS: struct.pack("<H", cpus),
            FW_CFG_MACHINE_ID: struct.pack("<I", 0),
            FW_CFG_MAX_CPUS: struct.pack("<H", cpus),
            FW_CFG_FILE_DIR: struct.pack(">I", 0),      # no files; the count is big-endian
        }
        self.reset()

    def reset(self) -> None:
        self.selector = FW_CFG_SIGNATURE
        self.offset = 0

    def ports(self) -> Iterable[int]:
        return (FW_CFG_PORT_SEL, FW_CFG_PORT_DATA)

    def _next_byte(self) -> int:
        data = self.items.get(self.selector, b"")
        if self.offset >= len(data):
            return 0
        byte = data[self.offset]
        self.offset += 1
        return byte

    def read(self, port: int, size: int) -> int:
        # Wider reads are split into byte accesses by QEMU's memory core, lowest byte first.
        value = 0
        for i in range(size):
            value |= self._next_byte() << (8 * i)
        return value

    def write(self, port: int, size: int, value: int) -> None:
        if port == FW_CFG_PORT_SEL:
            self.selector = value & 0xFFFF
            self.offset = 0

    def state(self) -> dict:
        return dict(selector=self.selector, offset=self.offset)

    def load_state(self, state: dict) -> None:
        self.selector = int(state["selector"])
        self.offset = int(state["offset"])
