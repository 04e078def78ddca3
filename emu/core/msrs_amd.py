"""The model-specific registers of the AMD processor svmemu presents, one table.

Every MSR a guest can reach is listed here with its APM name, its reference, and the rule the
hardware applies to a write; anything not listed raises #GP, as an AMD processor does for an
index it does not implement (Intel-only MSRs such as IA32_PLATFORM_ID 0x17,
IA32_FEATURE_CONTROL 0x3A or IA32_MISC_ENABLE 0x1A0 among them). References are to the AMD64
Architecture Programmer's Manual vol. 2 (System Programming), "APM 2", and its appendix A
"MSR Cross-Reference".

Entries of kind OWNED are implemented elsewhere (Unicorn's CPU state, the MTRR/PAT file, the
APIC, the SVM extension) and listed here so the table is the one place that says which MSRs
exist; entries of kind STORED are registers whose whole architectural effect is the value they
hold in this machine (no cache, no pins, no microcode), validated here. A few registers hold
bits that would change execution in ways svmemu does not model (branch recording, branch
single-step): a write setting such a bit stops the run with "unsupported:" instead of being
taken silently.

Presence follows CPUID, so a model that does not advertise a feature does not have its MSRs:
PerfCtrExtCore (CPUID 8000_0001 ECX[23]) for the core performance counters, the speculation
controls (CPUID 8000_0008 EBX) for SPEC_CTRL/PRED_CMD, TscRateMsr (CPUID 8000_000A EDX[4]) for
TSC_RATIO, XSAVES (CPUID 0D.1 EAX[3]) for XSS, MCA (CPUID 1 EDX[14]) for the machine-check
MSRs.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from emu.arch.bits import EFER_FFXSR, EFER_LMA, EFER_LME, EFER_NXE, EFER_SCE, EFER_SVME
from emu.errors import Unsupported
from emu.arch.msrs import (  # noqa: F401 (the indices, as the APM names them)
    MSR_TSC, MSR_APIC_BASE, MSR_SPEC_CTRL, MSR_PRED_CMD, MSR_PATCH_LEVEL, MSR_MTRRCAP,
    MSR_SYSENTER_CS, MSR_SYSENTER_ESP, MSR_SYSENTER_EIP, MSR_MCG_CAP, MSR_MCG_STATUS, MSR_MCG_CTL,
    MSR_DEBUGCTL, MSR_LAST_BRANCH_FROM_IP, MSR_LAST_BRANCH_TO_IP, MSR_LAST_EXCEPTION_FROM_IP,
    MSR_LAST_EXCEPTION_TO_IP, MSR_PAT, MSR_MTRR_DEF_TYPE, MSR_MC0_CTL, MSR_XSS, MSR_EFER, MSR_STAR,
    MSR_LSTAR, MSR_CSTAR, MSR_SFMASK, MSR_FS_BASE, MSR_GS_BASE, MSR_KERNEL_GS_BASE, MSR_TSC_AUX,
    MSR_TSC_RATIO, MSR_PERF_CTL0, MSR_PERF_CTR0, MSR_SYSCFG, MSR_HWCR, MSR_NB_CFG, MSR_VM_CR, MSR_VM_HSAVE_PA,
    MSR_CORE_PERF_CTL0, MSR_PKRS,
)

from emu.core.msr import GeneralProtection, MsrFile

if TYPE_CHECKING:
    from emu.core.cpuid import Cpuid

LEGACY_PERF_COUNTERS = 4
CORE_PERF_COUNTERS = 6
PERF_CTR_WIDTH = 48                    # counters are 48 bits wide (APM 2, 13.2.1)
PERF_CTR_MASK = (1 << PERF_CTR_WIDTH) - 1
MC_BANKS = 10                          # MCG_CAP.Count, as QEMU's pc machine reports

# PerfEvtSeln (APM 2, 13.2.1.1): EventSelect[7:0], UnitMask, USR, OS, Edge, INT, EN, INV,
# CntMask, EventSelect[11:8], GuestOnly, HostOnly. Bits 19, 21, 39:36 and 63:42 are reserved.
PERF_CTL_VALID = 0xFFFFFFFF & ~((1 << 19) | (1 << 21)) | (0xF << 32) | (3 << 40)
# NB_CFG: only EnableCf8ExtCfg (bit 46), which Linux sets on every AMD CPU from family 10h:
# CONFIG_ADDRESS bits 27:24 then extend the register number (emu/core/devices/pci.py).
NB_CFG_ENABLE_CF8_EXT_CFG = 1 << 46
# DebugCtl (APM 2, 13.1.1.6): LBR, BTF, PB0-PB3; 63:6 reserved.
DEBUGCTL_LBR = 1 << 0
DEBUGCTL_BTF = 1 << 1
DEBUGCTL_VALID = 0x3F
# MCG_CAP (APM 2, 9.3.1): Count in 7:0, MCG_CTL_P in 8.
MCG_CTL_P = 1 << 8
MCG_STATUS_VALID = 0x7                 # RIPV, EIPV, MCIP
# HWCR (APM 2, A.? "Hardware Configuration Register"): the bits whose effect this machine has
# (nothing: no TLB/cache/pin to act on), the ones it does not model, and read-only TscFreqSel.
HWCR_SMMLOCK = 1 << 0
HWCR_TLBCACHEDIS = 1 << 3
HWCR_INVDWBINVD = 1 << 4
HWCR_IGNNE_EM = 1 << 8
HWCR_MONMWAITDIS = 1 << 9
HWCR_MONMWAITUSEREN = 1 << 10
HWCR_WRAP32DIS = 1 << 17
HWCR_MCSTATUSWREN = 1 << 18
HWCR_IOCFGGPFAULT = 1 << 20
HWCR_TSCFREQSEL = 1 << 24
HWCR_CPBDIS = 1 << 25
HWCR_IRPERFEN = 1 << 30
HWCR_NO_EFFECT = (HWCR_SMMLOCK | HWCR_TLBCACHEDIS | HWCR_INVDWBINVD | HWCR_IGNNE_EM
                  | HWCR_MCSTATUSWREN | HWCR_CPBDIS)
HWCR_NOT_MODELLED = (HWCR_MONMWAITDIS | HWCR_MONMWAITUSEREN | HWCR_WRAP32DIS | HWCR_IOCFGGPFAULT
                     | HWCR_IRPERFEN)
HWCR_RESET = HWCR_TSCFREQSEL
# SYSCFG (APM 2, 7.9.1): MtrrFixDramEn, MtrrFixDramModEn, MtrrVarDramEn, MtrrTom2En,
# Tom2ForceMemTypeWB. SMEE (23) and the SEV-SNP bits need features this model lacks: reserved.
SYSCFG_MTRR_VAR_DRAM_EN = 1 << 20
SYSCFG_VALID = 0x1F << 18
# SPEC_CTRL (AMD "Speculative execution" controls, APM 2, 3.2.9): IBRS, STIBP, SSBD.
SPEC_CTRL_VALID = 0x7
PRED_CMD_IBPB = 1 << 0
# TSC_RATIO (APM 2, 15.30.5): 8.32 fixed point, 63:40 reserved; reset 1.0.
TSC_RATIO_VALID = (1 << 40) - 1
TSC_RATIO_RESET = 1 << 32

# CPUID bits that make MSRs present (APM 3, appendix E).
CPUID_1_EDX_MCA = 1 << 14
CPUID_80000001_ECX_PERFCTREXTCORE = 1 << 23
CPUID_80000008_EBX_IBPB = 1 << 12
CPUID_80000008_EBX_IBRS = 1 << 14
CPUID_80000008_EBX_STIBP = 1 << 15
CPUID_80000008_EBX_SSBD = 1 << 24
CPUID_8000000A_EDX_TSC_RATE_MSR = 1 << 4
CPUID_0D_1_EAX_XSAVES = 1 << 3

OWNED, STORED = "owned", "stored"

Present = Callable[["Cpuid"], bool]
Check = Callable[[int], str | None]      # None: the write is allowed; else why it #GPs


def _always(_: "Cpuid") -> bool:
    return True


def _cpuid_bit(leaf: int, reg: int, bit: int, subleaf: int = 0) -> Present:
    return lambda cpuid: bool(cpuid.query(leaf, subleaf)[reg] & bit)


_EAX, _EBX, _ECX, _EDX = range(4)
_has_mca = _cpuid_bit(1, _EDX, CPUID_1_EDX_MCA)
_has_core_perf = _cpuid_bit(0x80000001, _ECX, CPUID_80000001_ECX_PERFCTREXTCORE)


def _has_spec_ctrl(cpuid: "Cpuid") -> bool:
    return bool(cpuid.query(0x80000008, 0)[_EBX]
                & (CPUID_80000008_EBX_IBRS | CPUID_80000008_EBX_STIBP | CPUID_80000008_EBX_SSBD))


class MsrSpec:
    __slots__ = ("index", "name", "ref", "kind", "reset", "valid", "present", "check",
                 "read_only", "write_only", "mask_on_write")

    def __init__(self, index: int, name: str, ref: str, kind: str = STORED, reset: int = 0,
                 valid: int = (1 << 64) - 1, present: Present = _always,
                 check: Check | None = None, read_only: bool = False, write_only: bool = False,
                 mask_on_write: int | None = None) -> None:
        self.index = index
        self.name = name
        self.ref = ref
        self.kind = kind
        self.reset = reset
        self.valid = valid                  # bits a write may set; others #GP (STORED)
        self.present = present
        self.check = check                  # extra write rule (STORED)
        self.read_only = read_only
        self.write_only = write_only
        self.mask_on_write = mask_on_write  # a write keeps only these bits (no #GP), e.g. counters


def _mc_ctl_check(v: int) -> str | None:
    # MCi_CTL and MCG_CTL take all zeros or all ones (APM 2, 9.3.2.1), as KVM also enforces.
    return None if v in (0, (1 << 64) - 1) else "only 0 or all ones may be written"


# The microcode level QEMU reports for its AMD models: a guest that checks it against its errata
# lists (Xen, Linux) sees the same level on svmemu as on QEMU, not a missing update.
QEMU_AMD_PATCH_LEVEL = 0x01000065


def _table() -> list[MsrSpec]:
    t = [
        MsrSpec(MSR_TSC, "TSC", "APM 2, 13.2.4", OWNED),
        MsrSpec(MSR_APIC_BASE, "APIC_BASE", "APM 2, 16.3.1", OWNED),
        MsrSpec(MSR_SPEC_CTRL, "SPEC_CTRL", "APM 2, 3.2.9", valid=SPEC_CTRL_VALID,
                present=_has_spec_ctrl),
        MsrSpec(MSR_PRED_CMD, "PRED_CMD", "APM 2, 3.2.9", valid=PRED_CMD_IBPB,
                present=_cpuid_bit(0x80000008, _EBX, CPUID_80000008_EBX_IBPB), write_only=True),
        MsrSpec(MSR_PATCH_LEVEL, "PATCH_LEVEL", "APM 2, A.1 (microcode patch level)",
                reset=QEMU_AMD_PATCH_LEVEL, read_only=True),
        MsrSpec(MSR_MTRRCAP, "MTRRcap", "APM 2, 7.7.1", OWNED),
        MsrSpec(MSR_SYSENTER_CS, "SYSENTER_CS", "APM 2, 6.1.2", OWNED),
        MsrSpec(MSR_SYSENTER_ESP, "SYSENTER_ESP", "APM 2, 6.1.2", OWNED),
        MsrSpec(MSR_SYSENTER_EIP, "SYSENTER_EIP", "APM 2, 6.1.2", OWNED),
        MsrSpec(MSR_MCG_CAP, "MCG_CAP", "APM 2, 9.3.1.1", reset=MCG_CTL_P | MC_BANKS,
                read_only=True, present=_has_mca),
        MsrSpec(MSR_MCG_STATUS, "MCG_STATUS", "APM 2, 9.3.1.2", valid=MCG_STATUS_VALID,
                present=_has_mca),
        MsrSpec(MSR_MCG_CTL, "MCG_CTL", "APM 2, 9.3.1.3", reset=(1 << 64) - 1,
                check=_mc_ctl_check, present=_has_mca),
        MsrSpec(MSR_DEBUGCTL, "DebugCtl", "APM 2, 13.1.1.6", valid=DEBUGCTL_VALID,
                check=_debugctl_check),
        MsrSpec(MSR_LAST_BRANCH_FROM_IP, "LastBranchFromIP", "APM 2, 13.1.1.7", read_only=True),
        MsrSpec(MSR_LAST_BRANCH_TO_IP, "LastBranchToIP", "APM 2, 13.1.1.7", read_only=True),
        MsrSpec(MSR_LAST_EXCEPTION_FROM_IP, "LastIntFromIP", "APM 2, 13.1.1.7", read_only=True),
        MsrSpec(MSR_LAST_EXCEPTION_TO_IP, "LastIntToIP", "APM 2, 13.1.1.7", read_only=True),
        MsrSpec(MSR_PAT, "PAT", "APM 2, 7.8.1", OWNED),
        MsrSpec(MSR_MTRR_DEF_TYPE, "MTRRdefType", "APM 2, 7.7.1", OWNED),
        MsrSpec(MSR_PKRS, "IA32_PKRS", "Intel SDM vol. 3, 4.6.2 (PKS: no AMD part has it)",
                OWNED),
        MsrSpec(MSR_XSS, "XSS", "APM 2, 11.5.3", valid=0,
                present=_cpuid_bit(0xD, _EAX, CPUID_0D_1_EAX_XSAVES, subleaf=1)),
        MsrSpec(MSR_EFER, "EFER", "APM 2, 3.1.7", OWNED),
        MsrSpec(MSR_STAR, "STAR", "APM 2, 6.1.1", OWNED),
        MsrSpec(MSR_LSTAR, "LSTAR", "APM 2, 6.1.1", OWNED),
        MsrSpec(MSR_CSTAR, "CSTAR", "APM 2, 6.1.1", OWNED),
        MsrSpec(MSR_SFMASK, "SFMASK", "APM 2, 6.1.1", OWNED),
        MsrSpec(MSR_FS_BASE, "FS.base", "APM 2, 4.5.3", OWNED),
        MsrSpec(MSR_GS_BASE, "GS.base", "APM 2, 4.5.3", OWNED),
        MsrSpec(MSR_KERNEL_GS_BASE, "KernelGSbase", "APM 2, 4.5.3", OWNED),
        MsrSpec(MSR_TSC_AUX, "TSC_AUX", "APM 2, 13.2.4", OWNED),
        MsrSpec(MSR_TSC_RATIO, "TSC_RATIO", "APM 2, 15.30.5", reset=TSC_RATIO_RESET,
                valid=TSC_RATIO_VALID,
                present=_cpuid_bit(0x8000000A, _EDX, CPUID_8000000A_EDX_TSC_RATE_MSR)),
        MsrSpec(MSR_SYSCFG, "SYSCFG", "APM 2, 7.9.1", reset=SYSCFG_MTRR_VAR_DRAM_EN,
                valid=SYSCFG_VALID),
        MsrSpec(MSR_HWCR, "HWCR", "APM 2, A.2 (HWCR)", reset=HWCR_RESET, check=_hwcr_check),
        MsrSpec(MSR_NB_CFG, "NB_CFG", "BKDG fam 10h, MSRC001_001F", valid=NB_CFG_ENABLE_CF8_EXT_CFG),
        MsrSpec(MSR_VM_CR, "VM_CR", "APM 2, 15.30.1", OWNED),
        MsrSpec(MSR_VM_HSAVE_PA, "VM_HSAVE_PA", "APM 2, 15.30.4", OWNED),
    ]
    for i in range(MC_BANKS):
        base = MSR_MC0_CTL + 4 * i
        t += [MsrSpec(base, f"MC{i}_CTL", "APM 2, 9.3.2.1", reset=(1 << 64) - 1,
                      check=_mc_ctl_check, present=_has_mca),
              MsrSpec(base + 1, f"MC{i}_STATUS", "APM 2, 9.3.2.2", present=_has_mca,
                      check=None),
              MsrSpec(base + 2, f"MC{i}_ADDR", "APM 2, 9.3.2.3", present=_has_mca),
              MsrSpec(base + 3, f"MC{i}_MISC", "APM 2, 9.3.2.4", present=_has_mca)]
    for n in range(LEGACY_PERF_COUNTERS):
        t += [MsrSpec(MSR_PERF_CTL0 + n, f"PerfEvtSel{n}", "APM 2, 13.2.1.1",
                      valid=PERF_CTL_VALID, check=_perf_ctl_check),
              MsrSpec(MSR_PERF_CTR0 + n, f"PerfCtr{n}", "APM 2, 13.2.1.2",
                      mask_on_write=PERF_CTR_MASK)]
    for n in range(CORE_PERF_COUNTERS):
        t += [MsrSpec(MSR_CORE_PERF_CTL0 + 2 * n, f"PerfEvtSel{n}", "APM 2, 13.2.1.1",
                      valid=PERF_CTL_VALID, check=_perf_ctl_check, present=_has_core_perf),
              MsrSpec(MSR_CORE_PERF_CTL0 + 2 * n + 1, f"PerfCtr{n}", "APM 2, 13.2.1.2",
                      mask_on_write=PERF_CTR_MASK, present=_has_core_perf)]
    return t


PERF_CTL_EN = 1 << 22


def _perf_ctl_check(v: int) -> str | None:
    """Any value without reserved bits is stored; which enabled events are counted (and which
    stop the run) is emu/core/perfctr.py's part."""
    return None


