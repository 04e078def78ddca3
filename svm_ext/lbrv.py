"""LBR virtualization (AMD APM vol. 2, 15.23 "Last Branch Record Virtualization"; CPUID
8000_000A EDX bit 1): with LBR_VIRTUALIZATION_ENABLE in vmcb12 (VIRT_EXT bit 0), VMRUN keeps
the host's DebugCtl and last-branch MSRs and loads the guest's from the save area (DBGCTL,
BR_FROM, BR_TO, LASTEXCPFROM, LASTEXCPTO); #VMEXIT stores the guest's there and puts the host's
back. Without it the guest shares the host's: its branches and DebugCtl writes stay after the
#VMEXIT. The recording itself is the machine's (emu/core/lbr.py).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from emu.arch.vmcb import Vmcb, Vmcb12Cache
from emu.core.cpu_models import FEATURES
from emu.core.msrs_amd import DEBUGCTL_BTF, DEBUGCTL_VALID
from emu.errors import Unsupported

if TYPE_CHECKING:
    from .vcpu import Vcpu

FEATURE = FEATURES["lbrv"][3]
_SAVE_FIELDS = ("dbgctl", "br_from", "br_to", "lastexcpfrom", "lastexcpto")   # LBR_STATE's order


def enabled(ext: "Vcpu", c: Vmcb12Cache) -> bool:
    return bool(c.lbr_virtualization_enable) and bool(ext.svm_features & FEATURE)


def on_vmrun(ext: "Vcpu", c: Vmcb12Cache) -> None:
    """The world switch into L2 (VMRUN step 6)."""
    st, lbr = ext.state, ext.machine.lbr
    lbr.world_switched()
    st.lbrv = enabled(ext, c)
    if not st.lbrv:
        return
    dbgctl = c.dbgctl & DEBUGCTL_VALID
    if dbgctl & DEBUGCTL_BTF:
        raise Unsupported(f"vmcb12 DBGCTL {c.dbgctl:#x}: branch single-step (BTF) is not modelled")
    st.lbr_host = lbr.state()
    lbr.load((dbgctl,) + tuple(getattr(c, name) for name in _SAVE_FIELDS[1:]))


def on_vmexit(ext: "Vcpu", vm: Vmcb) -> None:
    """The world switch back to L1 (#VMEXIT, after the guest state is stored)."""
    st, lbr = ext.state, ext.machine.lbr
    lbr.world_switched()
    if not st.lbrv:
        return
    for name, value in zip(_SAVE_FIELDS, lbr.state()):
        setattr(vm.save, name, value)
    lbr.load(st.lbr_host)
    st.lbrv = False
