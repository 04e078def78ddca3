"""The MTRRs as SeaBIOS programs them before it boots a kernel.

Measured on QEMU 7.2 (-cpu qemu64, RDMSR from the kernel): MTRRdefType 0xC06 (enabled, fixed
ranges enabled, default WB); the fixed ranges WB over 0-0x9FFFF, UC over the VGA window
0xA0000-0xBFFFF, WP over the ROM area 0xC0000-0xFFFFF; variable pair 0 makes the PCI hole,
[pci_hole_start, 4 GiB), UC (base | UC, mask = -(4 GiB - start) within MAXPHYADDR, valid);
the other pairs are off.  So RAM, below 4 GiB and above, is WB.
"""
from __future__ import annotations

from emu.arch import memtype
from emu.core.firmware.layout import FOUR_GIB, pci_hole_start

_WB8 = int.from_bytes(bytes([memtype.WB]) * 8, "little")
_WP8 = int.from_bytes(bytes([memtype.WP]) * 8, "little")
_UC8 = int.from_bytes(bytes([memtype.UC]) * 8, "little")


def seabios_mtrrs(below_4g: int, maxphyaddr: int) -> dict[int, int]:
    """MSR number -> value for every MTRR SeaBIOS writes (the rest keep their reset value 0)."""
    values = {
        memtype.MSR_MTRRFIX64K_00000: _WB8,
        memtype.MSR_MTRRFIX16K_80000: _WB8,
        memtype.MSR_MTRRFIX16K_A0000: _UC8,
    }
    for index in range(memtype.MSR_MTRRFIX4K_C0000, memtype.MSR_MTRRFIX4K_F8000 + 1):
        values[index] = _WP8
    start = pci_hole_start(below_4g)
    phys_mask = (1 << maxphyaddr) - 1
    values[memtype.msr_mtrrphysbase(0)] = start | memtype.UC
    values[memtype.msr_mtrrphysmask(0)] = (-(FOUR_GIB - start) & phys_mask) | memtype.MTRR_MASK_VALID
    values[memtype.MSR_MTRRDEFTYPE] = memtype.MTRRDEF_E | memtype.MTRRDEF_FE | memtype.WB
    return values
