"""The BIOS data area (0x400-0x4FF) and the EBDA, as SeaBIOS leaves them for the kernel.

Kernels written for PCs read a few words here instead of probing: the I/O base of each serial
port, the EBDA segment (where the MP floating pointer search starts), the KiB of conventional
memory, the equipment word, the text-mode video state (many hobby kernels take the CRTC port
from 0x463).  Values measured on QEMU 7.2 with SeaBIOS (-serial stdio).  Deliberate
differences, for devices svmemu does not have: no parallel port (QEMU lists LPT1 at 0x378),
and the equipment word lists no floppy drive, parallel port or PS/2 mouse.
"""
from __future__ import annotations

import struct

from emu.core.firmware.layout import EBDA_BASE, EBDA_SIZE, LOW_RAM_END

BDA_COM_PORTS = 0x400          # 4 words: COM1..COM4 I/O bases
BDA_LPT_PORTS = 0x408          # 3 words: LPT1..LPT3
BDA_EBDA_SEGMENT = 0x40E
BDA_EQUIPMENT = 0x410
BDA_MEMORY_KIB = 0x413
BDA_KBD_HEAD = 0x41A
BDA_KBD_TAIL = 0x41C
BDA_VIDEO_MODE = 0x449
BDA_VIDEO_COLUMNS = 0x44A
BDA_CRTC_BASE = 0x463
BDA_KBD_START = 0x480
BDA_KBD_END = 0x482
BDA_VIDEO_ROWS = 0x484

COM1_BASE = 0x3F8
KBD_BUFFER_START = 0x1E        # offsets in segment 0x40, as SeaBIOS sets them
KBD_BUFFER_END = 0x3E
EQUIP_FPU = 1 << 1
EQUIP_VIDEO_80X25_COLOR = 2 << 4
EQUIP_SERIAL_SHIFT = 9
VIDEO_MODE_TEXT_80X25 = 0x03
CRTC_COLOR = 0x3D4


def bda_contents(serial_ports: tuple[int, ...] = (COM1_BASE,)) -> list[tuple[int, bytes]]:
    """(physical address, bytes) to write: the BDA fields and the EBDA's size byte."""
    coms = list(serial_ports[:4]) + [0] * (4 - len(serial_ports[:4]))
    equipment = EQUIP_FPU | EQUIP_VIDEO_80X25_COLOR | (len(serial_ports[:4]) << EQUIP_SERIAL_SHIFT)
    return [
        (BDA_COM_PORTS, struct.pack("<4H", *coms)),
        (BDA_LPT_PORTS, struct.pack("<3H", 0, 0, 0)),
        (BDA_EBDA_SEGMENT, struct.pack("<H", EBDA_BASE >> 4)),
        (BDA_EQUIPMENT, struct.pack("<H", equipment)),
        (BDA_MEMORY_KIB, struct.pack("<H", LOW_RAM_END >> 10)),
        (BDA_KBD_HEAD, struct.pack("<HH", KBD_BUFFER_START, KBD_BUFFER_START)),
        (BDA_VIDEO_MODE, struct.pack("<BH", VIDEO_MODE_TEXT_80X25, 80)),
        (BDA_CRTC_BASE, struct.pack("<H", CRTC_COLOR)),
        (BDA_KBD_START, struct.pack("<HHB", KBD_BUFFER_START, KBD_BUFFER_END, 24)),
        # The EBDA's first byte is its size in KiB.
        (EBDA_BASE, bytes([EBDA_SIZE >> 10])),
    ]
