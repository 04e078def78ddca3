"""The machine's MSR file: every RDMSR/WRMSR L1 executes lands here.

Unicorn at CPL0 never raises #GP from RDMSR/WRMSR (reserved PAT types are taken silently, unknown
MSRs read 0); here every MSR has an owner that validates the value and an unknown index raises
#GP, as hardware does. MSRs that Unicorn's CPU actually uses (EFER, the SYSCALL and segment-base
MSRs) are forwarded to it, so translated code sees them; the rest live in Python. Which MSRs
exist, with their APM references, is the table in msrs_amd.py.
"""
from __future__ import annotations

from typing import Callable, Protocol

from emu.arch import memtype
from emu.arch.paging import is_canonical
from emu.arch.bits import EFER_FFXSR, EFER_LMA, EFER_LME, EFER_NXE, EFER_SCE, EFER_SVME  # noqa: F401 (re-exported)

from emu.arch.msrs import (  # noqa: F401 (re-exported to the MSR file's users)
    MSR_APIC_BASE, MSR_CSTAR, MSR_EFER, MSR_FS_BASE, MSR_GS_BASE, MSR_KERNEL_GS_BASE, MSR_LSTAR,
    MSR_MTRRCAP, MSR_MTRR_DEF_TYPE, MSR_PAT, MSR_SFMASK, MSR_STAR, MSR_SYSENTER_CS,
    MSR_SYSENTER_EIP, MSR_SYSENTER_ESP, MSR_TSC, MSR_TSC_AUX)


PAT_POWER_ON = memtype.PAT_RESET


class GeneralProtection(Exception):
    """WRMSR/RDMSR must raise #GP(0) in the guest."""


Reader = Callable[[], int]
Writer = Callable[[int], None]


class CpuMsrs(Protocol):
    """Access to the MSRs that Unicorn's CPU holds (EFER, SYSCALL MSRs, segment bases)."""

    def read(self, index: int) -> int: ...
    def write(self, index: int, value: int) -> None: ...


class MsrOwner:
    __slots__ = ("read", "write")

    def __init__(self, read: Reader, write: Writer) -> None:
        self.read = read
        self.write = write


def check_pat_write(value: int) -> None:
    """WRMSR(PAT) with a reserved memory type in any entry raises #GP (APM vol. 2, 7.8.2);
    every PAT register (the one PAT, hPAT, gPAT) obeys it."""
    if not memtype.pat_valid(value):
        raise GeneralProtection(f"WRMSR PAT: reserved memory type in {value:#018x}")


class MsrFile:
    """Index → owner. Extensions add owners (e.g. the SVM MSRs) with `register`."""

    def __init__(self, cpu: CpuMsrs, tsc: Callable[[], int], set_tsc: Writer,
                 maxphyaddr: int) -> None:
        self.cpu = cpu
        self.maxphyaddr = maxphyaddr
        self.owners: dict[int, MsrOwner] = {}
        # MSRs whose reader is the CPU's own copy (a C fast path may read it there), and a
        # count of registrations that changes whenever any owner does.
        self.cpu_backed: set[int] = set()
        self.generation = 0
        self.efer_writable = EFER_SCE | EFER_LME | EFER_NXE | EFER_FFXSR
        self.efer_write_hooks: list[Callable[[int, int], None]] = []
        self.values: dict[int, int] = {MSR_PAT: PAT_POWER_ON}   # APIC_BASE: the APIC (irq.py)
        self.register(MSR_TSC, tsc, set_tsc)
        self.register(MSR_EFER, lambda: cpu.read(MSR_EFER), self._write_efer)
        self.register(MSR_PAT, lambda: self.values[MSR_PAT], self._write_pat)
        for index in (MSR_STAR, MSR_SYSENTER_CS):
            self._cpu_backed(index, lambda v: True)
        for index in (MSR_LSTAR, MSR_CSTAR, MSR_FS_BASE, MSR_GS_BASE, MSR_KERNEL_GS_BASE,
                      MSR_SYSENTER_ESP, MSR_SYSENTER_EIP):
            self._cpu_backed(index, is_canonical)
        self._cpu_backed(MSR_SFMASK, lambda v: v >> 32 == 0)
        self._cpu_backed(MSR_TSC_AUX, lambda v: v >> 32 == 0)
        self._install_mtrrs()

    # ---- registry -------------------------------------------------------------------------
    def register(self, index: int, read: Reader, write: Writer) -> None:
        self.owners[index] = MsrOwner(read, write)
        self.cpu_backed.discard(index)
        self.generation += 1

    def rdmsr(self, index: int) -> int:
        owner = self.owners.get(index)
        if owner is None:
            raise GeneralProtection(f"RDMSR of unknown MSR {index:#x}")
        return owner.read()

    def wrmsr(self, index: int, value: int) -> None:
        owner = self.owners.get(index)
        if owner is None:
            raise GeneralProtection(f"WRMSR to unknown MSR {index:#x}")
        owner.write(value)

    # ---- owners ----------------------------------------------------------------------------
    def _cpu_backed(self, index: int, valid: Callable[[int], bool]) -> None:
        def write(v: int) -> None:
            if not valid(v):
                raise GeneralProtection(f"WRMSR {index:#x}: value {v:#x} is not allowed")
            self.cpu.write(index, v)
        self.register(index, lambda: self.cpu.read(index), write)
        self.cpu_backed.add(index)

    def _stored(self, index: int, initial: int, valid: Callable[[int], bool]) -> None:
        self.values[index] = initial

        def write(v: int) -> None:
            if not valid(v):
                raise GeneralProtection(f"WRMSR {index:#x}: reserved bits in {v:#x}")
            self.values[index] = v
        self.register(index, lambda: self.values[index], write)

    def _write_efer(self, value: int) -> None:
        old = self.cpu.read(MSR_EFER)
        if value & ~(self.efer_writable | EFER_LMA):
            raise GeneralProtection(f"WRMSR EFER: reserved bits in {value:#x}")
        # LMA is read-only: the write keeps the current LMA.
        value = (value & ~EFER_LMA) | (old & EFER_LMA)
        if (value ^ old) & EFER_LME and old & EFER_LMA:
            raise GeneralProtection("WRMSR EFER: LME changed while paging is enabled in long mode")
        for hook in self.efer_write_hooks:
            hook(old, value)
        self.cpu.write(MSR_EFER, value)

    def _write_pat(self, value: int) -> None:
        check_pat_write(value)
        self.values[MSR_PAT] = value

    def _install_mtrrs(self) -> None:
        self.values[MSR_MTRRCAP] = memtype.MTRRCAP_DEFAULT
        self.register(MSR_MTRRCAP, lambda: self.values[MSR_MTRRCAP], self._read_only(MSR_MTRRCAP))
        for index in memtype.MTRR_MSRS:
            if index == MSR_MTRRCAP:
                continue
            self._stored(index, 0, lambda v, i=index: memtype.mtrr_msr_valid(i, v, self.maxphyaddr))

    @staticmethod
    def _read_only(index: int) -> Writer:
        def write(v: int) -> None:
            raise GeneralProtection(f"WRMSR to read-only MSR {index:#x}")
        return write

    # ---- views used by memory-type queries -------------------------------------------------
    def mtrr_values(self) -> dict[int, int]:
        return {i: self.values[i] for i in memtype.MTRR_MSRS}
