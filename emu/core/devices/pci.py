"""PCI configuration mechanism 1 (CONFIG_ADDRESS at 0xCF8, CONFIG_DATA at 0xCFC-0xCFF) and the
functions of QEMU's pc machine that a kernel finds on bus 0 without any option devices:

  00:00.0 Intel 440FX host bridge (8086:1237, class 06.00, revision 2)
  00:01.0 PIIX3 PCI-to-ISA bridge (8086:7000, class 06.01, multi-function; PIRQ routing
          0x60-0x63 = 10, 10, 11, 11 as SeaBIOS programs it)
  00:01.1 PIIX3 IDE controller (8086:7010, class 01.01, prog-if 0x80; no drives and no BARs
          decoded here)
  00:01.3 PIIX4 power management (8086:7113, class 06.80, revision 3; PMBASE 0x600 enabled at
          0x80, SCI on IRQ 9), which holds the ACPI PM timer

Values are what SeaBIOS leaves under QEMU 7.2 (measured: command registers, the i440FX PAM
registers, subsystem IDs 1AF4:1100). CONFIG_ADDRESS decodes only 32-bit accesses (others go to
the ports' usual meaning: none here); CONFIG_DATA is read or written at any width when bit 31 of
CONFIG_ADDRESS is set. A function that does not exist reads all-ones and ignores writes. Only
the registers listed as writable per function accept writes; the rest are read-only. Writing
PMBASE moves the PM timer block (`on_pmbase`).

With the CPU's NB_CFG.EnableCf8ExtCfg set (`ext_cfg`, the AMD northbridge's extension of
mechanism 1), CONFIG_ADDRESS bits 27:24 are register bits 11:8: these functions are
conventional PCI ones without extended configuration space, so such an access reads all-ones
and writes nothing.

Port 0xCF9 is the PIIX3 reset control register: writing bit 2 (with bit 1, hard reset, or
without) resets the machine (`on_reset`).
"""
from __future__ import annotations

import struct
from typing import Callable, Iterable

from emu.core.devices.base import PortDevice

PCI_CONFIG_ADDRESS = 0xCF8
CONFIG_EXT_REGISTER = 0x0F00_0000     # CONFIG_ADDRESS 27:24 with NB_CFG.EnableCf8ExtCfg
PCI_CONFIG_DATA = 0xCFC
PIIX_RESET_CONTROL = 0xCF9
RCR_RESET_CPU = 0x04
CONFIG_ENABLE = 1 << 31

PCI_VENDOR_INTEL = 0x8086
PCI_SUBSYSTEM_QEMU = 0x1100_1AF4          # subsystem 0x1100, subsystem vendor 0x1AF4
PCI_COMMAND = 0x04
PCI_HEADER_TYPE = 0x0E
PCI_SUBSYSTEM = 0x2C
PCI_INTERRUPT_LINE = 0x3C
PIIX4_PMBASE = 0x40
PIIX4_PMREGMISC = 0x80
PM_BASE_DEFAULT = 0x600


def _config(vendor: int, device: int, command: int, status: int, class_rev: int,
            header: int, fields: dict[int, bytes]) -> bytearray:
    space = bytearray(256)
    struct.pack_into("<HHHH", space, 0, vendor, device, command, status)
    struct.pack_into("<I", space, 0x08, class_rev)
    space[PCI_HEADER_TYPE] = header
    struct.pack_into("<I", space, PCI_SUBSYSTEM, PCI_SUBSYSTEM_QEMU)
    for off, data in fields.items():
        space[off:off + len(data)] = data
    return space


class Function:
    def __init__(self, space: bytearray, writable: Iterable[range]) -> None:
        self.space = space
        self.writable = frozenset(i for r in writable for i in r)


