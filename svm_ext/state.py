"""Nested-SVM state that lives outside the CPU context: what a snapshot must carry for svm_ext."""
from __future__ import annotations

from dataclasses import dataclass, field

from emu.arch.vmcb import Vmcb12Cache, read_cache


@dataclass
class NestedState:
    gif: bool = True               # global interrupt flag as L1 sees it
    vm_cr: int = 0
    hsave_pa: int = 0
    in_l2: bool = False
    vmcb12_pa: int = 0
    vmcb12: Vmcb12Cache | None = None   # what VMRUN checked and loaded (KVM-style cached copy)
    l1_host: bytes = b""           # L1's CPU context at VMRUN: the host state #VMEXIT restores
    l1_next_rip: int = 0
    l1_rflags: int = 0
    v_irq: bool = False            # a virtual interrupt for L2 still pending (vmcb12 V_IRQ)
    v_tpr: int = 0                 # V_TPR while L2 runs without V_INTR_MASKING
    vnmi: bool = False             # V_NMI_ENABLE in the running vmcb12, on a CPU with vNMI
    v_nmi: bool = False            # a virtual NMI pending for L2 (vintr.py)
    v_nmi_mask: bool = False       # L2's virtual NMIs blocked until its IRET
    lbrv: bool = False             # LBR virtualization on for the running L2 (lbrv.py)
    lbr_host: tuple[int, ...] = (0, 0, 0, 0, 0)   # L1's DebugCtl and LBR MSRs while it is
    pause_count: int = 0           # PAUSE filter counter (pause_filter.py)
    pause_recent: bool = False     # the last PAUSE was within PauseFilterThreshold cycles
    stats: dict[str, int] = field(default_factory=lambda: {"vmrun": 0, "vmexit": 0})
    exit_codes: dict[int, int] = field(default_factory=dict)   # #VMEXITs to L1 by EXITCODE

    def to_dict(self) -> dict:
        return dict(gif=self.gif, vm_cr=self.vm_cr, hsave_pa=self.hsave_pa, in_l2=self.in_l2,
                    vmcb12_pa=self.vmcb12_pa,
                    vmcb12=self.vmcb12.to_bytes().hex() if self.vmcb12 is not None else None,
                    l1_host=self.l1_host.hex(), l1_next_rip=self.l1_next_rip,
                    l1_rflags=self.l1_rflags, v_irq=self.v_irq, v_tpr=self.v_tpr,
                    pause_count=self.pause_count, vnmi=self.vnmi, v_nmi=self.v_nmi,
                    v_nmi_mask=self.v_nmi_mask, lbrv=self.lbrv, lbr_host=list(self.lbr_host))

    @classmethod
    def from_dict(cls, d: dict) -> "NestedState":
        raw = d.get("vmcb12")
        return cls(gif=bool(d["gif"]), vm_cr=int(d["vm_cr"]), hsave_pa=int(d["hsave_pa"]),
                   in_l2=bool(d["in_l2"]), vmcb12_pa=int(d["vmcb12_pa"]),
                   vmcb12=read_cache(bytes.fromhex(raw)) if raw else None,
                   l1_host=bytes.fromhex(d["l1_host"]), l1_next_rip=int(d["l1_next_rip"]),
                   l1_rflags=int(d.get("l1_rflags", 2)), v_irq=bool(d.get("v_irq", False)),
                   v_tpr=int(d.get("v_tpr", 0)), pause_count=int(d.get("pause_count", 0)),
                   vnmi=bool(d.get("vnmi", False)), v_nmi=bool(d.get("v_nmi", False)),
                   v_nmi_mask=bool(d.get("v_nmi_mask", False)), lbrv=bool(d.get("lbrv", False)),
                   lbr_host=tuple(int(v) for v in d.get("lbr_host", (0,) * 5)))
