"""The bytes GNU as pads with, so that ``.align`` gives the same image as with binutils.

In code GNU as (2.40, x86-64 and ``.code32`` alike) pads with as many 11-byte NOPs as fit and
one shorter NOP for the rest; in data sections, and between sections, the linker leaves zeros.
keystone pads code with single-byte NOPs, so its padding is rewritten with these."""
from __future__ import annotations

# The recommended multi-byte NOPs (AMD APM vol. 3, "NOP"; the forms GNU as emits), by length.
NOPS: dict[int, bytes] = {
    1: bytes.fromhex("90"),
    2: bytes.fromhex("6690"),
    3: bytes.fromhex("0f1f00"),
    4: bytes.fromhex("0f1f4000"),
    5: bytes.fromhex("0f1f440000"),
    6: bytes.fromhex("660f1f440000"),
    7: bytes.fromhex("0f1f8000000000"),
    8: bytes.fromhex("0f1f840000000000"),
    9: bytes.fromhex("660f1f840000000000"),
    10: bytes.fromhex("662e0f1f840000000000"),
    11: bytes.fromhex("66662e0f1f840000000000"),
}


def code_padding(n: int) -> bytes:
    """n bytes of NOPs as GNU as lays them out for an alignment in code."""
    longest = max(NOPS)
    full, rest = divmod(n, longest)
    return NOPS[longest] * full + (NOPS[rest] if rest else b"")
