"""The real-mode interrupt vector table SeaBIOS leaves, and the handlers it points at.

A kernel that drops back to real mode (kvm-unit-tests' realmode.flat, DOS-style code) and
enables interrupts takes the PIT's IRQ 0 through vector 8 of the IVT at address 0 (the PICs are
left at bases 0x08 and 0x70, emu/core/devices/pic.py).  SeaBIOS fills every vector: CPU
exceptions and unused vectors with an IRET at F000:FF53, IRQ 0 with its tick handler at
F000:FEA5 (BDA tick count at 0x46C, INT 1Ch, EOI), the other hardware IRQs with handlers that
send the PICs an EOI.  The handlers here do the same at the same addresses.  The BIOS service
vectors (INT 10h-1Ah) point at SeaBIOS's entry points for them, where bios_services.py answers
the calls it models and stops the run at the others.  The tick handler does not set the midnight
flag (0x470) after 24 hours of ticks.
"""
from __future__ import annotations

import struct

from emu.core.firmware.bios_services import SERVICE_ENTRIES, stub_contents
from emu.core.firmware.layout import BIOS_SEGMENT

IVT_ADDR = 0
IVT_VECTORS = 256
BIOS_CS = BIOS_SEGMENT >> 4

IRET_OFFSET = 0xFF53          # SeaBIOS's entry_iret_official
IRQ0_OFFSET = 0xFEA5          # SeaBIOS's entry_08 (timer tick)
HWPIC1_OFFSET = 0xFF60        # EOI to the master PIC
HWPIC2_OFFSET = 0xFF68        # EOI to the slave and the master PIC

PIC1_VECTORS = range(0x08, 0x10)
PIC2_VECTORS = range(0x70, 0x78)
IRQ0_VECTOR = 0x08
USER_TICK_VECTOR = 0x1C
BDA_TICKS = 0x46C

_IRET = bytes([0xCF])
_IRQ0 = bytes([
    0x1E,                          # push ds
    0x50,                          # push ax
    0x31, 0xC0,                    # xor ax, ax
    0x8E, 0xD8,                    # mov ds, ax
    0xFF, 0x06]) + struct.pack("<H", BDA_TICKS) + bytes([   # inc word [0x46c]
    0x75, 0x04,                    # jnz +4
    0xFF, 0x06]) + struct.pack("<H", BDA_TICKS + 2) + bytes([  # inc word [0x46e]
    0xCD, USER_TICK_VECTOR,        # int 0x1c
    0xB0, 0x20,                    # mov al, 0x20 (non-specific EOI)
    0xE6, 0x20,                    # out 0x20, al
    0x58,                          # pop ax
    0x1F,                          # pop ds
    0xCF])                         # iret
_HWPIC1 = bytes([0x50, 0xB0, 0x20, 0xE6, 0x20, 0x58, 0xCF])
_HWPIC2 = bytes([0x50, 0xB0, 0x20, 0xE6, 0xA0, 0xE6, 0x20, 0x58, 0xCF])


def ivt_contents() -> list[tuple[int, bytes]]:
    """(physical address, bytes): the 256 far pointers and the handlers they name."""
    vectors = [IRET_OFFSET] * IVT_VECTORS
    for v in PIC1_VECTORS:
        vectors[v] = HWPIC1_OFFSET
    for v in PIC2_VECTORS:
        vectors[v] = HWPIC2_OFFSET
    vectors[IRQ0_VECTOR] = IRQ0_OFFSET
    for v, off in SERVICE_ENTRIES.items():
        vectors[v] = off
    table = b"".join(struct.pack("<HH", off, BIOS_CS) for off in vectors)
    return [(IVT_ADDR, table),
            (BIOS_SEGMENT + IRQ0_OFFSET, _IRQ0),
            (BIOS_SEGMENT + IRET_OFFSET, _IRET),
            (BIOS_SEGMENT + HWPIC1_OFFSET, _HWPIC1),
            (BIOS_SEGMENT + HWPIC2_OFFSET, _HWPIC2)] + stub_contents()
