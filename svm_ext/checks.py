"""The checks VMRUN makes on vmcb12 before it loads anything (AMD APM vol. 2).

A VMCB that fails one of them makes VMRUN end at once with EXITCODE = VMEXIT_INVALID; no guest
instruction runs. Each rule below is a small pure predicate, ``rule(cache, caps, host_cr0) ->
bool``, True when the VMCB *breaks* the rule. The predicate's docstring is the explanation the user
sees in the trace when VMRUN fails, so it is written for the person who wrote the hypervisor, and
names where the APM states it. Anything past the first line is our reading of the APM, for the
maintainer.

The sources, in order:
  §15.5.1 "Canonicalization and Consistency Checks" (the list of illegal guest state),
  §15.20  "Event Injection" (illegal EVENTINJ),
  §15.25.3 and §15.25.4 (nested paging: hCR0.PG, nCR3, G_PAT).

``host_cr0`` is L1's CR0 at the VMRUN (the APM's hCR0), which one rule needs; pass None when it
is not known and that rule is skipped.

Where the APM is silent we do not invent a check. Two things one might expect checked that the APM
does not list, and that we therefore do NOT reject:
  * NP_ENABLE set on a CPU that does not report nested paging. No VMEXIT_INVALID is documented;
    the bit is ignored (``nested_paging_enabled`` is what the rest of svm_ext must use).
  * Segment attribute combinations other than CS.L+CS.D in long mode: VMRUN does not check them.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

from emu.core.control_regs import cr4_allowed
from emu.core.cpuid import Cpuid
from emu.core.msrs_amd import efer_allowed
from emu.arch.bits import (
    CR0_CD,
    CR0_NW,
    CR0_PE,
    CR0_PG,
    CR4_PAE,
    EFER_LMA,
    EFER_LME,
    EFER_SVME,
)
from emu.arch.memtype import PAT_TYPES
from emu.arch.vmcb import (
    EVENTINJ_TYPE_EXCEPTION,
    EVENTINJ_TYPE_INTR,
    EVENTINJ_TYPE_NMI,
    EVENTINJ_TYPE_SOFT_INT,
    EVENTINJ_V,
    BITFIELDS,
    INTERCEPT_NMI,
    INTERCEPT_VMRUN,
    IOPM_EXTENT,
    MSRPM_SIZE,
    SEG_ATTR_DB,
    SEG_ATTR_L,
    Vmcb12Cache,
)

__all__ = [
    "HostCaps", "Rule", "RULES", "G_PAT_RULE", "RULES_WITH_G_PAT", "run_checks", "passes_all",
    "all_failures", "g_pat_check", "nested_paging_enabled", "g_pat_valid", "pat_type_valid",
]

# Without a machine (unit tests of the checks), the CPU L1 sees is the default model with SVM:
# the CR4 and EFER bits are that model's, from the one place each is decided (MOV CR4's checks
# and the MSR table), so VMRUN can never accept a bit the CPU would refuse or the reverse.
CR4_DEFAULT_SUPPORTED = cr4_allowed(Cpuid())
EFER_DEFAULT_SUPPORTED = efer_allowed(Cpuid()) | EFER_SVME

# Vectors the APM defines as exceptions (Table 8-1): #DE #DB #BP #OF #BR #UD #NM #DF #TS #NP #SS
# #GP #PF #MF #AC #MC #XF #CP #HV #VC #SX. Not exceptions: 2 (NMI is an interrupt), and the
# reserved 9, 15, 20, 22-27, 31.
EXCEPTION_VECTORS_DEFINED = sum(
    1 << v for v in (0, 1, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 14, 16, 17, 18, 19, 21, 28, 29, 30)
)
V_NMI_ENABLE = next(1 << shift for name, _, shift, _ in BITFIELDS if name == "v_nmi_enable")
_VEC_OF = 4
_VEC_BR = 5
_RESERVED_EVENT_TYPES = frozenset({1, 5, 6, 7})
assert not _RESERVED_EVENT_TYPES & {EVENTINJ_TYPE_INTR, EVENTINJ_TYPE_NMI,
                                     EVENTINJ_TYPE_EXCEPTION, EVENTINJ_TYPE_SOFT_INT}

_PAGE_MASK = ~0xFFF
_U64 = (1 << 64) - 1


class HostCaps:
    """What the CPU that L1 sees supports. The checks depend on it (MAXPHYADDR, the CR4/EFER bits
    that exist), never on what L0 happens to be doing."""

    __slots__ = ("maxphyaddr", "long_mode", "npt", "cr4_supported", "efer_supported",
                 "exception_vectors", "vnmi", "gmet")

    def __init__(self, maxphyaddr: int = 40, long_mode: bool = True, npt: bool = True,
                 cr4_supported: int = CR4_DEFAULT_SUPPORTED,
                 efer_supported: int = EFER_DEFAULT_SUPPORTED,
                 exception_vectors: int = EXCEPTION_VECTORS_DEFINED, vnmi: bool = False,
                 gmet: bool = False) -> None:
        self.maxphyaddr = maxphyaddr        # CPUID Fn8000_0008_EAX[7:0]; QEMU TCG's default
        self.long_mode = long_mode          # CPUID Fn8000_0001_EDX[LM]
        self.npt = npt                      # CPUID Fn8000_000A_EDX[NP] as reported to L1
        self.cr4_supported = cr4_supported
        self.efer_supported = efer_supported
        self.exception_vectors = exception_vectors  # bit n: vector n may be injected as TYPE 3
        self.vnmi = vnmi                    # CPUID Fn8000_000A_EDX[VNMI] as reported to L1
        self.gmet = gmet                    # CPUID Fn8000_000A_EDX[GMET] as reported to L1

    def replace(self, **changes: int) -> "HostCaps":
        """A copy with the named capabilities changed."""
        fields = {name: getattr(self, name) for name in self.__slots__}
        fields.update(changes)
        return HostCaps(**fields)

    def __repr__(self) -> str:
        return "HostCaps(" + ", ".join(f"{n}={getattr(self, n)!r}" for n in self.__slots__) + ")"


Predicate = Callable[[Vmcb12Cache, HostCaps, "int | None"], bool]


class Rule(NamedTuple):
    """One consistency check: its short name (for tests and filters), the predicate, and the
    sentence the user sees."""

    name: str
    broken: Predicate
    explanation: str


def _long_mode(c: Vmcb12Cache) -> bool:
    """The guest will run in long mode: EFER.LMA is the product of EFER.LME and CR0.PG, and
    VMRUN derives it from them rather than trusting the LMA bit in the VMCB."""
    return bool(c.efer & EFER_LME) and bool(c.cr0 & CR0_PG)


def nested_paging_enabled(c: Vmcb12Cache, caps: HostCaps) -> bool:
    """NP_ENABLE counts only on a CPU that reports nested paging; elsewhere the bit is ignored
    (the APM gives no VMEXIT_INVALID for it, so neither do we)."""
    return caps.npt and bool(c.nested_ctl & 1)


def gmet_enabled(c: Vmcb12Cache, caps: HostCaps) -> bool:
    """GMET_ENABLE changes the nested walk, so it counts only with nested paging on and on a
    CPU that reports GMET; elsewhere the bit is ignored, as NP_ENABLE is."""
    return caps.gmet and nested_paging_enabled(c, caps) and bool(c.gmet_enable)


def pat_type_valid(t: int) -> bool:
    """PAT memory types: UC 0, WC 1, WT 4, WP 5, WB 6, UC- 7. 2 and 3 are reserved, 8+ too."""
    return t in PAT_TYPES


_PAT_RESERVED_FIELD_BITS = 0xF8F8_F8F8_F8F8_F8F8   # bits 7:3 of each PAn byte
_PAT_LOW = 0x0101_0101_0101_0101


def g_pat_valid(pat: int) -> bool:
    """All eight PA fields hold a supported type and their reserved bits are zero: the same
    answer as emu.arch.memtype.pat_valid (the WRMSR #GP rule), without a per-byte loop, because VMRUN
    asks it every time. Type 2 or 3 is the only pattern with bit 1 set and bit 2 clear, once bits
    7:3 are known zero."""
    if pat & _PAT_RESERVED_FIELD_BITS or pat >> 64:
        return False
    return not ((pat >> 1) & ~(pat >> 2) & _PAT_LOW)


# ---------------------------------------------------------------------------------------------
# The rules. Each returns True when the VMCB breaks it.
# ---------------------------------------------------------------------------------------------

def efer_svme_zero(c: Vmcb12Cache, caps: HostCaps, host_cr0: int | None) -> bool:
    """EFER.SVME is zero in the guest state (APM vol. 2 §15.5.1)."""
    return not c.efer & EFER_SVME


def cr0_nw_without_cd(c: Vmcb12Cache, caps: HostCaps, host_cr0: int | None) -> bool:
    """CR0.CD is zero while CR0.NW is set in the guest state (APM vol. 2 §15.5.1)."""
    return (c.cr0 & (CR0_CD | CR0_NW)) == CR0_NW


def cr0_high_set(c: Vmcb12Cache, caps: HostCaps, host_cr0: int | None) -> bool:
    """CR0[63:32] is not zero in the guest state (APM vol. 2 §15.5.1)."""
    return c.cr0 >> 32 != 0


def cr3_mbz_set(c: Vmcb12Cache, caps: HostCaps, host_cr0: int | None) -> bool:
    """CR3 has a must-be-zero bit set: a bit at or above the CPU's physical address width
    (MAXPHYADDR) (APM vol. 2 §15.5.1, CR3 formats in §3.1.2).

    Our reading. In every paging format the CR3 bits above the base address are MBZ; the
    long-mode figure labels 63:52 MBZ and bits 51:MAXPHYADDR cannot hold a supported address, and
    real CPUs reject bits MAXPHYADDR..63 at VMRUN in long, PAE and 2-level modes alike (the
    kvm-unit-tests svm tests run on hardware show this). The low bits are different: 11:5 and 2:0
    (long mode, PCIDE=0), 4:0 (PAE) and 11:5, 2:0 (2-level) are 'reserved', not 'MBZ', and
    hardware ignores them at VMRUN; with CR4.PCIDE=1 bits 11:0 are the PCID. So only the high
    bits are checked, whatever the mode, and also with paging off (the register is loaded either
    way)."""
    return c.cr3 >> caps.maxphyaddr != 0


def cr4_mbz_set(c: Vmcb12Cache, caps: HostCaps, host_cr0: int | None) -> bool:
    """CR4 has a must-be-zero bit set: a reserved bit or a feature this CPU does not report
    (APM vol. 2 §15.5.1).

    VMXE (bit 13) is reserved on AMD CPUs, as are bits 15, 19 and 24 up. PCIDE without long mode
    is illegal for MOV CR4 but is not on the VMRUN list, so it is not checked here."""
    return bool(c.cr4 & ~caps.cr4_supported)


def dr6_high_set(c: Vmcb12Cache, caps: HostCaps, host_cr0: int | None) -> bool:
    """DR6[63:32] is not zero in the guest state (APM vol. 2 §15.5.1)."""
    return c.dr6 >> 32 != 0


def dr7_high_set(c: Vmcb12Cache, caps: HostCaps, host_cr0: int | None) -> bool:
    """DR7[63:32] is not zero in the guest state (APM vol. 2 §15.5.1)."""
    return c.dr7 >> 32 != 0


def efer_mbz_set(c: Vmcb12Cache, caps: HostCaps, host_cr0: int | None) -> bool:
    """EFER has a must-be-zero bit set: a reserved bit or a feature this CPU does not have
    (APM vol. 2 §15.5.1).

    The EFER bits that exist here: SCE, LME, LMA, NXE, SVME, FFXSR (HostCaps.efer_supported).
    LMSLE and TCE are not implemented by this CPU, so they are MBZ like the reserved bits."""
    return bool(c.efer & ~caps.efer_supported)


def long_mode_unsupported(c: Vmcb12Cache, caps: HostCaps, host_cr0: int | None) -> bool:
    """EFER.LMA or EFER.LME is set but this CPU does not support long mode (APM vol. 2 §15.5.1)."""
    return not caps.long_mode and bool(c.efer & (EFER_LME | EFER_LMA))


def long_mode_without_pae(c: Vmcb12Cache, caps: HostCaps, host_cr0: int | None) -> bool:
    """EFER.LME and CR0.PG are both set and CR4.PAE is zero (APM vol. 2 §15.5.1)."""
    return _long_mode(c) and not c.cr4 & CR4_PAE


def long_mode_without_pe(c: Vmcb12Cache, caps: HostCaps, host_cr0: int | None) -> bool:
    """EFER.LME and CR0.PG are both set and CR0.PE is zero (APM vol. 2 §15.5.1)."""
    return _long_mode(c) and not c.cr0 & CR0_PE


def long_mode_cs_l_and_d(c: Vmcb12Cache, caps: HostCaps, host_cr0: int | None) -> bool:
    """EFER.LME, CR0.PG, CR4.PAE, CS.L and CS.D are all set: CS.L=1 with CS.D=1 is reserved in
    long mode (APM vol. 2 §15.5.1)."""
    return (_long_mode(c) and bool(c.cr4 & CR4_PAE)
            and (c.cs_attrib & (SEG_ATTR_L | SEG_ATTR_DB)) == (SEG_ATTR_L | SEG_ATTR_DB))


def vmrun_intercept_clear(c: Vmcb12Cache, caps: HostCaps, host_cr0: int | None) -> bool:
    """The VMRUN intercept bit is clear: a guest must always exit on VMRUN (APM vol. 2 §15.5.1)."""
    return not c.intercept_misc2 & INTERCEPT_VMRUN


def vnmi_without_nmi_intercept(c: Vmcb12Cache, caps: HostCaps, host_cr0: int | None) -> bool:
    """V_NMI_ENABLE is set but the NMI intercept is clear: with NMI virtualization the
    hypervisor must intercept real NMIs (APM vol. 2 §15.21.10).

    Checked only on a CPU that reports vNMI; elsewhere the bit is ignored."""
    return caps.vnmi and bool(c.vintr & V_NMI_ENABLE) and not c.intercept_misc1 & INTERCEPT_NMI


def _map_beyond(base: int, size: int, maxphyaddr: int) -> bool:
    # The low 12 bits of the base are ignored. "Extends to a physical address greater than or
    # equal to the maximum supported physical address": the maximum supported address is
    # 2^MAXPHYADDR - 1, so a map whose last byte sits there is already illegal (an 8 KiB MSRPM
    # at 2^MAXPHYADDR - 8 KiB fails VMRUN, as kvm-unit-tests' svm_guest_state_test checks).
    return _map_last_byte(base, size) >= (1 << maxphyaddr) - 1


def _map_last_byte(base: int, size: int) -> int:
    return (base & _PAGE_MASK) + size - 1


def msrpm_beyond_maxphyaddr(c: Vmcb12Cache, caps: HostCaps, host_cr0: int | None) -> bool:
    """The MSR permission map (8 KiB at MSRPM_BASE_PA) extends beyond the maximum supported
    physical address (APM vol. 2 §15.5.1).

    Checked whether or not MSR_PROT is intercepted: the APM does not make it conditional."""
    return _map_beyond(c.msrpm_base_pa, MSRPM_SIZE, caps.maxphyaddr)


def iopm_beyond_maxphyaddr(c: Vmcb12Cache, caps: HostCaps, host_cr0: int | None) -> bool:
    """The IO permission map at IOPM_BASE_PA extends beyond the maximum supported physical
    address (APM vol. 2 §15.5.1); its extent is what a port access can read (IOPM_EXTENT).

    Checked whether or not IOIO_PROT is intercepted: the APM does not make it conditional."""
    return _map_beyond(c.iopm_base_pa, IOPM_EXTENT, caps.maxphyaddr)


def asid_zero(c: Vmcb12Cache, caps: HostCaps, host_cr0: int | None) -> bool:
    """The guest ASID is zero; ASID 0 belongs to the host (APM vol. 2 §15.5.1)."""
    return c.guest_asid == 0


def eventinj_reserved_type(c: Vmcb12Cache, caps: HostCaps, host_cr0: int | None) -> bool:
    """EVENTINJ is valid but its TYPE is a reserved value; only 0 (INTR), 2 (NMI),
    3 (exception) and 4 (software interrupt) are defined (APM vol. 2 §15.20)."""
    e = c.eventinj
    return bool(e & EVENTINJ_V) and ((e >> 8) & 7) in _RESERVED_EVENT_TYPES


def eventinj_not_an_exception(c: Vmcb12Cache, caps: HostCaps, host_cr0: int | None) -> bool:
    """EVENTINJ injects an exception (TYPE 3) with a vector that is not an exception, such as 2
    (NMI), a reserved vector or one of 32 and up (APM vol. 2 §15.20).

    The valid vectors are HostCaps.exception_vectors (by default every vector the APM defines as
    an exception). NMI with a vector other than 2, and INTR/INTn with vectors below 32, are legal:
    the APM names no other illegal combination."""
    e = c.eventinj
    if not e & EVENTINJ_V or (e >> 8) & 7 != EVENTINJ_TYPE_EXCEPTION:
        return False
    return not (caps.exception_vectors >> (e & 0xFF)) & 1


def eventinj_impossible_in_64bit(c: Vmcb12Cache, caps: HostCaps, host_cr0: int | None) -> bool:
    """EVENTINJ injects #BR or #OF into a guest in 64-bit mode, where neither can happen
    (APM vol. 2 §15.20: an event impossible for the guest mode fails VMRUN).

    The APM's example is #BR; #OF is impossible for the same reason (INTO, its only source, is
    invalid in 64-bit mode, as BOUND is). 64-bit mode = long mode with CS.L=1."""
    e = c.eventinj
    if not e & EVENTINJ_V or (e >> 8) & 7 != EVENTINJ_TYPE_EXCEPTION:
        return False
    if (e & 0xFF) not in (_VEC_OF, _VEC_BR):
        return False
    return _long_mode(c) and bool(c.cs_attrib & SEG_ATTR_L)


def np_without_host_paging(c: Vmcb12Cache, caps: HostCaps, host_cr0: int | None) -> bool:
    """Nested paging is enabled but the host (L1) has paging off, hCR0.PG=0
    (APM vol. 2 §15.25.3)."""
    return host_cr0 is not None and nested_paging_enabled(c, caps) and not host_cr0 & CR0_PG


def ncr3_mbz_set(c: Vmcb12Cache, caps: HostCaps, host_cr0: int | None) -> bool:
    """Nested paging is enabled and N_CR3 has a must-be-zero bit set: a bit at or above
    MAXPHYADDR (APM vol. 2 §15.25.4).

    N_CR3 has the host CR3 format; as for CR3, only the address bits beyond MAXPHYADDR are MBZ."""
    return nested_paging_enabled(c, caps) and c.n_cr3 >> caps.maxphyaddr != 0


def g_pat_reserved(c: Vmcb12Cache, caps: HostCaps, host_cr0: int | None) -> bool:
    """Nested paging is enabled and G_PAT holds a reserved memory type (2, 3, or 8 and up) or a
    reserved bit in one of its PA fields (APM vol. 2 §15.25.4)."""
    return nested_paging_enabled(c, caps) and not g_pat_valid(c.g_pat)


def _rule(fn: Predicate) -> Rule:
    doc = fn.__doc__ or fn.__name__
    first_paragraph = doc.split("\n\n", 1)[0]
    return Rule(fn.__name__, fn, " ".join(first_paragraph.split()))


# APM order: §15.5.1 as listed, then §15.20, then §15.25. G_PAT last and apart, so that a PAT
# model that ignores g_pat (the 'shared' model) can leave it out.
RULES: tuple[Rule, ...] = tuple(_rule(f) for f in (
    efer_svme_zero,
    cr0_nw_without_cd,
    cr0_high_set,
    cr3_mbz_set,
    cr4_mbz_set,
    dr6_high_set,
    dr7_high_set,
    efer_mbz_set,
    long_mode_unsupported,
    long_mode_without_pae,
    long_mode_without_pe,
    long_mode_cs_l_and_d,
    vmrun_intercept_clear,
    vnmi_without_nmi_intercept,
    msrpm_beyond_maxphyaddr,
    iopm_beyond_maxphyaddr,
    eventinj_reserved_type,
    eventinj_not_an_exception,
    eventinj_impossible_in_64bit,
    asid_zero,
    np_without_host_paging,
    ncr3_mbz_set,
))
G_PAT_RULE: Rule = _rule(g_pat_reserved)
RULES_WITH_G_PAT: tuple[Rule, ...] = RULES + (G_PAT_RULE,)


def passes_all(c: Vmcb12Cache, caps: HostCaps, host_cr0: int | None = None,
               check_g_pat: bool = True) -> bool:
    """All rules at once, in one function body: VMRUN almost always passes, and calling 22
    predicates costs more than the rest of the world switch can afford. The rules above stay the
    reference; the tests check that this agrees with them on random VMCBs."""
    efer = c.efer
    cr0 = c.cr0
    maxpa = caps.maxphyaddr
    if (not efer & EFER_SVME or (cr0 & (CR0_CD | CR0_NW)) == CR0_NW or cr0 >> 32
            or c.cr3 >> maxpa or c.cr4 & ~caps.cr4_supported or c.dr6 >> 32 or c.dr7 >> 32
            or efer & ~caps.efer_supported
            or (not caps.long_mode and efer & (EFER_LME | EFER_LMA))):
        return False
    long_mode = bool(efer & EFER_LME) and bool(cr0 & CR0_PG)
    if long_mode and (not c.cr4 & CR4_PAE or not cr0 & CR0_PE
                      or (c.cs_attrib & (SEG_ATTR_L | SEG_ATTR_DB)) == (SEG_ATTR_L | SEG_ATTR_DB)):
        return False
    if (not c.intercept_misc2 & INTERCEPT_VMRUN
            or (caps.vnmi and c.vintr & V_NMI_ENABLE and not c.intercept_misc1 & INTERCEPT_NMI)
            or _map_last_byte(c.msrpm_base_pa, MSRPM_SIZE) >= (1 << maxpa) - 1
            or _map_last_byte(c.iopm_base_pa, IOPM_EXTENT) >= (1 << maxpa) - 1):
        return False
    e = c.eventinj
    if e & EVENTINJ_V:
        t = (e >> 8) & 7
        if t in _RESERVED_EVENT_TYPES:
            return False
        if t == EVENTINJ_TYPE_EXCEPTION:
            vec = e & 0xFF
            if not (caps.exception_vectors >> vec) & 1:
                return False
            if (vec == _VEC_OF or vec == _VEC_BR) and long_mode and c.cs_attrib & SEG_ATTR_L:
                return False
    if c.guest_asid == 0:
        return False
    if caps.npt and c.nested_ctl & 1:
        if host_cr0 is not None and not host_cr0 & CR0_PG:
            return False
        if c.n_cr3 >> maxpa:
            return False
        if check_g_pat and not g_pat_valid(c.g_pat):
            return False
    return True


def run_checks(cache: Vmcb12Cache, caps: HostCaps, host_cr0: int | None = None,
               check_g_pat: bool = True) -> str | None:
    """The explanation of the first rule the VMCB breaks, or None when VMRUN may proceed.
    check_g_pat=False is for PAT models that never look at G_PAT."""
    if passes_all(cache, caps, host_cr0, check_g_pat):
        return None
    for rule in (RULES_WITH_G_PAT if check_g_pat else RULES):
        if rule.broken(cache, caps, host_cr0):
            return rule.explanation
    raise AssertionError("passes_all and RULES disagree")  # pragma: no cover


def all_failures(cache: Vmcb12Cache, caps: HostCaps, host_cr0: int | None = None,
                 check_g_pat: bool = True) -> list[Rule]:
    """Every rule the VMCB breaks, in the order run_checks tries them (for traces and tests)."""
    rules = RULES_WITH_G_PAT if check_g_pat else RULES
    return [r for r in rules if r.broken(cache, caps, host_cr0)]


def g_pat_check(cache: Vmcb12Cache, caps: HostCaps) -> str | None:
    """The G_PAT rule alone, for callers that run it at a different point than the others."""
    return G_PAT_RULE.explanation if G_PAT_RULE.broken(cache, caps, None) else None
