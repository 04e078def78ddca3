"""The engine's count of instructions retired and its instruction deadline (patch 0005 of
emu/engine/unicorn_build), read and written in place in the live CPU state.

The count is kept by the translated code itself (a load, an add and a store per block), exact
at every point Python can see it: a block left early takes back what did not retire. The
deadline makes emu_start end exactly when the count reaches it, however the blocks fall: the
cheap replacement for Unicorn's `count=` bound, which runs a hook on every instruction.

On the stock engine neither exists: `InsnCounter.available` is False and the machine keeps its
older time model (emu/core/timebase.py).
"""
from __future__ import annotations

import ctypes

from unicorn import Uc

from emu.engine.hw_switch import OFF_ENV_INSN_DEADLINE, OFF_ENV_INSNS, cpu_and_env
from emu.engine.unicorn_build import loader

NO_DEADLINE = (1 << 64) - 1


class InsnCounter:
    """One CPU's counter. `read()` is exact only while emulation is stopped or inside a hook
    (in an I/O or MMIO hook it already includes the rest of the running block)."""

    def __init__(self, uc: Uc) -> None:
        self.available = loader.has_fix("insn-counter")
        self._count = self._deadline = None
        if not self.available:
            return
        _, env = cpu_and_env(uc)
        if not env:
            self.available = False
            return
        self._count = ctypes.c_uint64.from_address(env + OFF_ENV_INSNS)
        self._deadline = ctypes.c_uint64.from_address(env + OFF_ENV_INSN_DEADLINE)
        self.address = env + OFF_ENV_INSNS

    def read(self) -> int:
        return self._count.value if self._count is not None else 0

    def set_deadline(self, count: int) -> None:
        """emu_start ends once `count` instructions have retired (NO_DEADLINE: never)."""
        if self._deadline is not None:
            self._deadline.value = count

    def clear_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.value = NO_DEADLINE
