"""Strict parsing of the arguments inside gdb packets.

A packet comes from a socket, so anything may be in it. Python's ``int(x, 16)`` accepts signs,
spaces, underscores and ``0x``, and ``bytes.fromhex`` accepts spaces: gdb sends none of these, so
they are refused here, and every malformed argument becomes one ``PacketError`` that the stub
answers with an E-packet while it keeps serving.
"""
from __future__ import annotations

from emu.errors import SvmemuError

_HEX = frozenset("0123456789abcdefABCDEF")
ADDRESS_BITS = 64


class PacketError(SvmemuError):
    """A packet gdb could not have meant: answered with an E-packet, never fatal."""


def hex_int(text: str, what: str, bits: int = ADDRESS_BITS) -> int:
    """A gdb hex number of at most `bits` bits (addresses, lengths, register numbers)."""
    if not text or not _HEX.issuperset(text):
        raise PacketError(f"{what}: {text[:32]!r} is not a hex number")
    value = int(text, 16)
    if value >> bits:
        raise PacketError(f"{what}: {text[:32]} does not fit in {bits} bits")
    return value


def hex_bytes(text: str, what: str) -> bytes:
    """A run of hex byte pairs (register values, memory contents, monitor commands)."""
    if len(text) % 2 or not _HEX.issuperset(text):
        raise PacketError(f"{what}: not an even number of hex digits")
    return bytes.fromhex(text)


def split(text: str, sep: str, count: int, what: str) -> list[str]:
    """Exactly `count` fields separated by `sep` (the last one may contain `sep`)."""
    parts = text.split(sep, count - 1)
    if len(parts) != count:
        raise PacketError(f"{what}: expected {count} fields separated by {sep!r}")
    return parts


def address_range(text: str, what: str) -> tuple[int, int]:
    """`ADDR,LENGTH`, as `m`, `M` and qXfer carry it."""
    addr, length = split(text, ",", 2, what)
    return hex_int(addr, f"{what} address"), hex_int(length, f"{what} length")