def pc_functions() -> dict[tuple[int, int], Function]:
    """(device, function) on bus 0 -> its configuration space."""
    command = [range(0x04, 0x06), range(0x0D, 0x0E), range(0x3C, 0x3D)]
    return {
        (0, 0): Function(_config(PCI_VENDOR_INTEL, 0x1237, 0x0103, 0x0000, 0x0600_0002, 0x00, {
            0x59: bytes([0x10, 0x11, 0x11, 0x11, 0x11, 0x11, 0x33]),       # PAM0-6
            0x72: bytes([0x02]),                                            # SMRAM
        }), command + [range(0x50, 0x60), range(0x72, 0x73)]),
        (1, 0): Function(_config(PCI_VENDOR_INTEL, 0x7000, 0x0103, 0x0200, 0x0601_0000, 0x80, {
            0x60: bytes([10, 10, 11, 11]),                                  # PIRQA-D routing
        }), command + [range(0x4C, 0x4D), range(0x60, 0x64), range(0x69, 0x6A),
                       range(0x70, 0x72), range(0x76, 0x78), range(0x80, 0x81),
                       range(0x82, 0x83), range(0xA0, 0xB0)]),
        (1, 1): Function(_config(PCI_VENDOR_INTEL, 0x7010, 0x0103, 0x0280, 0x0101_8000, 0x00,
                                 {0x40: bytes([0x00, 0x80, 0x00, 0x80])}),  # IDE timing: decode
                         command + [range(0x40, 0x48)]),
        (1, 3): Function(_config(PCI_VENDOR_INTEL, 0x7113, 0x0103, 0x0280, 0x0680_0003, 0x00, {
            PCI_INTERRUPT_LINE: bytes([9, 1]),                              # IRQ 9, INTA#
            PIIX4_PMBASE: struct.pack("<I", PM_BASE_DEFAULT | 1),
            PIIX4_PMREGMISC: bytes([1]),                                    # PM I/O enabled
        }), command + [range(0x40, 0x44), range(0x80, 0x81), range(0x90, 0x94),
                       range(0xD2, 0xD3)]),
    }


class PciHost(PortDevice):
    name = "pci"

    def __init__(self, on_reset: Callable[[str], None],
                 on_pmbase: Callable[[int | None], None] = lambda base: None) -> None:
        self.on_reset = on_reset
        self.on_pmbase = on_pmbase
        self.functions = pc_functions()
        self.address = 0
        self.rcr = 0
        self.ext_cfg: Callable[[], bool] = lambda: False

    def ports(self) -> Iterable[int]:
        return (*range(PCI_CONFIG_ADDRESS, PCI_CONFIG_ADDRESS + 4),
                *range(PCI_CONFIG_DATA, PCI_CONFIG_DATA + 4))

    def _target(self, port: int) -> tuple[Function | None, int]:
        a = self.address
        if not a & CONFIG_ENABLE:
            return None, 0
        if a & CONFIG_EXT_REGISTER:
            return None, 0                   # register 0x100 and up: no extended space here
        bus, dev, fn = (a >> 16) & 0xFF, (a >> 11) & 0x1F, (a >> 8) & 7
        reg = (a & 0xFC) | (port & 3)
        return (self.functions.get((dev, fn)) if bus == 0 else None), reg

    def read(self, port: int, size: int) -> int:
        if port == PCI_CONFIG_ADDRESS and size == 4:
            return self.address
        if port == PIIX_RESET_CONTROL and size == 1:
            return self.rcr
        if port < PCI_CONFIG_DATA:
            return (1 << (8 * size)) - 1
        fn, reg = self._target(port)
        if fn is None:
            return (1 << (8 * size)) - 1
        return int.from_bytes(fn.space[reg:reg + size].ljust(size, b"\xff"), "little")

    def write(self, port: int, size: int, value: int) -> None:
        if port == PCI_CONFIG_ADDRESS and size == 4:
            self.address = value & (0x8FFF_FFFC if self.ext_cfg() else 0x80FF_FFFC)
            return
        if port == PIIX_RESET_CONTROL and size == 1:
            self.rcr = value & 0x0E
            if value & RCR_RESET_CPU:
                self.on_reset("reset through port 0xCF9 (PIIX reset control)")
            return
        if port < PCI_CONFIG_DATA:
            return
        fn, reg = self._target(port)
        if fn is None:
            return
        for i in range(size):
            if reg + i < 256 and reg + i in fn.writable:
                fn.space[reg + i] = (value >> (8 * i)) & 0xFF
        if fn is self.functions.get((1, 3)) and (
                reg < PIIX4_PMBASE + 4 and reg + size > PIIX4_PMBASE or
                reg <= PIIX4_PMREGMISC < reg + size):
            self.on_pmbase(self.pm_base())

    def pm_base(self) -> int | None:
        """Where the PM I/O block decodes, or None when PMREGMISC disables it."""
        space = self.functions[(1, 3)].space
        if not space[PIIX4_PMREGMISC] & 1:
            return None
        return struct.unpack_from("<I", space, PIIX4_PMBASE)[0] & 0xFFC0

    def state(self) -> dict:
        return {"address": self.address, "rcr": self.rcr,
                "spaces": {f"{d}.{f}": fn.space.hex() for (d, f), fn in self.functions.items()}}

    def load_state(self, state: dict) -> None:
        self.address = int(state["address"])
        self.rcr = int(state["rcr"])
        for key, hexed in state["spaces"].items():
            d, f = (int(x) for x in key.split("."))
            self.functions[(d, f)].space[:] = bytes.fromhex(hexed)
