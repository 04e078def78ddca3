"""Unicorn's breakpoint list kept in step with DR7 when L0 loads DR7 itself.

Unicorn 2.1.4 (QEMU 5.0's x86 target) raises instruction and data breakpoints from a list of
its own beside DR0-DR7: MOV to DR7 rebuilds the list (`cpu_x86_update_dr7`), while the register
API and a context restore only store the value. So after a world switch loads DR7 (VMRUN loads
the guest's, #VMEXIT resets the host's to 0x400, APM vol. 2, 15.5.1 and 15.6) an instruction
breakpoint L1 had enabled would keep firing with DR7 saying it is off. `Breakpoints.loaded` runs
the engine's own rebuild for such a load, from the value the list was made for to the new one.

The rebuild also recomputes the hidden flag HF_IOBPT from DR7; L0 keeps that flag set in every
world (emu/engine/io_trap.py), so it is put back as it was. Data breakpoints, which Unicorn
lacks, follow such a load through `on_load` (emu/core/data_breakpoints.py).
"""
from __future__ import annotations

import ctypes
from typing import Callable, Optional

from unicorn import Uc

from emu.engine import binding
from emu.engine.hw_switch import HF_IOBPT, OFF_DR, OFF_HFLAGS, cpu_and_env

# DR7's enable bits L0-G3 (APM vol. 2, 13.1.1.5): with none set before or after, the list is empty.
DR7_ENABLES = 0xFF
_OFF_DR7 = OFF_DR + 7 * 8

_update_dr7 = getattr(binding.LIB, "cpu_x86_update_dr7_x86_64", None)
if _update_dr7 is not None:
    _update_dr7.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
    _update_dr7.restype = None


class Breakpoints:
    def __init__(self, uc: Uc) -> None:
        self.uc = uc
        self._dr7: ctypes.c_uint64 | None = None     # env->dr[7], once the CPU exists
        self._hflags: ctypes.c_uint32 | None = None
        self._env = 0
        self.on_load: Optional[Callable[[], None]] = None

    def _bind(self) -> bool:
        if self._dr7 is None:
            env = cpu_and_env(self.uc)[1]
            if not env:
                return False
            self._env = env
            self._dr7 = ctypes.c_uint64.from_address(env + _OFF_DR7)
            self._hflags = ctypes.c_uint32.from_address(env + OFF_HFLAGS)
        return True

    def dr7(self) -> int:
        """DR7 as the CPU holds it now: what the list was last made for, when every load of DR7
        outside a MOV goes through `loaded`."""
        return self._dr7.value if self._dr7 is not None or self._bind() else 0  # type: ignore[union-attr]

    def loaded(self, old: int) -> None:
        """DR7 was just written through the register API, replacing `old`: rebuild the list
        and tell `on_load` (only when an enable bit is set before or after: else nothing that
        depends on DR7 can have changed)."""
        if not self._bind():
            return
        dr7, hflags = self._dr7, self._hflags
        assert dr7 is not None and hflags is not None
        new = dr7.value
        if old == new or not (old | new) & DR7_ENABLES:
            return
        if _update_dr7 is not None:
            iobpt = hflags.value & HF_IOBPT
            dr7.value = old
            _update_dr7(self._env, new & 0xFFFFFFFF)
            dr7.value = new                     # the value as written (the rebuild sets bit 10)
            hflags.value = (hflags.value & ~HF_IOBPT) | iobpt
        if self.on_load is not None:
            self.on_load()
