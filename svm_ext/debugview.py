"""What the debugger shows of nested SVM: the world line, the VMCB field by field, the last exit.

The gdb stub (emu/tools/gdb/stub.py) knows no SVM; it asks through the Extension entry points
`world_summary`, `control_block` and `last_exit`, which delegate here. Everything is read, never
written: looking at a guest in the debugger must not change what it does next.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from svm_ext import checks
from emu.arch.vmcb import Vmcb, exit_name, read_cache

if TYPE_CHECKING:
    from .vcpu import Vcpu


def world_summary(ext: "Vcpu") -> str:
    st = ext.state
    counts = f"{st.stats['vmrun']} VMRUN, {st.stats['vmexit']} #VMEXIT"
    if st.in_l2 and st.vmcb12 is not None:
        c = st.vmcb12
        npt = (f"nested paging on, nCR3 {c.n_cr3:#x}" if checks.nested_paging_enabled(c, ext.caps)
               else "nested paging off")
        return (f"L2 running: vmcb12 at {st.vmcb12_pa:#x}, ASID {c.guest_asid}, {npt}; "
                f"L1 resumes at {st.l1_next_rip:#x} ({counts})")
    gif = "GIF=1" if st.gif else "GIF=0"
    last = f", last vmcb12 at {st.vmcb12_pa:#x}" if st.vmcb12 is not None else ""
    return f"L1 running: {gif}{last} ({counts})"


def control_block(ext: "Vcpu") -> list[tuple[str, int]]:
    """vmcb12 as guest memory holds it (while L2 runs the save area is what L1 wrote; #VMEXIT
    rewrites it), segments split into their four parts."""
    st = ext.state
    if st.vmcb12 is None:
        return []
    fields = read_cache(ext.machine.mem.view, st.vmcb12_pa)._asdict()
    out: list[tuple[str, int]] = [("vmcb12_pa", st.vmcb12_pa)]
    for name, value in fields.items():
        if isinstance(value, bytes):
            value = int.from_bytes(value, "little")
        out.append((name, value))
    return out


def last_exit(ext: "Vcpu") -> Optional[str]:
    st = ext.state
    if st.stats["vmexit"] == 0:
        return None
    vm = Vmcb(ext.machine.mem.view, st.vmcb12_pa)
    return (f"#VMEXIT {exit_name(vm.exitcode)} (exitinfo1 {vm.exitinfo1:#x}, exitinfo2 "
            f"{vm.exitinfo2:#x}, guest rip {vm.save.rip:#x})")
