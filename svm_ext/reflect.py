"""The way out of L2: every exit that goes to L1 passes through this module.

Two functions, in the order a world switch reads them:

* ``exit_handled``: does L1 want this exit? (KVM's nested_svm_exit_handled.) It asks the
  per-class predicates of intercepts.py (CR/DR access, exception vector, the misc vectors, the MSR
  and I/O permission maps, nested paging) with the vmcb12 VMRUN cached.
* ``reflect``: perform the #VMEXIT to L1 with the exit fields the APM defines for that exit
  (vmexit.py stores the guest, writes EXITCODE..EXITINTINFO and NRIP, restores the host).

The events that can end in L1 reach them from the extension's router (extension.py: an
intercepted instruction or #NPF Unicorn reports, an exception or nested fault met while L0
delivers an event, port I/O, shutdown), from the interrupt points (vintr.py: INTR, NMI, VINTR)
and from the places where Unicorn's SVM differs from the APM (hw_quirks.py). A failed VMRUN
(VMEXIT_INVALID) is not an exit from L2 and stays with VMRUN (vmexit.fail_vmrun).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from emu.arch.vmcb import VMEXIT_IOIO, Vmcb12Cache
from svm_ext import intercepts
from svm_ext.intercepts import ReadPhys
from svm_ext import vmexit as world_switch   # module: vmexit.py's #VMEXIT steps use vintr, which reflects

if TYPE_CHECKING:
    from .vcpu import Vcpu


def exit_handled(c: Vmcb12Cache, code: int, read_phys: ReadPhys | None = None, *,
                 info1: int = 0, msr_index: int = 0, port: int = 0, size: int = 0) -> bool:
    """True when L1's vmcb12 intercepts exit `code`: reflect it. False: L0 handles the event
    for L2 as the hardware would with no hypervisor watching.

    info1 and msr_index matter for VMEXIT_MSR (1 = WRMSR), port and size for VMEXIT_IOIO;
    read_phys reads L1's permission maps (the MSR and I/O exits need it)."""
    if code == VMEXIT_IOIO:
        assert read_phys is not None
        return intercepts.ioio(c, port, size, read_phys)
    return intercepts.l1_wants(c, code, info1, msr_index, read_phys)  # type: ignore[arg-type]


def reflect(ext: "Vcpu", code: int, info1: int = 0, info2: int = 0, intinfo: int = 0,
            nrip: int = 0) -> None:
    """#VMEXIT(code) to L1 with EXITINFO1/2, EXITINTINFO and NRIP as given."""
    world_switch.vmexit(ext, code, info1, info2, intinfo, nrip)
