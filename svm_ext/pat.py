"""PAT under nested SVM: three models behind one interface (seed series; APM 15.25.8).

- architectural: with nested paging, L2's PAT MSR is a separate guest PAT register (gPAT),
  loaded from vmcb12.g_pat at VMRUN and stored back at #VMEXIT; L1's PAT (hPAT) never changes.
- swap: the seed series' implementation: one storage location; VMRUN parks L1's value and loads
  g_pat, #VMEXIT stores the storage into g_pat and puts L1's value back. The guest cannot tell.
- shared: before the series (and QEMU TCG today): one PAT, g_pat ignored and never checked,
  and (as on TCG) a reserved type written to PAT is stored, not refused with #GP.

Why swap equals architectural: in both, while L2 runs with nested paging every PAT access sees
gPAT and nothing else can observe hPAT (L1 is not running); at #VMEXIT both write gPAT to g_pat
and leave L1 with the value it had at VMRUN. They differ only in where hPAT sits meanwhile
(the parked copy vs the PAT register), which no guest instruction can read. A reserved g_pat
fails VMRUN before either model touches anything.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from emu.arch import memtype
from emu.errors import SnapshotError
from emu.core.msr import MSR_PAT, check_pat_write

from svm_ext import checks
from emu.arch.vmcb import Vmcb, Vmcb12Cache

if TYPE_CHECKING:
    from .vcpu import Vcpu

MODELS = ("architectural", "swap", "shared")


class PatModel:
    name = ""
    checks_g_pat = True

    def __init__(self) -> None:
        self.gpat = memtype.PAT_RESET       # architectural: the guest PAT register
        self.gpat_valid = False             # gPAT is live (L2 running with nested paging)
        self.parked_hpat = 0                # swap: L1's value while L2 runs

    def attach(self, ext: "Vcpu") -> None:
        self.ext = ext
        ext.machine.msrs.register(MSR_PAT, self.rdmsr, self.wrmsr)

    # ---- the one storage location Unicorn-side code and L1 see -------------------------------
    def _storage(self) -> int:
        return self.ext.machine.msrs.values[MSR_PAT]

    def _set_storage(self, value: int) -> None:
        self.ext.machine.msrs.values[MSR_PAT] = value

    def hpat(self) -> int:
        return self._storage()

    def rdmsr(self) -> int:
        return self._storage()

    def wrmsr(self, value: int) -> None:
        check_pat_write(value)
        self._set_storage(value)

    def on_vmrun(self, ext: "Vcpu", c: Vmcb12Cache) -> None:
        pass

    def on_vmexit(self, ext: "Vcpu", vm: Vmcb) -> None:
        pass

    # ---- model-neutral state, so a snapshot restores under any model ------------------------
    def gpat_value(self) -> int:
        return self.gpat

    def state(self) -> dict:
        """hPAT, gPAT and VALID_GPAT as the architecture defines them, whatever the storage."""
        return dict(hpat=self.hpat(), gpat=self.gpat_value(), gpat_valid=self.gpat_valid)

    def load_state(self, d: dict) -> None:
        """Rule for snapshots without gPAT (format 1): the PAT register held whatever the world
        then running saw, so it becomes hPAT when L1 ran and gPAT when L2 ran with nested paging;
        L1's hPAT is then unknown and is taken to be the same value (before the series L1 and
        L2 shared that one register, so this is what L1 would have found at #VMEXIT anyway).

        Values are checked only for being 64-bit: a snapshot taken under `shared` may hold a
        reserved type, which that model stores. A live gPAT outside L2 is a damaged snapshot."""
        hpat = _u64(d["hpat"], "hpat")
        valid = d.get("gpat_valid", False)
        if type(valid) is not bool:
            raise SnapshotError(f"the PAT section's gpat_valid is {valid!r}, not true or false")
        gpat = _u64(d.get("gpat", hpat), "gpat")
        if valid and not self.ext.state.in_l2:
            raise SnapshotError("the PAT section has a live gPAT but the snapshot is not in L2")
        self.place(hpat, gpat, valid)

    def place(self, hpat: int, gpat: int, valid: bool) -> None:
        self._set_storage(hpat)
        self.gpat, self.gpat_valid = gpat, valid


class Architectural(PatModel):
    name = "architectural"

    def rdmsr(self) -> int:
        return self.gpat if self.gpat_valid else self._storage()

    def wrmsr(self, value: int) -> None:
        check_pat_write(value)
        if self.gpat_valid:
            self.gpat = value
        else:
            self._set_storage(value)

    def on_vmrun(self, ext: "Vcpu", c: Vmcb12Cache) -> None:
        if checks.nested_paging_enabled(c, ext.caps):
            self.gpat, self.gpat_valid = c.g_pat, True

    def on_vmexit(self, ext: "Vcpu", vm: Vmcb) -> None:
        if self.gpat_valid:
            vm.save.g_pat = self.gpat
            self.gpat_valid = False


class Swap(PatModel):
    name = "swap"

    def hpat(self) -> int:
        return self.parked_hpat if self.gpat_valid else self._storage()

    def gpat_value(self) -> int:
        return self._storage() if self.gpat_valid else self.gpat

    def place(self, hpat: int, gpat: int, valid: bool) -> None:
        self.gpat_valid = valid
        self.gpat = gpat
        if valid:
            self.parked_hpat = hpat
            self._set_storage(gpat)
        else:
            self._set_storage(hpat)

    def on_vmrun(self, ext: "Vcpu", c: Vmcb12Cache) -> None:
        if checks.nested_paging_enabled(c, ext.caps):
            self.parked_hpat = self._storage()
            self._set_storage(c.g_pat)
            self.gpat, self.gpat_valid = c.g_pat, True

    def on_vmexit(self, ext: "Vcpu", vm: Vmcb) -> None:
        # The last gPAT is kept (as `architectural` keeps its register) so that state(), and so
        # a snapshot section, is the same in both models between runs too.
        if self.gpat_valid:
            self.gpat = self._storage()
            vm.save.g_pat = self.gpat
            self._set_storage(self.parked_hpat)
            self.gpat_valid = False


class Shared(PatModel):
    """QEMU TCG's PAT, check for check: one register for L1 and L2, g_pat neither checked, loaded
    nor stored, and WRMSR(PAT) storing reserved types instead of raising #GP (KVM before the
    series did raise it; TCG does not). So a guest fails under `shared` exactly what it fails on
    QEMU, which tests/test_pat_guest.py compares."""
    name = "shared"
    checks_g_pat = False

    def wrmsr(self, value: int) -> None:
        self._set_storage(value & 0xFFFFFFFFFFFFFFFF)

    def place(self, hpat: int, gpat: int, valid: bool) -> None:
        # One PAT: L2 with nested paging was seeing gPAT, so that is what the register holds.
        self._set_storage(gpat if valid else hpat)
        self.gpat, self.gpat_valid = gpat, False


def _u64(v: object, what: str) -> int:
    if type(v) is not int or not 0 <= v < 1 << 64:
        raise SnapshotError(f"the PAT section's {what} is {v!r}, not a 64-bit value")
    return v


def make(name: str) -> PatModel:
    from emu.errors import OptionError
    for cls in (Architectural, Swap, Shared):
        if cls.name == name:
            return cls()
    raise OptionError(f"unknown PAT model {name!r} (choose from {', '.join(MODELS)})")
