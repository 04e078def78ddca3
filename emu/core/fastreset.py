"""Fast reset to an in-memory snapshot: what fuzzing does between two inputs.

`snapshot.restore` rewrites all of RAM (one 128 MiB memcpy, ~7 ms): right for resuming a saved
machine, far too slow per fuzz input. A `ResetPoint` instead makes the kernel track dirty RAM:

* At the reset point, RAM's contents go into a memfd, and the machine's RAM mapping is replaced,
  at the same host address, by a MAP_PRIVATE mapping of that memfd. Unicorn (which holds the host
  pointer) and Python (which holds the mmap object) keep working unchanged.
* A guest write makes the kernel copy that one page (copy-on-write); nothing else is copied.
* Reset is one `madvise(MADV_DONTNEED)` over RAM: the kernel drops exactly the private copies,
  and those pages read back the snapshot's bytes. The cost follows the pages the run dirtied
  (~2 us each), not the RAM size: 10 dirty pages reset in ~25 us, against 6.6 ms for a copy.
* CPU context, the L0 region (128 KiB), MSRs, devices and extension state are restored as
  `snapshot.restore` does (`restore_ram=False`).

Measured alternatives (bench/RESULTS_fuzz.md): the full copy (6.6 ms); soft-dirty page bits
(/proc/self/clear_refs + pagemap) are absent on this kernel and reading the pagemap of 128 MiB
alone costs 0.9 ms; a Python UC_HOOK_MEM_WRITE to log dirty pages puts Python on every store;
Unicorn 2.1's own memory snapshots copy-on-write into new regions the Python view never sees.

Translated code: Unicorn invalidates translations itself when the guest writes to a page holding
code, so after a run the only stale translations possible are of code the run rewrote (and then
ran). Flushing the whole cache on every reset would cost ~0.9 ms per input (measured: the fuzz
target goes from 2.2 to 3.1 ms per input) for guests that never modify code. Instead the reset
compares the pages code comes from against the snapshot (a 4 KiB memcmp each) and flushes only if
one differs: an equal page cannot carry stale translations, since every translation made from
an intermediate version was invalidated by the write that restored it. Code pages are the
image's segments (`code_ranges`) plus the page of every block Unicorn links while fuzzing
(UC_HOOK_EDGE_GENERATED: Python runs only when new code is translated and chained, not per
block). Code entered only through unchained jumps (returns, indirect jumps) on a page outside
the image, rewritten and executed within one input, is the one case this can miss.

Linux only (memfd_create, MAP_FIXED, MADV_DONTNEED).
"""
from __future__ import annotations

import ctypes
import mmap
import os
from typing import TYPE_CHECKING, Any, Iterable

from unicorn import UC_HOOK_EDGE_GENERATED, UC_PROT_EXEC

from emu.core import snapshot
from emu.errors import Unsupported
from emu.engine import binding
from emu.engine.hw_switch import HF2_NPT, OFF_HFLAGS2

if TYPE_CHECKING:
    from unicorn import Uc
    from emu.core.machine import Machine

PAGE = 0x1000
_MADV_DONTNEED = 4

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                       ctypes.c_long]
_libc.madvise.restype = ctypes.c_int
_libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]


class ResetPoint:
    """The machine as it is now, to which `reset()` returns it cheaply any number of times."""

    def __init__(self, machine: "Machine", code_ranges: Iterable[tuple[int, int]] = ()) -> None:
        if not hasattr(os, "memfd_create"):
            raise Unsupported("unsupported: fast reset needs Linux (memfd_create)")
        self.machine = machine
        machine.fresh_ram.forget()       # a reset rewrites RAM behind the loader's back
        self.snap = snapshot.take(machine)
        size = len(machine.ram)          # the whole host mapping (RAM and the PCI hole)
        self._fd = os.memfd_create("svmemu-ram")
        os.ftruncate(self._fd, size)     # sparse: chunks never written read as zeros, cost nothing
        view = memoryview(self.snap.ram)
        for off in snapshot.nonzero_chunks(self.snap.ram):
            os.pwrite(self._fd, view[off:off + snapshot.CHUNK], off)
        addr = machine.ram_addr
        got = _libc.mmap(addr, size, mmap.PROT_READ | mmap.PROT_WRITE,
                         mmap.MAP_PRIVATE | 0x10, self._fd, 0)     # 0x10: MAP_FIXED
        if got != addr:
            raise Unsupported(f"unsupported: cannot remap guest RAM for fast reset "
                              f"({os.strerror(ctypes.get_errno())})")
        self._addr = addr
        self._size = size
        self._snap_ram = memoryview(self.snap.ram)
        # Physical pages translated code may come from (see the module docstring).
        self.code_pages: set[int] = set()
        for start, length in code_ranges:
            self.add_code(start, length)
        self._edge_hook = machine.uc.hook_add(UC_HOOK_EDGE_GENERATED, self._on_edge)
        self.resets = 0
        self.tb_flushes = 0

    def add_code(self, pa: int, length: int) -> None:
        first, last = pa // PAGE, (pa + max(length, 1) - 1) // PAGE
        limit = self._size // PAGE
        if first == last:             # a translated block on one page: the common case
            if 0 <= first < limit:
                self.code_pages.add(first)
            return
        self.code_pages.update(p for p in range(first, last + 1) if 0 <= p < limit)

    def _on_edge(self, uc: "Uc", cur: Any, prev: Any, _data: object) -> None:
        """Both blocks' pages, VA -> PA by Unicorn's side-effect-free debug walk (one CPU-state
        read per edge). Not under nested paging, where a failing walk raises a nested fault
        (memory.read_code)."""
        if self.machine.ctx.save().u32(OFF_HFLAGS2) & HF2_NPT:
            return
        for tb in (cur, prev):
            pa = binding.vmem_translate(uc, tb.pc, UC_PROT_EXEC)
            if pa is not None:
                self.add_code(pa, tb.size)

    def code_changed(self) -> bool:
        """Did the run leave a code page different from the snapshot?"""
        ram, snap = self.machine.mem.view, self._snap_ram
        for p in self.code_pages:
            a = p * PAGE
            if ram[a:a + PAGE] != snap[a:a + PAGE]:
                return True
        return False

    def reset(self) -> None:
        """Return to the reset point: drop dirtied pages, restore the rest of the state."""
        m = self.machine
        flush = self.code_changed()
        if _libc.madvise(self._addr, self._size, _MADV_DONTNEED) != 0:
            raise Unsupported(f"unsupported: madvise failed ({os.strerror(ctypes.get_errno())})")
        snapshot.restore(m, self.snap, restore_ram=False, flush_code=flush)
        self.resets += 1
        self.tb_flushes += flush

    def close(self) -> None:
        try:
            self.machine.uc.hook_del(self._edge_hook)
        except Exception:
            pass
        os.close(self._fd)
