"""PAUSE filtering and the PAUSE filter threshold (AMD APM vol. 2, 15.14.4 "Pause Intercept
Filtering"; CPUID 8000_000A EDX bits 10 and 12).

VMRUN loads vmcb12's PauseFilterCount into an internal counter. While L1 intercepts PAUSE, each
PAUSE of L2 decrements it, and the PAUSE that brings it to zero is the #VMEXIT; a count of zero
makes every PAUSE exit. The ones before it complete in L2 like an unintercepted PAUSE.

With a non-zero PauseFilterThreshold the CPU also counts the cycles since the last PAUSE: a
PAUSE that comes more than PauseFilterThreshold cycles after the previous one reloads the
counter from PauseFilterCount (a new spin loop starts) instead of decrementing it. A cycle is an
instruction here, as in the machine's virtual time. The first PAUSE after VMRUN has no previous
one and reloads. Counting runs only in the window after a PAUSE: a code hook that removes itself
once more than PauseFilterThreshold instructions went by, so code that does not spin runs
without it. While the hook is in place the world switches stay in Python (replay needs the
machine's own hooks only).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from unicorn import UC_HOOK_CODE

from emu.arch.vmcb import INTERCEPT_PAUSE, Vmcb12Cache
from emu.core.cpu_models import FEATURES

if TYPE_CHECKING:
    from .vcpu import Vcpu

FEATURE_FILTER = FEATURES["pause-filter"][3]
FEATURE_THRESHOLD = FEATURES["pfthreshold"][3]


class PauseWindow:
    """Instructions since L2's last PAUSE, counted up to the threshold (then it closes)."""

    def __init__(self, ext: "Vcpu") -> None:
        self.ext = ext
        self.hook: Any = None
        self.count = 0
        self.limit = 0

    def open(self, threshold: int) -> None:
        """A PAUSE just ran: the next one within `threshold` instructions continues its loop."""
        self.count, self.limit = 0, threshold
        self.ext.state.pause_recent = True
        if self.hook is None:
            self.ext.machine.between_slices(self._install)

    def _install(self) -> None:
        m = self.ext.machine
        if self.hook is None and self.ext.state.pause_recent:
            self.hook = m.uc.hook_add(UC_HOOK_CODE, self._tick)
            m.uc.ctl_flush_tb()          # code hooks are compiled into translated blocks

    def _tick(self, _uc: Any, _address: int, _size: int, _data: Any) -> None:
        self.count += 1
        if self.count > self.limit and self.ext.state.pause_recent:
            self.ext.state.pause_recent = False
            self.ext.machine.between_slices(self.close)

    def close(self) -> None:
        """Remove the hook (between slices, or when nothing runs)."""
        self.ext.state.pause_recent = False
        if self.hook is not None:
            m = self.ext.machine
            m.uc.hook_del(self.hook)
            self.hook = None
            m.uc.ctl_flush_tb()


def on_vmrun(ext: "Vcpu", c: Vmcb12Cache) -> None:
    """VMRUN loads the counter; no PAUSE has run in this guest yet."""
    st = ext.state
    st.pause_count = c.pause_filter_count
    st.pause_recent = False


def absorbed(ext: "Vcpu", c: Vmcb12Cache) -> bool:
    """An L2 PAUSE that L1 intercepts reached L0: True if the filter lets it complete in L2
    (RIP moved past it), False if it is the #VMEXIT."""
    features = ext.svm_features
    if not features & FEATURE_FILTER or not c.intercept_misc1 & INTERCEPT_PAUSE:
        return False
    st = ext.state
    threshold = c.pause_filter_threshold if features & FEATURE_THRESHOLD else 0
    if threshold and not st.pause_recent:
        st.pause_count = c.pause_filter_count       # a new loop: reload, no exit
        exits = False
    elif st.pause_count <= 1:
        st.pause_count = 0
        exits = True
    else:
        st.pause_count -= 1
        exits = False
    if threshold:
        ext.pause_window.open(threshold)
    if exits:
        return False
    ext.machine.retire(ext.next_rip())
    return True
