"""SMBIOS 2.8 tables as QEMU 7.2 builds them and SeaBIOS 1.16.2 installs them (DMTF DSP0134).

Measured on QEMU 7.2 (`-m 256M -cpu EPYC`, memory dumped from the monitor): the 31-byte entry
point "_SM_" at 0xF59F0 in the BIOS segment, the structure table right after it at 0xF5A10,
nine structures: BIOS (type 0: "SeaBIOS", "1.16.2-debian-1.16.2-1", "04/01/2014"), system
(type 1: "QEMU", "Standard PC (i440FX + PIIX, 1996)", "pc-i440fx-7.2", a zero UUID), chassis
(3), one processor per CPU package (4: "CPU n", the CPUID signature and feature word, 2000 MHz),
the memory array (16), one memory device per 16 GiB of RAM (17: "DIMM n"), one memory array
mapped address per RAM range (19), boot information (32) and the end (127). Linux reads it for
its "DMI: QEMU Standard PC (i440FX + PIIX, 1996), BIOS ..." line. SeaBIOS keeps a table of up to
600 bytes in the BIOS segment; svmemu does so while it fits below the MP floating pointer
(one CPU, the measured case) and otherwise puts it in the reserved top of low RAM, as SeaBIOS
does with larger tables (a pointer value only: the entry point says where).
"""
from __future__ import annotations

import struct

from emu.core.firmware.checksum import checksum_byte
from emu.core.firmware.layout import FOUR_GIB, GiB, KiB, MiB, ram_layout

SMBIOS_ENTRY_ADDR = 0xF59F0
SMBIOS_TABLE_ADDR = 0xF5A10
ENTRY_SIZE = 0x1F
MAX_DIMM_SIZE = 16 * GiB             # QEMU splits RAM into DIMMs of at most 16 GiB
HIGH_TABLE_OFFSET = 0x10000          # in the firmware's reserved top, clear of the ACPI tables


def _structure(kind: int, handle: int, body: bytes, strings: list[str]) -> bytes:
    """Formatted area (type, length, handle, body) and its string set."""
    head = struct.pack("<BBH", kind, 4 + len(body), handle) + body
    text = b"".join(s.encode() + b"\0" for s in strings)
    return head + (text + b"\0" if text else b"\0\0")


def _bios() -> bytes:
    # vendor 1, version 2, segment 0xE800, date 3, ROM 64 KiB, characteristics: "not supported"
    # (bit 3), extension bytes 0 and 4 (targeted content distribution), release 0.0, EC ff.ff.
    body = struct.pack("<BBHBBQBBBBBB", 1, 2, 0xE800, 3, 0, 1 << 3, 0, 4, 0, 0, 0xFF, 0xFF)
    return _structure(0, 0x000, body, ["SeaBIOS", "1.16.2-debian-1.16.2-1", "04/01/2014"])


def _system() -> bytes:
    body = struct.pack("<BBBB16sBBB", 1, 2, 3, 0, bytes(16), 6, 0, 0)  # wake-up: power switch
    return _structure(1, 0x100, body, ["QEMU", "Standard PC (i440FX + PIIX, 1996)",
                                       "pc-i440fx-7.2"])


def _chassis() -> bytes:
    # manufacturer 1, type 1 (other), version 2, no serial or tag, states safe (3), security
    # unknown (2), OEM 0, height, power cords, contained elements and SKU all 0
    body = struct.pack("<BBBBBBBBBIBBBBB", 1, 1, 2, 0, 0, 3, 3, 3, 2, 0, 0, 0, 0, 0, 0)
    return _structure(3, 0x300, body, ["QEMU", "pc-i440fx-7.2"])


def _processor(n: int, eax: int, edx: int) -> bytes:
    body = struct.pack("<BBBBIIBBHHHBBHHHBBBBBBHH", 1, 3, 1, 2, eax, edx, 3, 0, 0, 2000, 2000,
                       0x41, 1, 0xFFFF, 0xFFFF, 0xFFFF, 0, 0, 0, 1, 1, 1, 2, 1)
    return _structure(4, 0x400 + n, body, [f"CPU {n}", "QEMU", "pc-i440fx-7.2"])


