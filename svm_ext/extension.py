"""Nested SVM as an extension of the machine: the guest-visible SVM identity and MSRs.

This is where the machine learns that its CPU has SVM: CPUID bits, EFER.SVME, VM_CR and
VM_HSAVE_PA. The world switch itself (VMRUN and #VMEXIT) is registered here too as it lands.
"""
from __future__ import annotations

from emu import hostvm
from emu.cpuid import CPUID_80000001_ECX_SVM, LEAF_SVM_FEATURES
from emu.errors import Unsupported
from emu.extension import Extension
from emu.interrupts import UD
from emu.machine import Machine
from emu.msr import EFER_SVME, GeneralProtection

MSR_VM_CR = 0xC0010114
MSR_VM_HSAVE_PA = 0xC0010117
VM_CR_DPD = 1 << 0
VM_CR_R_INIT = 1 << 1
VM_CR_DIS_A20M = 1 << 2
VM_CR_LOCK = 1 << 3
VM_CR_SVMDIS = 1 << 4
VM_CR_WRITABLE = VM_CR_DPD | VM_CR_R_INIT | VM_CR_DIS_A20M | VM_CR_LOCK | VM_CR_SVMDIS

SVM_REVISION = 1
SVM_NUM_ASIDS = 16
SVM_FEATURE_NP = 1 << 0


class SvmExtension(Extension):
    name = "svm"

    def __init__(self) -> None:
        self.vm_cr = 0
        self.hsave_pa = 0

    def attach(self, machine: Machine) -> None:
        self.machine = machine
        machine.cpuid.set_bits(0x80000001, 2, CPUID_80000001_ECX_SVM)
        machine.cpuid.set_leaf(LEAF_SVM_FEATURES, 0, (SVM_REVISION, SVM_NUM_ASIDS, 0, SVM_FEATURE_NP))
        machine.msrs.efer_writable |= EFER_SVME
        machine.msrs.efer_write_hooks.append(self._efer_write)
        machine.msrs.register(MSR_VM_CR, lambda: self.vm_cr, self._write_vm_cr)
        machine.msrs.register(MSR_VM_HSAVE_PA, lambda: self.hsave_pa, self._write_hsave_pa)
        for code in (hostvm.VMEXIT_VMRUN, hostvm.VMEXIT_VMLOAD, hostvm.VMEXIT_VMSAVE,
                     hostvm.VMEXIT_STGI, hostvm.VMEXIT_CLGI, hostvm.VMEXIT_INVLPGA,
                     hostvm.VMEXIT_SKINIT):
            machine.register_exit(code, self._not_yet)
        # VMMCALL that no hypervisor intercepts is #UD (APM vol. 3, VMMCALL).
        machine.register_exit(hostvm.VMEXIT_VMMCALL, lambda code: machine.raise_exception(UD))

    def _efer_write(self, old: int, new: int) -> None:
        if new & EFER_SVME and not old & EFER_SVME and self.vm_cr & VM_CR_SVMDIS:
            raise GeneralProtection("EFER.SVME set while VM_CR.SVMDIS is 1")

    def _write_vm_cr(self, value: int) -> None:
        if value & ~VM_CR_WRITABLE:
            raise GeneralProtection(f"WRMSR VM_CR: reserved bits in {value:#x}")
        if self.vm_cr & VM_CR_LOCK and (value ^ self.vm_cr) & (VM_CR_SVMDIS | VM_CR_LOCK):
            raise GeneralProtection("WRMSR VM_CR: SVMDIS and LOCK are locked")
        self.vm_cr = value

    def _write_hsave_pa(self, value: int) -> None:
        if value & 0xFFF or value >> hostvm.MAXPHYADDR:
            raise GeneralProtection(f"WRMSR VM_HSAVE_PA: {value:#x} is not a 4 KiB-aligned "
                                    "physical address")
        self.hsave_pa = value

    def _not_yet(self, code: int) -> None:
        names = {hostvm.VMEXIT_VMRUN: "VMRUN", hostvm.VMEXIT_VMLOAD: "VMLOAD",
                 hostvm.VMEXIT_VMSAVE: "VMSAVE", hostvm.VMEXIT_STGI: "STGI",
                 hostvm.VMEXIT_CLGI: "CLGI", hostvm.VMEXIT_INVLPGA: "INVLPGA",
                 hostvm.VMEXIT_SKINIT: "SKINIT"}
        raise Unsupported(f"{names[code]} (nested SVM world switches are not implemented yet)")
