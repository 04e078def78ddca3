"""The CPU's interrupt window: how L0 gets control when the running guest can take an interrupt.

Unicorn runs guest code freely and never tells us when RFLAGS.IF becomes 1 (STI, POPF, IRET) or
an interrupt shadow ends. Its SVM does, though: with a virtual interrupt requested
(`CPU_INTERRUPT_VIRQ` in the CPU's `interrupt_request`) and the VINTR intercept set, the CPU
leaves guest mode with exit code VMEXIT_VINTR (0x64) at the first instruction boundary where
IF=1, GIF=1 and no interrupt shadow blocks it -- exactly the moment a real CPU would take an
external interrupt. Arming costs nothing while IF stays 0; the exit reaches the INTR hook as
0x164 with RIP at the next instruction to execute.

The request bit lives in QEMU's CPUState, which `context_save` does not cover, so it is written
in place (CPUState.interrupt_request), together with the icount "high" word just below the
CPUX86State, set to make translated code return to the main loop (where interrupt requests are
examined) at the next block boundary, as QEMU's cpu_interrupt does. Those offsets are pinned with
the context's (emu/engine/hw_switch.py) and proven with them at start-up.
The VINTR intercept bit is patched into the live CPUX86State too; a context restore (world
switch) rewrites it, so `resync()` must follow every world switch.
"""
from __future__ import annotations

import ctypes

from unicorn import Uc

from emu.arch.vmcb import VMEXIT_VINTR, intercept_misc_bit
from emu.engine.hw_switch import (CPU_INTERRUPT_VIRQ, OFF_CPU_INTERRUPT_REQUEST, OFF_ENV_ICOUNT_DECR_HIGH,
                                  OFF_INTERCEPT, OFF_INTERCEPT_CRDR, UnsupportedUnicorn, cpu_and_env)

VINTR_INTERCEPT_BIT = intercept_misc_bit(VMEXIT_VINTR)


class Window:
    def __init__(self, uc: Uc) -> None:
        cpu, env = cpu_and_env(uc)
        if not env:
            raise UnsupportedUnicorn("unicorn engine has no CPU state to arm an interrupt window in")
        self._request = ctypes.c_uint32.from_address(cpu + OFF_CPU_INTERRUPT_REQUEST)
        self._kick = ctypes.c_uint16.from_address(env + OFF_ENV_ICOUNT_DECR_HIGH)
        self._intercept = ctypes.c_uint64.from_address(env + OFF_INTERCEPT)
        self._cr_read = ctypes.c_uint16.from_address(env + OFF_INTERCEPT_CRDR)
        self._cr_write = ctypes.c_uint16.from_address(env + OFF_INTERCEPT_CRDR + 2)
        self.armed = False

    def arm(self, kick: bool = True) -> None:
        """Exit with VMEXIT_VINTR as soon as the running guest can take an interrupt. Without
        `kick` the request is only seen when translated code next returns to Unicorn's main
        loop (STI, POPF, IRET, any exit), not inside a chain of translated blocks."""
        self.armed = True
        self._intercept.value |= VINTR_INTERCEPT_BIT
        self._request.value |= CPU_INTERRUPT_VIRQ
        if kick:
            self.kick()

    def kick(self) -> None:
        """Make translated code return to the main loop at its next exit check. Unicorn checks
        after every memory access too and then restarts the accessing instruction, so a kick
        from an MMIO callback re-executes that instruction (see irq.py)."""
        self._kick.value = 0xFFFF

    def disarm(self) -> None:
        self.armed = False
        self._request.value &= ~CPU_INTERRUPT_VIRQ

    def addresses(self) -> tuple[int, int, int]:
        """Where `arm` writes (the request word, the kick word, the intercept word), for C
        that arms the window as `arm(kick=True)` does (emu/engine/apic_fast.c)."""
        return (ctypes.addressof(self._request), ctypes.addressof(self._kick),
                ctypes.addressof(self._intercept))

    def intercept_cr(self, n: int) -> None:
        """Make MOV to/from CRn of the running world exit (live, like the VINTR bit)."""
        self._cr_read.value |= 1 << n
        self._cr_write.value |= 1 << n

    def resync(self) -> None:
        """After a context restore: the restored intercepts may lack the VINTR bit, and a
        virtual-interrupt request without its intercept would make Unicorn vector one itself."""
        if self.armed:
            self._intercept.value |= VINTR_INTERCEPT_BIT
