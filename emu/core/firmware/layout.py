"""Guest-physical layout of a QEMU 7.2 pc machine booted with SeaBIOS: where RAM is, where the
firmware keeps its data, and the e820 map the firmware reports (the multiboot memory map).

Measured on QEMU 7.2 (``-m`` 128M, 3200M, 4G, 16G; guests/mbinfo.S and memory dumps):

* RAM below 4 GiB is the whole of ``-m`` while it stays under 3.5 GiB (QEMU's default
  max-ram-below-4g, 0xE0000000); from 3.5 GiB on, the pc machine keeps 3 GiB below 4 GiB
  (gigabyte alignment) and puts the rest at 4 GiB (hw/i386/pc_piix.c).  The range between the
  end of low RAM and 4 GiB is the PCI hole: no RAM there.
* The e820 map: conventional memory up to the 1 KiB EBDA at 0x9FC00, the BIOS segment
  0xF0000-0xFFFFF reserved, RAM from 1 MiB up to 128 KiB below the end of low RAM (SeaBIOS keeps
  that top for its ACPI tables and other data), the BIOS flash below 4 GiB, RAM above 4 GiB,
  and, since the CPU is an AMD one, the HyperTransport range below 1 TiB.
"""
from __future__ import annotations

from emu.errors import OptionError

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30
FOUR_GIB = 1 << 32

E820_RAM = 1
E820_RESERVED = 2

LOW_RAM_END = 0x9FC00                 # 639 KiB of conventional memory
EBDA_BASE = LOW_RAM_END               # the extended BIOS data area, 1 KiB, then the VGA hole
EBDA_SIZE = 0x400
BIOS_SEGMENT = 0xF0000                # e820-reserved; the RSDP and the MP tables live here
BIOS_SEGMENT_SIZE = 0x10000
FIRMWARE_RESERVED_TOP = 0x20000       # reserved at the top of low RAM (ACPI tables)
BIOS_FLASH = 0xFFFC0000               # 256 KiB flash image below 4 GiB
BIOS_FLASH_SIZE = 0x40000
AMD_HT_HOLE = 0xFD00000000            # reserved on AMD CPUs: 1012 GiB .. 1 TiB
AMD_HT_HOLE_SIZE = 0x300000000

MAX_RAM_BELOW_4G = 0xE0000000         # QEMU's default max-ram-below-4g (3.5 GiB)
GIGABYTE_ALIGNED_BELOW_4G = 0xC0000000  # what the pc machine keeps below 4 GiB past that

MIN_RAM = 2 * MiB
MAX_RAM = 64 * GiB


class RamLayout:
    """Where ``size`` bytes of RAM appear: ``below_4g`` from 0, ``above_4g`` from 4 GiB."""

    __slots__ = ("size", "below_4g", "above_4g")

    def __init__(self, size: int, below_4g: int, above_4g: int) -> None:
        self.size = size
        self.below_4g = below_4g
        self.above_4g = above_4g

    @property
    def ranges(self) -> list[tuple[int, int]]:
        """(guest-physical base, length) of each RAM range."""
        out = [(0, self.below_4g)]
        if self.above_4g:
            out.append((FOUR_GIB, self.above_4g))
        return out

    @property
    def end(self) -> int:
        """One past the highest RAM address (the host mapping covers [0, end), hole included:
        host address = guest-physical address, and the hole's pages are never touched)."""
        return FOUR_GIB + self.above_4g if self.above_4g else self.below_4g

    @property
    def firmware_top(self) -> int:
        """Start of the reserved area at the top of low RAM that holds the ACPI tables."""
        return self.below_4g - FIRMWARE_RESERVED_TOP

    def is_ram(self, pa: int, size: int = 1) -> bool:
        """Is all of [pa, pa+size) RAM (in one range)?"""
        return any(b <= pa and pa + size <= b + n for b, n in self.ranges)

    def overlaps(self, pa: int, size: int) -> bool:
        """Is any of [pa, pa+size) RAM?"""
        return any(pa < b + n and b < pa + size for b, n in self.ranges)


def check_ram_size(size: int) -> None:
    """Refuse a RAM size QEMU's pc machine (or this machine) cannot lay out."""
    if size % (4 * KiB):
        raise OptionError(f"RAM size {size:#x} is not a multiple of 4 KiB")
    if not MIN_RAM <= size <= MAX_RAM:
        raise OptionError(f"RAM size {_human(size)} is outside {_human(MIN_RAM)}..{_human(MAX_RAM)}")


def _human(n: int) -> str:
    if n == 0:
        return "0"
    for unit, scale in (("G", GiB), ("M", MiB), ("K", KiB)):
        if n % scale == 0:
            return f"{n // scale}{unit}"
    return f"{n:#x} bytes"


def ram_layout(size: int) -> RamLayout:
    """QEMU 7.2 pc_piix's split (max-ram-below-4g 3.5 GiB, gigabyte-aligned)."""
    check_ram_size(size)
    low = size if size < MAX_RAM_BELOW_4G else GIGABYTE_ALIGNED_BELOW_4G
    return RamLayout(size, low, size - low)


def e820_map(size: int) -> list[tuple[int, int, int]]:
    """(base, length, type) as SeaBIOS reports them on QEMU 7.2 with an AMD CPU."""
    lay = ram_layout(size)
    entries = [(0, LOW_RAM_END, E820_RAM),
               (EBDA_BASE, EBDA_SIZE, E820_RESERVED),
               (BIOS_SEGMENT, BIOS_SEGMENT_SIZE, E820_RESERVED),
               (MiB, lay.firmware_top - MiB, E820_RAM),
               (lay.firmware_top, FIRMWARE_RESERVED_TOP, E820_RESERVED),
               (BIOS_FLASH, BIOS_FLASH_SIZE, E820_RESERVED)]
    if lay.above_4g:
        entries.append((FOUR_GIB, lay.above_4g, E820_RAM))
    entries.append((AMD_HT_HOLE, AMD_HT_HOLE_SIZE, E820_RESERVED))
    return entries


def pci_hole_start(below_4g: int) -> int:
    """Where SeaBIOS starts the PCI memory window on the i440FX (its variable MTRR 0 makes
    [here, 4 GiB) uncacheable): 2 GiB while low RAM fits below it, 3 GiB while it fits below
    that, else the end of low RAM.  Measured on QEMU 7.2: -m 128M -> 0x80000000, 2049M and
    3.5G+ -> 0xC0000000, 3200M -> 0xC8000000."""
    if below_4g <= 0x80000000:
        return 0x80000000
    if below_4g <= 0xC0000000:
        return 0xC0000000
    return below_4g
