"""The byte checksum BIOS tables share (ACPI, MP, RSDP): all bytes of a structure sum to 0."""
from __future__ import annotations


def checksum_byte(data: bytes | bytearray) -> int:
    """The value that, stored in the structure's checksum field (0 while summing), makes its
    bytes sum to 0 modulo 256."""
    return -sum(data) & 0xFF


def with_checksum(data: bytes | bytearray, offset: int) -> bytes:
    """``data`` with the checksum byte at ``offset`` filled in."""
    out = bytearray(data)
    out[offset] = 0
    out[offset] = checksum_byte(out)
    return bytes(out)
