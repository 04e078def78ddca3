"""How a file is known for a Linux kernel: the setup header's signature (boot.rst, "The
real-mode kernel header"), which QEMU tests before anything else. Apart from linux.py so that
this test, made for every image, does not import the whole Linux loader."""
from __future__ import annotations

HDR_HEADER = 0x202             # offset of the signature, in the file and in boot_params
HDR_MAGIC = b"HdrS"


def recognises(data: bytes) -> bool:
    """A Linux kernel carries "HdrS" at 0x202."""
    return data[HDR_HEADER:HDR_HEADER + len(HDR_MAGIC)] == HDR_MAGIC