def _memory_array(size: int, dimms: int) -> bytes:
    kib = size // KiB
    body = struct.pack("<BBBIHHQ", 1, 3, 6, kib if kib < 0x80000000 else 0x80000000, 0xFFFE,
                       dimms, 0 if kib < 0x80000000 else size)
    return _structure(16, 0x1000, body, [])


def _memory_device(n: int, size: int) -> bytes:
    mib = size // MiB
    small = mib if mib < 0x7FFF else 0x7FFF
    body = struct.pack("<HHHHHBBBBBHHBBBBBIHHHH", 0x1000, 0xFFFE, 0xFFFF, 0xFFFF, small, 9, 0,
                       1, 0, 7, 2, 0, 2, 0, 0, 0, 0, 0 if small < 0x7FFF else mib, 0, 0, 0, 0)
    return _structure(17, 0x1100 + n, body, [f"DIMM {n}", "QEMU"])


def _mapped_range(n: int, start: int, size: int) -> bytes:
    body = struct.pack("<IIHBQQ", start // KiB, (start + size) // KiB - 1, 0x1000, 1, 0, 0)
    return _structure(19, 0x1300 + n, body, [])


def _boot_information() -> bytes:
    return _structure(32, 0x2000, bytes(7), [])


def smbios_tables(ram_size: int, cpus: int, cpuid_1: tuple[int, int, int, int]) -> bytes:
    """The structure table for this machine."""
    lay = ram_layout(ram_size)
    dimms = max(1, -(-ram_size // MAX_DIMM_SIZE))
    parts = [_bios(), _system(), _chassis()]
    parts += [_processor(n, cpuid_1[0], cpuid_1[3]) for n in range(cpus)]
    parts.append(_memory_array(ram_size, dimms))
    parts += [_memory_device(n, min(MAX_DIMM_SIZE, ram_size - n * MAX_DIMM_SIZE))
              for n in range(dimms)]
    ranges = [(0, lay.below_4g)] + ([(FOUR_GIB, lay.above_4g)] if lay.above_4g else [])
    parts += [_mapped_range(n, start, size) for n, (start, size) in enumerate(ranges)]
    parts += [_boot_information(), _structure(127, 0x7F00, b"", [])]
    return b"".join(parts)


def _largest(table: bytes) -> tuple[int, int]:
    """(structures, largest structure with its strings)."""
    count = largest = at = 0
    while at < len(table):
        end = table.index(b"\0\0", at + table[at + 1]) + 2
        count, largest, at = count + 1, max(largest, end - at), end
    return count, largest


def entry_point(table: bytes, table_addr: int) -> bytes:
    """The SMBIOS 2.8 32-bit entry point, both checksums set."""
    count, largest = _largest(table)
    inter = bytearray(b"_DMI_" + bytes(1) + struct.pack("<HIHB", len(table), table_addr, count,
                                                          0x28))
    inter[5] = checksum_byte(inter)
    head = bytearray(b"_SM_" + bytes(1) + struct.pack("<BBBHB5s", ENTRY_SIZE, 2, 8, largest, 0,
                                                      bytes(5)))
    ep = head + inter
    ep[4] = checksum_byte(ep)
    return bytes(ep)


def build_smbios(ram_size: int, cpus: int, cpuid_1: tuple[int, int, int, int], firmware_top: int,
                 fseg_limit: int) -> list[tuple[int, bytes]]:
    """(address, bytes) of the entry point and the structure table; the table stays in the BIOS
    segment when it ends by `fseg_limit` (the MP floating pointer)."""
    table = smbios_tables(ram_size, cpus, cpuid_1)
    addr = SMBIOS_TABLE_ADDR
    if addr + len(table) > fseg_limit:
        addr = firmware_top + HIGH_TABLE_OFFSET
    return [(SMBIOS_ENTRY_ADDR, entry_point(table, addr)), (addr, table)]