def _debugctl_check(v: int) -> str | None:
    """LBR records branches (emu/core/lbr.py). BTF (single-step on branches) changes what the
    CPU traps, which svmemu does not model. The performance-monitor pin bits have nothing to
    drive."""
    if v & DEBUGCTL_BTF:
        raise Unsupported(f"DebugCtl {v:#x}: branch single-step (BTF) is not modelled")
    return None


def _hwcr_check(v: int) -> str | None:
    if v & ~(HWCR_NO_EFFECT | HWCR_NOT_MODELLED | HWCR_TSCFREQSEL):
        return "reserved bits"
    if v & HWCR_NOT_MODELLED:
        raise Unsupported(f"HWCR bits {v & HWCR_NOT_MODELLED:#x} are not modelled")
    return None


TABLE: tuple[MsrSpec, ...] = tuple(_table())
BY_INDEX: dict[int, MsrSpec] = {s.index: s for s in TABLE}
# The core counters alias the legacy ones: PerfEvtSel0-3/PerfCtr0-3 at 0xC0010000-7 are
# PerfEvtSel0-3/PerfCtr0-3 at 0xC0010200-7 (APM 2, 13.2.1).
ALIASES: dict[int, int] = {}
for _n in range(LEGACY_PERF_COUNTERS):
    ALIASES[MSR_CORE_PERF_CTL0 + 2 * _n] = MSR_PERF_CTL0 + _n
    ALIASES[MSR_CORE_PERF_CTL0 + 2 * _n + 1] = MSR_PERF_CTR0 + _n


