"""Last-branch recording (AMD APM vol. 2, 13.1.1.6 "Debug-Control MSR", 13.1.1.7 "Control-
Transfer Recording MSRs"): with DebugCtl.LBR set, LastBranchFromIP/ToIP hold the address of the
last control transfer taken and of its target.

Unicorn does not report branches, so while DebugCtl.LBR is set (and only then: the normal path
carries no hook) a code hook compares each instruction's address with the end of the one before
it: a different address means a control transfer from that instruction. A REP string
instruction's iterations (same address again) are none. World switches are not branches: the
SVM extension calls `world_switched` at VMRUN and #VMEXIT. An exception or interrupt is recorded
as the transfer to its handler, like a branch; LastIntFromIP/ToIP (the branch before an exception)
are not recorded, and read as last written by LBR virtualization's VMRUN/#VMEXIT (0 otherwise).

The recorded addresses live in the MSR table (msrs.values) under their MSR numbers, so reads,
the read-only #GP on writes, and snapshots go through the table as for every stored MSR. The
hook is added and removed between emulation slices (adding a code hook needs the translated code
flushed); recording stops at once when the LBR bit clears.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from unicorn import UC_HOOK_CODE

from emu.arch.msrs import (MSR_DEBUGCTL, MSR_LAST_BRANCH_FROM_IP, MSR_LAST_BRANCH_TO_IP,
                           MSR_LAST_EXCEPTION_FROM_IP, MSR_LAST_EXCEPTION_TO_IP)
from emu.core.msrs_amd import DEBUGCTL_LBR

if TYPE_CHECKING:
    from emu.core.board import Board

# The state LBR virtualization switches (APM vol. 2, 15.23 "Last Branch Record Virtualization"),
# in the VMCB's order: DBGCTL, BR_FROM, BR_TO, LASTEXCPFROM, LASTEXCPTO.
LBR_STATE = (MSR_DEBUGCTL, MSR_LAST_BRANCH_FROM_IP, MSR_LAST_BRANCH_TO_IP,
             MSR_LAST_EXCEPTION_FROM_IP, MSR_LAST_EXCEPTION_TO_IP)


class BranchRecorder:
    def __init__(self, machine: "Board") -> None:
        self.m = machine
        self.hook: Any = None
        self.recording = False
        self._last = 0
        self._next: int | None = None     # where the instruction after the last one starts
        msrs = machine.msrs
        owner = msrs.owners[MSR_DEBUGCTL]
        table_write = owner.write

        def write(value: int) -> None:
            table_write(value)                # the table's checks: reserved bits, BTF
            self.debugctl_changed()
        msrs.register(MSR_DEBUGCTL, owner.read, write)

    # ---- the state ------------------------------------------------------------------------
    def state(self) -> tuple[int, ...]:
        """DebugCtl and the four recording MSRs, in LBR_STATE's order."""
        values = self.m.msrs.values
        return tuple(values.get(index, 0) for index in LBR_STATE)

    def load(self, state: tuple[int, ...]) -> None:
        """Load DebugCtl and the recording MSRs (LBR virtualization at VMRUN and #VMEXIT)."""
        values = self.m.msrs.values
        for index, value in zip(LBR_STATE, state):
            values[index] = value
        self.debugctl_changed()

    def world_switched(self) -> None:
        """The next instruction belongs to another world: no transfer to record."""
        self._next = None

    # ---- recording ------------------------------------------------------------------------
    def debugctl_changed(self) -> None:
        on = bool(self.m.msrs.values.get(MSR_DEBUGCTL, 0) & DEBUGCTL_LBR)
        if on == self.recording:
            return
        self.recording = on
        self._next = None
        self.m.between_slices(self._sync)

    def restored(self) -> None:
        """The MSR table was replaced (a snapshot), outside emulation: follow its DebugCtl now."""
        self.recording = bool(self.m.msrs.values.get(MSR_DEBUGCTL, 0) & DEBUGCTL_LBR)
        self._next = None
        self._sync()

    def _sync(self) -> None:
        uc = self.m.uc
        if self.recording and self.hook is None:
            self.hook = uc.hook_add(UC_HOOK_CODE, self._insn)
            uc.ctl_flush_tb()
        elif not self.recording and self.hook is not None:
            uc.hook_del(self.hook)
            self.hook = None
            uc.ctl_flush_tb()

    def _insn(self, _uc: Any, address: int, size: int, _data: Any) -> None:
        if not self.recording:
            return
        nxt = self._next
        if nxt is not None and address != nxt and address != self._last:
            values = self.m.msrs.values
            values[MSR_LAST_BRANCH_FROM_IP] = self._last
            values[MSR_LAST_BRANCH_TO_IP] = address
        self._last, self._next = address, address + size
