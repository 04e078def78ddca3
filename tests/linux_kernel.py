"""Debian's Linux kernel and a busybox initramfs for the Linux tests and bench/linux.py.

`.ci/run` downloads linux-image-6.1.*-amd64 and busybox-static from the package index and
unpacks only build/linux/vmlinuz and build/linux/busybox (nothing is installed). The initramfs
is built here at run time from that busybox (cpio "newc", gzip), never stored in the repo:
its /init prints one line and powers the machine off through ACPI (`poweroff -f`).
"""
from __future__ import annotations

import gzip
import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
KERNEL = Path(os.environ.get("SVMEMU_LINUX", REPO / "build" / "linux" / "vmlinuz"))
BUSYBOX = Path(os.environ.get("SVMEMU_BUSYBOX", REPO / "build" / "linux" / "busybox"))
INIT_LINE = "svmemu-initramfs: /init runs"
INIT = f"""#!/bin/busybox sh
/bin/busybox echo "{INIT_LINE}"
/bin/busybox poweroff -f
"""

S_IFDIR, S_IFREG = 0o040000, 0o100000


def _entry(name: str, mode: int, data: bytes, ino: int) -> bytes:
    """One cpio "newc" record: the 110-byte ASCII header, the name, the data, each padded to
    4 bytes."""
    nlink = 2 if mode & S_IFDIR else 1
    fields = (ino, mode, 0, 0, nlink, 0, len(data), 0, 0, 0, 0, len(name) + 1, 0)
    head = b"070701" + b"".join(b"%08X" % v for v in fields)
    rec = head + name.encode() + b"\0"
    rec += b"\0" * (-len(rec) % 4) + data
    return rec + b"\0" * (-len(rec) % 4)


def initramfs(busybox: bytes) -> bytes:
    """A gzip-compressed newc archive with /bin/busybox and the /init script."""
    files = [("bin", S_IFDIR | 0o755, b""), ("bin/busybox", S_IFREG | 0o755, busybox),
             ("dev", S_IFDIR | 0o755, b""), ("init", S_IFREG | 0o755, INIT.encode())]
    body = b"".join(_entry(n, m, d, i + 1) for i, (n, m, d) in enumerate(files))
    body += _entry("TRAILER!!!", 0, b"", 0)
    return gzip.compress(body + b"\0" * (-len(body) % 512), mtime=0)


def available() -> str | None:
    """None when the kernel is there, else why the tests skip."""
    if not KERNEL.is_file():
        return (f"no Linux kernel at {KERNEL} (.ci/run unpacks Debian's linux-image-*-amd64 "
                "there)")
    return None
