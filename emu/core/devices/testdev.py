"""QEMU's pc-testdev, which kvm-unit-tests' runner adds (`-device pc-testdev`): ports 0xE0-0xE3
are a 32-bit register read and written at any width, an access at 0xE0 + n reaching its bytes
from n up; 0xE8-0xEB are the same register through byte-wide handlers (QEMU splits wider
accesses into bytes, which comes to the same); a write to 0xE4 (QEMU's TLB
"flush page") is accepted and needs nothing here; ports 0x2000-0x2017 drive interrupt lines
0-23 (ISA IRQs through the 8259 and the I/O APIC; 16-23 on the I/O APIC alone) to the level
written, which is how kvm-unit-tests raises device interrupts (QEMU 7.2 aborts on lines
16-23; here they reach their I/O APIC pins). svmemu always has it.

Its memory window, QEMU's "pc-testdev-iomem" (64 KiB at physical 0xFF000000, inside the PCI
hole and outside every e820 range), is an MMIO region in QEMU whose handlers keep the bytes
written and read them back at any width: to the guest it is RAM. kvm-unit-tests' emulator test
maps it twice (x86/ioram.h) to make KVM emulate instructions on MMIO. Here it is host memory
mapped into every CPU's engine, so Unicorn runs loads, stores, string and locked operations on
it directly; its bytes are this device's snapshot state.
"""
from __future__ import annotations

import ctypes
import mmap
from typing import Callable, Iterable

from unicorn import UC_PROT_ALL, Uc

from emu.core.devices.base import PortDevice
from emu.errors import SnapshotError

TESTDEV_IOPORT = 0xE0
TESTDEV_FLUSHPAGE = 0xE4
TESTDEV_IOPORT_BYTE = 0xE8
TESTDEV_IRQ_BASE = 0x2000
TESTDEV_IRQ_LINES = 24
TESTDEV_IOMEM_BASE = 0xFF000000
TESTDEV_IOMEM_LEN = 0x10000

_IOMEM_ZERO = bytes(TESTDEV_IOMEM_LEN)


class PcTestdevIomem:
    """The window's bytes: one host buffer, the same for every CPU."""

    def __init__(self) -> None:
        self.buf = mmap.mmap(-1, TESTDEV_IOMEM_LEN)
        self.addr = ctypes.addressof(ctypes.c_char.from_buffer(self.buf))

    def map_into(self, uc: Uc) -> None:
        uc.mem_map_ptr(TESTDEV_IOMEM_BASE, TESTDEV_IOMEM_LEN, UC_PROT_ALL, self.addr)

    def state(self) -> bytes:
        """Empty while all zero (a fresh machine's), so snapshots of guests that never touch
        the window stay small."""
        data = self.buf[:]
        return b"" if data == _IOMEM_ZERO else data

    def load_state(self, data: bytes) -> None:
        if data and len(data) != TESTDEV_IOMEM_LEN:
            raise SnapshotError(f"pc-testdev's iomem state has {len(data)} bytes, not "
                                f"{TESTDEV_IOMEM_LEN}")
        self.buf[:] = data or _IOMEM_ZERO


class PcTestdev(PortDevice):
    name = "pc-testdev"

    def __init__(self, set_line: Callable[[int, int], None]) -> None:
        self.set_line = set_line
        self.data = 0
        self.iomem = PcTestdevIomem()

    def ports(self) -> Iterable[int]:
        return (*range(TESTDEV_IOPORT, TESTDEV_IOPORT + 4),
                *range(TESTDEV_FLUSHPAGE, TESTDEV_FLUSHPAGE + 4),
                *range(TESTDEV_IOPORT_BYTE, TESTDEV_IOPORT_BYTE + 4),
                *range(TESTDEV_IRQ_BASE, TESTDEV_IRQ_BASE + TESTDEV_IRQ_LINES))

    @staticmethod
    def _register(port: int) -> bool:
        return (TESTDEV_IOPORT <= port < TESTDEV_IOPORT + 4
                or TESTDEV_IOPORT_BYTE <= port < TESTDEV_IOPORT_BYTE + 4)

    def read(self, port: int, size: int) -> int:
        if self._register(port):
            return (self.data >> (8 * (port & 3))) & ((1 << (8 * size)) - 1)
        return (1 << (8 * size)) - 1

    def write(self, port: int, size: int, value: int) -> None:
        if self._register(port):
            shift = 8 * (port & 3)
            mask = (((1 << (8 * size)) - 1) << shift) & 0xFFFFFFFF
            self.data = (self.data & ~mask) | ((value << shift) & mask)
        elif port >= TESTDEV_IRQ_BASE:
            self.set_line(port - TESTDEV_IRQ_BASE, value & 1)

    def state(self) -> dict:
        return {"data": self.data, "iomem": self.iomem.state()}

    def load_state(self, state: dict) -> None:
        self.data = int(state["data"])
        self.iomem.load_state(bytes(state.get("iomem", b"")))
