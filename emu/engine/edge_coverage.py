"""AFL-style edge coverage of a Unicorn engine into a byte map: cur = (pc >> 4 ^ pc << 8) mod
size, map[cur ^ prev] += 1, prev = cur >> 1.

The block hook is C (edge_coverage.c, built into the creplay extension) when it was built, so a
fuzzer pays no Python call per executed block; otherwise, or with `python=True`, the same
arithmetic runs as a Python hook. Both give the same map (tests/test_edge_coverage.py).
"""
from __future__ import annotations

import ctypes
from typing import Any

from unicorn import UC_HOOK_BLOCK, Uc

from emu.engine import binding


class EdgeState(ctypes.Structure):
    """struct edge_state of edge_coverage.c: the map, the previous block's index, size - 1."""
    _fields_ = [("area", ctypes.c_void_p), ("prev", ctypes.c_uint64), ("mask", ctypes.c_uint64)]


class EdgeCoverageAbiMismatch(RuntimeError):
    pass


def _load() -> int | None:
    """The C hook's address, or None without the extension."""
    try:
        from emu.engine import creplay  # built by setup.py (pip install)
    except ImportError:
        return None
    lib = ctypes.CDLL(creplay.__file__)
    try:
        lib.edge_coverage_abi.restype = ctypes.c_char_p
    except AttributeError:
        return None                    # an extension built before the C hook existed
    got = lib.edge_coverage_abi().decode()
    want = " ".join(f"{name}={getattr(EdgeState, name).offset}" for name, _ in EdgeState._fields_)
    want += f" size={ctypes.sizeof(EdgeState)}"
    if got != want:
        raise EdgeCoverageAbiMismatch(f"emu/engine/creplay's edge_coverage.c has layout {got!r}, "
                                      f"edge_coverage.py {want!r}; rebuild with `pip install -e .`")
    return ctypes.cast(lib.edge_coverage_block, ctypes.c_void_p).value


_C_HOOK = _load()


def c_hook_available() -> bool:
    return _C_HOOK is not None


class EdgeCoverage:
    """Edges of `uc`'s execution counted into the `size` bytes at host address `area` (size a
    power of two). `handle` is the Unicorn hook; `new_input` starts a fresh edge chain."""

    def __init__(self, uc: Uc, area: int, size: int, *, python: bool = False) -> None:
        if size <= 0 or size & (size - 1):
            raise ValueError("the coverage map's size must be a power of two")
        self.state = EdgeState(area, 0, size - 1)      # kept alive: the C hook points at it
        self.in_c = _C_HOOK is not None and not python
        if self.in_c:
            self.handle = binding.add_hook_raw(uc, UC_HOOK_BLOCK, _C_HOOK,
                                               ctypes.addressof(self.state))
        else:
            self._map = (ctypes.c_ubyte * size).from_address(area)
            self.handle = uc.hook_add(UC_HOOK_BLOCK, self._on_block)

    def _on_block(self, uc: Uc, address: int, size: int, _data: Any) -> None:
        state = self.state
        cur = ((address >> 4) ^ (address << 8)) & state.mask
        i = cur ^ state.prev
        self._map[i] = (self._map[i] + 1) & 0xFF
        state.prev = cur >> 1

    def new_input(self) -> None:
        self.state.prev = 0

    def close(self, uc: Uc) -> None:
        if self.in_c:
            binding.del_hook_raw(uc, self.handle)
        else:
            uc.hook_del(self.handle)
