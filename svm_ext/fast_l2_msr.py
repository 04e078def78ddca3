"""L2's RDMSR and WRMSR of an MSR that L1 lets through and L0 does not implement, answered in C
(emu/engine/l2_msr.c) with #GP(0) in L2; the router (extension.on_exit), Machine._exit_msr and
the delivery (emu/core/interrupts.py) are the reference.

A hypervisor test that sweeps MSR indices from L2 (kvm-unit-tests' msr_intercept_check: ~100,000
such accesses) paid a Python entry for each: the router asking L1's intercepts, the MSR file
finding no owner, the #GP handed to C for delivery. And since Python had run, the next world
switch could not be replayed either. The C side answers the exit itself when the Python path's
every step has one answer, known without Python:

- the exit is L2's (the CPU under vmcb02) in a replay state (the engine's state word, fast_switch.py):
  the state's id stands for the Python-side nested state, including the vmcb12 VMRUN cached,
  whose MSR_PROT intercept, MSRPM base and #GP intercept this module writes into a table,
  per id, when the id is made (FastSwitch.state_listeners). With the word 0 (Python ran and
  nothing was replayed since) C leaves the exit to Python;
- L1 does not want the exit: MSR_PROT clear, or the map's bit clear (read from L1's memory as
  intercepts.msr reads it; a map not inside RAM is left to Python);
- the MSR file has no owner for the index (deliver.c's table, FastDeliver keeps it), so
  MsrFile raises #GP(0); and L1 does not intercept #GP (else the router reflects it);
- the delivery is one deliver.c makes (it refuses, with nothing changed, anything that could
  fault or set an A/D bit), and deliver.c is enabled: armed, no APIC request pending, the
  machine's own MSR handler (FastDeliver.arm).

Nothing Python keeps changes on this path (the delivery writes L2's stack and registers only),
so the state word stays and the replayed world switches around it go on in C. Only while the
fast exits are armed (emu/core/fast_exits.py: nothing but the answer would happen in Python).

When Python answers such an access itself (the state word was 0, or deliver.c left the delivery
to Python: a stack page to mark dirty), the handler changed nothing Python keeps either: at the
end of that entry (`arm`, a companion of the fast exits) the word is set again, to the id of the
nested state as it is then, under the conditions fast_switch.py sets it at the end of a world
switch (the machine ready for programs, L1 not single-stepping), so the next accesses and world
switches are C's again.
`allowed = False` turns off only this (tests/test_fast_l2_msr.py compares both ways).
"""
from __future__ import annotations

import ctypes
from typing import TYPE_CHECKING

from emu.arch.bits import RFLAGS_TF
from emu.arch.vmcb import INTERCEPT_MSR_PROT, MSRPM_RANGES, MSRPM_SIZE, VMEXIT_MSR
from emu.core.interrupts import GP
from emu.engine import hostvm, replay
from emu.engine import hw_switch as H

from .vmrun import VMCB02

if TYPE_CHECKING:
    from .fast_switch import FastSwitch
    from .vcpu import Vcpu


class FastL2Msr:
    """The Python side: the layout once, one table entry per replay state id."""

    def __init__(self, ext: "Vcpu", fast: "FastSwitch | None", n_states: int) -> None:
        self.ext = ext
        m = ext.machine
        self.l2 = None
        if fast is None or m.replay is None or m.fast_deliver.dl is None:
            return
        l2 = self.l2 = m.replay.l2_msr
        l2.enabled = 0
        l2.exit_msr = hostvm.UC_EXIT_BASE + VMEXIT_MSR
        l2.l2_vmcb = VMCB02
        l2.off_vm_vmcb, l2.off_rcx = H.OFF_VM_VMCB, H.OFF_RCX
        l2.off_error_code, l2.off_eip = H.OFF_ERROR_CODE, H.OFF_EIP
        l2.msrpm_size = MSRPM_SIZE
        for i, (first, last, offset) in enumerate(MSRPM_RANGES):
            l2.ranges[i][0], l2.ranges[i][1], l2.ranges[i][2] = first, last, offset
        self._states = (replay.L2State * n_states)()
        l2.states, l2.n_states = ctypes.addressof(self._states), n_states
        self.fast = fast
        self._noted: tuple[int, int] | None = None
        fast.state_listeners.append(self)
        m.fast_exits.companions.append(self)
        l2.enabled = 1

    @property
    def allowed(self) -> bool:
        return self.l2 is not None and bool(self.l2.enabled)

    @allowed.setter
    def allowed(self, on: bool) -> None:
        if self.l2 is not None:
            self.l2.enabled = int(on)

    @property
    def answered(self) -> int:
        """L2's MSR accesses answered with #GP in C so far."""
        return self.l2.msr_gp if self.l2 is not None else 0

    def state_made(self, sid: int) -> None:
        """Replay state `sid` was just made from the nested state as it is now."""
        if not 0 < sid < len(self._states):
            return
        st, entry = self.ext.state, self._states[sid]
        c = st.vmcb12
        if not st.in_l2 or c is None:
            entry.in_l2 = 0
            return
        entry.msr_prot = int(bool(c.intercept_misc1 & INTERCEPT_MSR_PROT))
        entry.msrpm = c.msrpm_base_pa & ~0xFFF
        entry.gp_intercepted = (c.intercept_exceptions >> GP) & 1
        entry.in_l2 = 1

    def states_forgotten(self) -> None:
        """Every state id was dropped (ids are made afresh)."""
        ctypes.memset(self._states, 0, ctypes.sizeof(self._states))

    # ---- Python's own answers: the state word put back ------------------------------------------
    def note(self, rip: int, index: int) -> None:
        """The router leaves L2's access of MSR `index` at `rip` to L0: one the MSR file lacks
        ends in #GP and changes nothing else."""
        if self.l2 is not None and self.l2.enabled:
            self._noted = None if index in self.ext.machine.msrs.owners else rip

    def arm(self) -> None:
        rip, self._noted = self._noted, None
        if rip is None:
            return
        m, st = self.ext.machine, self.ext.state
        env = m.fast_exits.env
        if (m.replay.state or not env or m.fast_exits.rip() == rip or not st.in_l2
                or ctypes.c_uint64.from_address(env + H.OFF_VM_VMCB).value != VMCB02
                or st.l1_rflags & RFLAGS_TF or not m.replay_ready()):
            return
        self.fast.rearm()

    def disarm(self) -> None:
        pass
