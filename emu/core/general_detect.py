"""DR7.GD, general detect (AMD APM vol. 2, 13.1.1.4 and 13.1.1.5): with GD set, the next MOV to
or from any debug register raises #DB instead of executing, a fault (RIP at the MOV) with
DR6.BD set, and the processor clears GD as it delivers the #DB so that the handler can use the
debug registers. MOV SS blocking does not hold it back.

Unicorn 2.1.4 keeps GD in DR7 but never acts on it. L0 sees every DR7 write already
(hostvm.L0_DR_WRITE_INTERCEPTS); while the value written has GD set, vmcb01 also intercepts
every debug-register read and write, and the exit becomes that #DB. A nested guest that sets
GD is stopped as unsupported: L1's intercept vectors would have to be merged with these."""
from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from unicorn.x86_const import UC_X86_REG_DR6, UC_X86_REG_DR7

from emu.arch.bits import DR6_BD, DR7_GD
from emu.arch.vmcb import VMEXIT_DR0_READ, VMEXIT_DR0_WRITE
from emu.engine import hostvm
from emu.engine.hw_switch import OFF_INTERCEPT_DR_READ, OFF_INTERCEPT_DR_WRITE
from emu.core.interrupts import DB
from emu.errors import STATUS_UNSUPPORTED

if TYPE_CHECKING:
    from emu.core.board import Board

DEBUG_REGISTERS = 8          # DR0-DR7 (DR4 and DR5 alias DR6 and DR7 with CR4.DE clear)
_ALL_DRS = (1 << DEBUG_REGISTERS) - 1


class GeneralDetect:
    """Arms the debug-register intercepts while DR7.GD is set and turns their exits into #DB."""

    def __init__(self, machine: "Board") -> None:
        self.m = machine
        self.armed = False
        for n in range(DEBUG_REGISTERS):
            if VMEXIT_DR0_WRITE + n != hostvm.VMEXIT_DR7_WRITE:
                machine.register_exit(VMEXIT_DR0_WRITE + n, self._access)
            machine.register_exit(VMEXIT_DR0_READ + n, self._access)

    def after_dr7_write(self) -> None:
        """A MOV to DR7 completed: follow its GD bit."""
        gd = bool(self.m.uc.reg_read(UC_X86_REG_DR7) & DR7_GD)
        if gd and self.m.level() != "L1":
            self.m.stop("unsupported", STATUS_UNSUPPORTED,
                        "unsupported: DR7.GD (general detect) set in a nested guest")
            return
        if gd != self.armed:
            self._arm(gd)

    def fires(self) -> bool:
        """Called at an intercepted debug-register access (DR7 writes included): True when GD
        turned it into the #DB, now being delivered."""
        if not self.armed:
            return False
        uc = self.m.uc
        if not uc.reg_read(UC_X86_REG_DR7) & DR7_GD:      # cleared by a world switch meanwhile
            self._arm(False)
            return False
        uc.reg_write(UC_X86_REG_DR6, uc.reg_read(UC_X86_REG_DR6) | DR6_BD)
        uc.reg_write(UC_X86_REG_DR7, uc.reg_read(UC_X86_REG_DR7) & ~DR7_GD)
        self._arm(False)
        self.m.raise_exception(DB)
        return True

    def _access(self, code: int) -> None:
        self.fires()        # if not, the intercepts are off again and the MOV runs in Unicorn

    def _arm(self, on: bool) -> None:
        ctx = self.m.ctx.save()
        read = _ALL_DRS if on else 0
        write = _ALL_DRS if on else hostvm.L0_DR_WRITE_INTERCEPTS
        struct.pack_into("<H", ctx.view, OFF_INTERCEPT_DR_READ, read)
        struct.pack_into("<H", ctx.view, OFF_INTERCEPT_DR_WRITE, write)
        ctx.restore()
        self.armed = on
