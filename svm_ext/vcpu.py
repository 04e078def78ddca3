"""The nested-SVM CPU as the world switch's steps see it (KVM's `struct vcpu_svm`).

vmrun.py, vmexit.py, reflect.py, vintr.py, the instruction handlers, the PAT models, the switch
cache and the rest are called by `svm_ext.extension.SvmExtension`, which provides this protocol.
They name it instead of the extension, so the extension imports its steps and no step imports the
extension: what a step may use is exactly what is listed here.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from emu.arch.paging import NestedFault
    from emu.core.machine import Machine
    from emu.engine.binding import RegBatch

    from .checks import HostCaps
    from .state import NestedState


class Vcpu(Protocol):
    machine: "Machine"
    state: "NestedState"              # GIF, VM_CR, VM_HSAVE_PA, the running vmcb12, L1's host state
    caps: "HostCaps"                  # what the CPU L1 sees supports: VMRUN's checks use it
    dr_flags: "RegBatch"              # DR7, DR6, RFLAGS: lazily split in Unicorn's context
    host_flags: "RegBatch"            # RFLAGS, DR7 of the host at #VMEXIT
    last_invalid_reason: str | None   # the rule the last failed VMRUN broke
    explained_rules: set[str]         # rules already explained on stderr
    # Sibling parts, typed loosely: naming their classes here would tie them back to this file.
    pat: Any                          # svm_ext.pat.PatModel: the selected PAT model
    steps: Any                        # svm_ext.switch_steps.FullSteps (or the switch cache)
    fast: Any                         # svm_ext.fast_switch.FastSwitch | None
    pause_window: Any                 # svm_ext.pause_filter.PauseWindow
    svm_features: int                 # CPUID 8000_000A EDX as L1 sees it

    def tracing(self) -> bool: ...
    def trace(self, text: str, where: str | None = None) -> None: ...
    def exit_name(self, code: int) -> str: ...
    def next_rip(self) -> int: ...
    def on_nested_fault(self, fault: "NestedFault", during: Any | None) -> bool: ...
