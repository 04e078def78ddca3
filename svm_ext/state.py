"""Nested-SVM state that lives outside the CPU context: what a snapshot must carry for svm_ext."""
from __future__ import annotations

from emu.arch.vmcb import Vmcb12Cache, read_cache


class NestedState:
    __slots__ = ("gif", "vm_cr", "hsave_pa", "in_l2", "vmcb12_pa", "vmcb12", "l1_host",
                 "l1_next_rip", "l1_rflags", "v_irq", "v_tpr", "vnmi", "v_nmi", "v_nmi_mask",
                 "lbrv", "lbr_host", "pause_count", "pause_recent", "stats", "exit_codes")

    def __init__(self, gif: bool = True, vm_cr: int = 0, hsave_pa: int = 0, in_l2: bool = False,
                 vmcb12_pa: int = 0, vmcb12: Vmcb12Cache | None = None, l1_host: bytes = b"",
                 l1_next_rip: int = 0, l1_rflags: int = 0, v_irq: bool = False, v_tpr: int = 0,
                 vnmi: bool = False, v_nmi: bool = False, v_nmi_mask: bool = False,
                 lbrv: bool = False, lbr_host: tuple[int, ...] = (0, 0, 0, 0, 0),
                 pause_count: int = 0, pause_recent: bool = False,
                 stats: dict[str, int] | None = None,
                 exit_codes: dict[int, int] | None = None) -> None:
        self.gif = gif                  # global interrupt flag as L1 sees it
        self.vm_cr = vm_cr
        self.hsave_pa = hsave_pa
        self.in_l2 = in_l2
        self.vmcb12_pa = vmcb12_pa
        self.vmcb12 = vmcb12            # what VMRUN checked and loaded (KVM-style cached copy)
        self.l1_host = l1_host          # L1's CPU context at VMRUN: the host state #VMEXIT restores
        self.l1_next_rip = l1_next_rip
        self.l1_rflags = l1_rflags
        self.v_irq = v_irq              # a virtual interrupt for L2 still pending (vmcb12 V_IRQ)
        self.v_tpr = v_tpr              # V_TPR while L2 runs without V_INTR_MASKING
        self.vnmi = vnmi                # V_NMI_ENABLE in the running vmcb12, on a CPU with vNMI
        self.v_nmi = v_nmi              # a virtual NMI pending for L2 (vintr.py)
        self.v_nmi_mask = v_nmi_mask    # L2's virtual NMIs blocked until its IRET
        self.lbrv = lbrv                # LBR virtualization on for the running L2 (lbrv.py)
        self.lbr_host = lbr_host        # L1's DebugCtl and LBR MSRs while it is
        self.pause_count = pause_count  # PAUSE filter counter (pause_filter.py)
        self.pause_recent = pause_recent  # the last PAUSE was within PauseFilterThreshold cycles
        self.stats = stats if stats is not None else {"vmrun": 0, "vmexit": 0}
        # #VMEXITs to L1 by EXITCODE
        self.exit_codes = exit_codes if exit_codes is not None else {}

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
