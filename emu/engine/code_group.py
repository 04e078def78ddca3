"""Translated code kept coherent across the engines of one machine (patch 0007 of
emu/engine/unicorn_build): with several CPUs each has its own Unicorn engine over the same guest
RAM, and an engine's translated blocks are invalidated only by that engine's own stores.

The engines of a machine form a *code group*. A store by one engine to a page from which any
engine translated code stays on the store slow path and is logged; before an engine runs its
turn, `sync()` invalidates its blocks on the pages the others logged since its last turn (all
of its blocks if the log overflowed). So a CPU's turn no longer starts by dropping its whole
cache: it drops only what another CPU overwrote. `written()` logs the emulator's own stores
into guest RAM (the Python paths that write it through GuestMemory) the same way.

On the stock engine the group does not exist (`CodeGroup.available` is False) and the
scheduler drops the whole cache at each switch instead (emu/core/smp.py).
"""
from __future__ import annotations

import ctypes

from unicorn import Uc

from emu.engine import binding
from emu.engine.unicorn_build import loader


def _bind() -> bool:
    lib = binding.LIB
    try:
        lib.uc_svmemu_code_group_join.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int,
                                                  ctypes.c_uint64, ctypes.c_uint64]
        lib.uc_svmemu_code_group_join.restype = ctypes.c_int
        lib.uc_svmemu_code_sync.argtypes = [ctypes.c_void_p]
        lib.uc_svmemu_code_sync.restype = ctypes.c_int
        lib.uc_svmemu_code_written.argtypes = [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint64]
        lib.uc_svmemu_code_written.restype = None
    except AttributeError:
        return False
    return True


_BOUND: bool | None = None


def available() -> bool:
    """Whether the running engine keeps code groups."""
    global _BOUND
    if _BOUND is None:
        _BOUND = loader.has_fix("cross-engine-code") and _bind()
    return _BOUND


class CodeGroup:
    """One engine's membership: `join` the boot CPU's group (or start one, for the boot CPU)."""

    def __init__(self, uc: Uc, index: int, ram_host: int, ram_size: int,
                 boot: Uc | None) -> None:
        self.available = available()
        self._uch = binding.handle(uc)
        self._ram_host = ram_host
        if not self.available:
            return
        other = binding.handle(boot) if boot is not None else None
        if binding.LIB.uc_svmemu_code_group_join(self._uch, other, index, ram_host,
                                                 ram_size) != 0:
            raise RuntimeError(f"CPU {index}'s engine could not join the machine's code group")
        self._sync = binding.LIB.uc_svmemu_code_sync
        self._written = binding.LIB.uc_svmemu_code_written

    def sync(self) -> int:
        """Before this engine runs: invalidate its blocks on pages the others wrote since its
        last sync. Returns how many pages it looked at (-1: it dropped all its code)."""
        return self._sync(self._uch)

    def written(self, pa: int, size: int) -> None:
        """The emulator stored `size` bytes at guest-physical `pa` (not through the engine's
        TLB): the other engines drop code they translated from there before they run."""
        self._written(self._uch, self._ram_host + pa, size)