# EFER bits and the CPUID feature that makes each one writable (APM 2, 3.1.7).
EFER_BY_FEATURE = {
    EFER_SCE: (0x80000001, _EDX, 1 << 11),     # SYSCALL
    EFER_LME: (0x80000001, _EDX, 1 << 29),     # LM
    EFER_NXE: (0x80000001, _EDX, 1 << 20),     # NX
    EFER_SVME: (0x80000001, _ECX, 1 << 2),     # SVM
    EFER_FFXSR: (0x80000001, _EDX, 1 << 25),   # FFXSR
}


CPUID_80000001_EDX_LM = 1 << 29


def efer_allowed(cpuid: "Cpuid") -> int:
    """The EFER bits this model has: those of its features, and LMA (set by the CPU)."""
    bits = EFER_LMA
    for bit, (leaf, reg, feature) in EFER_BY_FEATURE.items():
        if cpuid.query(leaf, 0)[reg] & feature:
            bits |= bit
    return bits


def install(msrs: "MsrFile", cpuid: "Cpuid") -> None:
    """Register an owner for every STORED entry. Presence is asked of CPUID at each access, so
    features that extensions add to CPUID later (SVM's TscRateMsr) count. EFER bits of features
    the model hides raise #GP like reserved ones."""
    for spec in TABLE:
        if spec.kind != STORED:
            continue
        msrs.register(spec.index, *_accessors(msrs, cpuid, spec))

    def efer_gate(old: int, new: int) -> None:
        for bit, (leaf, reg, feature) in EFER_BY_FEATURE.items():
            if new & bit and not old & bit and not cpuid.query(leaf, 0)[reg] & feature:
                raise GeneralProtection(f"WRMSR EFER: bit {bit:#x} of a feature this model "
                                        "does not have")
    msrs.efer_write_hooks.insert(0, efer_gate)


