"""Which bytes of a machine's RAM can be non-zero, for as long as that is known.

RAM is a private anonymous mapping, zero when mapped. Until the guest first runs or a snapshot
is restored, only the loader writes to it (firmware tables, the multiboot information block,
the kernel), so zero-filling a kernel's bss need write only where the loader wrote before: a
kvm-unit-tests kernel's 12 MiB of bss then costs nothing instead of a copy that touched every
page. Once anything else may have written RAM the spans are unknown and a fill writes it all.
"""
from __future__ import annotations

import mmap


class FreshRam:
    """Spans of RAM written since it was mapped; None once that is no longer known."""

    def __init__(self) -> None:
        self.written: list[tuple[int, int]] | None = []

    def wrote(self, addr: int, length: int) -> None:
        if self.written is not None and length > 0:
            self.written.append((addr, addr + length))

    def forget(self) -> None:
        """Something other than the loader may write RAM from now on (the guest runs, a
        snapshot is restored, a tool writes memory)."""
        self.written = None

    def zero(self, ram: mmap.mmap, addr: int, length: int) -> None:
        """Make RAM [addr, addr + length) zero, writing only where it may not be."""
        end = addr + length
        if self.written is None:
            spans = [(addr, end)]
        else:
            spans = [(max(s, addr), min(e, end)) for s, e in self.written if s < end and e > addr]
        for s, e in spans:
            ram[s:e] = bytes(e - s)
