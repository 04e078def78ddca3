"""Precise stops at port I/O instructions, which Unicorn 2.1.4's IN/OUT hooks cannot give alone.

Unicorn calls the IN/OUT hook from the middle of a translation block and, when it returns, runs
the rest of the block: `emu_stop` only takes effect at the block's end, and RIP cannot be
redirected from the hook. Two facts of its translator make a precise stop possible anyway
(measured; see tests/test_ioio.py):

- when the hidden flag HF_IOBPT is set at translation time, every IN/OUT/INS/OUTS is followed by
  a call to the I/O-breakpoint helper, which reads DR0-DR3 and DR7 at *run* time;
- a hit raises #DB as a trap (RIP at the next instruction), abandoning the block, and L0
  intercepts #DB like every exception.

So L0 keeps HF_IOBPT set in every world (`set_flag`); a hook that needs to stop arms an I/O
breakpoint on its own port (`arm`); the #DB arrives before the next instruction; L0 gives back
the registers it borrowed (`take`) and, to undo the instruction, RIP/RAX/RSI/RDI as they were.

Unicorn recomputes HF_IOBPT from DR7 whenever the guest writes DR7, so L0 intercepts DR7 writes,
runs them with the intercept lifted and sets the flag again (machine._exit_dr7_write).
"""
from __future__ import annotations

from typing import Callable, Optional

from unicorn import Uc
from unicorn.x86_const import (UC_X86_REG_DR0, UC_X86_REG_DR6, UC_X86_REG_DR7, UC_X86_REG_RAX,
                               UC_X86_REG_RDI, UC_X86_REG_RIP, UC_X86_REG_RSI)

from emu.arch.bits import DR7_L0, DR7_RESET, DR7_RW0_SHIFT, DR7_RW_IO
from emu.engine.hw_switch import HF_IOBPT, OFF_HFLAGS, Context, RegBatch

# DR7 for "I/O breakpoint 0 enabled, one byte" (LEN0 = 00b), with the reserved bit that reads 1.
_DR7_ARMED = DR7_RESET | DR7_L0 | (DR7_RW_IO << DR7_RW0_SHIFT)

_SAVED = [UC_X86_REG_DR0, UC_X86_REG_DR6, UC_X86_REG_DR7, UC_X86_REG_RAX, UC_X86_REG_RSI,
          UC_X86_REG_RDI, UC_X86_REG_RIP]


class _Armed:
    __slots__ = ("saved", "undo", "action")

    def __init__(self, saved: tuple[int, ...], undo: bool,
                 action: Optional[Callable[[], None]]) -> None:
        self.saved = saved
        self.undo = undo            # put the instruction back (RIP and its registers)
        self.action = action        # what to do once stopped (None: nothing)


class IoTrap:
    def __init__(self, uc: Uc, ctx: Context) -> None:
        self.ctx = ctx
        self._saved = RegBatch(uc, _SAVED)
        self._undo = RegBatch(uc, _SAVED[:-1])     # RIP goes through the context (Context.set_rip)
        self._debug = RegBatch(uc, _SAVED[:3])
        self._arm = RegBatch(uc, [UC_X86_REG_DR0, UC_X86_REG_DR7])
        self._armed: _Armed | None = None

    @property
    def armed(self) -> bool:
        return self._armed is not None

    def set_flag(self) -> None:
        """Make code translated from now on call the I/O-breakpoint helper (see module doc)."""
        ctx = self.ctx.save()
        ctx.set_u32(OFF_HFLAGS, ctx.hflags | HF_IOBPT)
        ctx.restore()

    def available(self) -> bool:
        """True when the running code was translated with HF_IOBPT, so `arm` will stop it."""
        return bool(self.ctx.save().hflags & HF_IOBPT)

    def arm(self, port: int, *, undo: bool, action: Optional[Callable[[], None]]) -> bool:
        """From an IN/OUT hook: stop right after this instruction. `undo` also restores RIP,
        RAX, RSI and RDI as they were before it, so the instruction appears never to have run.
        False if the flag is missing (the caller must fall back)."""
        if self._armed is not None or not self.available():
            return False
        self._armed = _Armed(self._saved.read(), undo, action)
        self._arm.write(port & 0xFFFF, _DR7_ARMED)
        return True

    def take(self) -> Optional[Callable[[], None]]:
        """From the #DB exit that the armed breakpoint raised: give back the debug registers
        (and the undone instruction's registers) and return the action to run."""
        armed, self._armed = self._armed, None
        assert armed is not None
        if armed.undo:
            self._undo.write(*armed.saved[:-1])
            self.ctx.set_rip(armed.saved[-1])
        else:
            self._debug.write(*armed.saved[:3])
        return armed.action
