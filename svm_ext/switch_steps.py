"""The world switch's three heavy steps, behind one seam.

VMRUN's load_guest and #VMEXIT's store_guest and restore_host compute, from state that repeats
switch after switch, what they computed the time before. vmrun.py and vmexit.py call them
through `Vcpu.steps` (the extension's): this class computes each in full; the switch cache
(switch_cache.CachedSteps) replaces it and replays what it computed before when the inputs are
the same. Nothing else of the world switch knows whether a cache is there.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from svm_ext import vmexit, vmrun

if TYPE_CHECKING:
    from emu.arch.vmcb import Vmcb, Vmcb12Cache
    from emu.engine.hw_switch import Context

    from .vcpu import Vcpu


class FullSteps:
    def load_guest(self, ext: "Vcpu", c: "Vmcb12Cache") -> None:
        """VMRUN step 5: L2's state and the merged controls into the CPU."""
        vmrun.load_guest(ext, c)

    def store_guest(self, ext: "Vcpu", ctx: "Context", vm: "Vmcb") -> None:
        """#VMEXIT step 1: L2's state into vmcb12's save area."""
        vmexit.store_guest(ext, ctx, vm)

    def restore_host(self, ext: "Vcpu", ctx: "Context") -> None:
        """#VMEXIT step 3: L1's host state back into the CPU."""
        vmexit.restore_host(ext, ctx)

    def clear(self) -> None:
        """The CPU context was replaced wholesale (a snapshot restore): forget derived state."""