def _accessors(msrs: "MsrFile", cpuid: "Cpuid", spec: MsrSpec):
    slot = ALIASES.get(spec.index, spec.index)
    base = BY_INDEX[slot]

    def value() -> int:
        return msrs.values.get(slot, base.reset)

    def read() -> int:
        if not spec.present(cpuid):
            raise GeneralProtection(f"RDMSR {spec.name} ({spec.index:#x}): not on this model")
        if spec.write_only:
            raise GeneralProtection(f"RDMSR {spec.name} ({spec.index:#x}): write-only")
        return value()

    def write(v: int) -> None:
        if not spec.present(cpuid):
            raise GeneralProtection(f"WRMSR {spec.name} ({spec.index:#x}): not on this model")
        if spec.read_only:
            raise GeneralProtection(f"WRMSR {spec.name} ({spec.index:#x}): read-only")
        if spec.mask_on_write is not None:
            v &= spec.mask_on_write
        if v & ~spec.valid:
            raise GeneralProtection(f"WRMSR {spec.name} ({spec.index:#x}): reserved bits in "
                                    f"{v:#x}")
        why = spec.check(v) if spec.check is not None else None
        if why is None and spec.index in _MC_STATUS and v:
            why = _mc_status_check(msrs)
        if why is not None:
            raise GeneralProtection(f"WRMSR {spec.name} ({spec.index:#x}) {v:#x}: {why}")
        if spec.index == MSR_HWCR:
            v |= HWCR_TSCFREQSEL          # read-only 1
        if not spec.write_only:
            msrs.values[slot] = v
    return read, write


_MC_STATUS = frozenset(MSR_MC0_CTL + 4 * i + 1 for i in range(MC_BANKS))


def _mc_status_check(msrs: "MsrFile") -> str | None:
    """MCi_STATUS takes only 0 unless HWCR.McStatusWrEn is set (APM 2, 9.3.2.2)."""
    hwcr = msrs.values.get(MSR_HWCR, HWCR_RESET)
    return None if hwcr & HWCR_MCSTATUSWREN else "non-zero write with HWCR.McStatusWrEn clear"
