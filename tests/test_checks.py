"""VMRUN consistency checks: a valid vmcb12 passes; breaking exactly one rule fails with exactly that
rule's explanation; and on random VMCBs nothing raises and the fast path agrees with the rules."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emu.arch import bits as A
from emu.arch.memtype import pat_valid
from svm_ext import checks as K
from emu.arch import vmcb as V
from svm_ext.checks import HostCaps, all_failures, passes_all, run_checks
from emu.arch.vmcb import Vmcb12Cache

CAPS = HostCaps(maxphyaddr=40)
TOP = 1 << 40
HOST_CR0 = 0x8000_0011          # L1: PG, ET, PE

# A 64-bit guest the way an L1 hypervisor would set one up, nested paging on.
BASE: Vmcb12Cache = Vmcb12Cache.zero()._replace(
    intercept_misc1=V.INTERCEPT_CPUID | V.INTERCEPT_HLT | V.INTERCEPT_MSR_PROT | V.INTERCEPT_IOIO_PROT,
    intercept_misc2=V.INTERCEPT_VMRUN | V.INTERCEPT_VMMCALL,
    iopm_base_pa=0x10_0000, msrpm_base_pa=0x10_3000, guest_asid=1,
    nested_ctl=1, n_cr3=0x20_0000,
    efer=A.EFER_SVME | A.EFER_LME | A.EFER_LMA | A.EFER_SCE | A.EFER_NXE,
    cr0=0x8005_0033, cr3=0x30_0000, cr4=A.CR4_PAE | A.CR4_PGE | A.CR4_OSFXSR | A.CR4_OSXMMEXCPT,
    dr6=0xFFFF_0FF0, dr7=0x400, rflags=2, rip=0x40_0000, rsp=0x40_8000,
    cs_selector=8, cs_attrib=0x29B, cs_limit=0xFFFF_FFFF,
    ss_selector=0x10, ss_attrib=0x093, ss_limit=0xFFFF_FFFF,
    g_pat=0x0007_0406_0007_0406,
)


def _ok(c: Vmcb12Cache, caps: HostCaps = CAPS, host_cr0: int | None = HOST_CR0,
        check_g_pat: bool = True) -> bool:
    result = run_checks(c, caps, host_cr0, check_g_pat)
    fails = all_failures(c, caps, host_cr0, check_g_pat)
    assert (result is None) == (fails == [])
    assert passes_all(c, caps, host_cr0, check_g_pat) == (fails == [])
    return result is None


def test_baseline_passes() -> None:
    assert _ok(BASE)


def test_baseline_variants_pass() -> None:
    legacy32 = BASE._replace(efer=A.EFER_SVME, cr0=0x11, cr4=0, cs_attrib=0xC9B)
    assert _ok(legacy32)
    pae32 = BASE._replace(efer=A.EFER_SVME, cr0=0x8000_0011, cr4=A.CR4_PAE, cs_attrib=0xC9B)
    assert _ok(pae32)
    compat = BASE._replace(cs_attrib=0xC9B)                      # long mode, CS.L=0, CS.D=1
    assert _ok(compat)
    paged_real = BASE._replace(efer=A.EFER_SVME, cr0=0x8000_0010, cr4=0, cs_attrib=0x93)
    assert _ok(paged_real)                                         # PG=1 with PE=0 is allowed
    no_np = BASE._replace(nested_ctl=0, g_pat=0x0202_0202_0202_0202, n_cr3=1 << 63)
    assert _ok(no_np)
    assert _ok(BASE, host_cr0=None)


# Each case breaks exactly one rule: (rule name, fields to change, caps, host CR0).
ONE_RULE_CASES: list[tuple[str, dict[str, Any], HostCaps, int | None]] = [
    ("efer_svme_zero", {"efer": BASE.efer & ~A.EFER_SVME}, CAPS, HOST_CR0),
    ("cr0_nw_without_cd", {"cr0": BASE.cr0 | A.CR0_NW}, CAPS, HOST_CR0),
    ("cr0_high_set", {"cr0": BASE.cr0 | (1 << 32)}, CAPS, HOST_CR0),
    ("cr0_high_set", {"cr0": BASE.cr0 | (1 << 63)}, CAPS, HOST_CR0),
    ("cr3_mbz_set", {"cr3": BASE.cr3 | TOP}, CAPS, HOST_CR0),
    ("cr3_mbz_set", {"cr3": BASE.cr3 | (1 << 63)}, CAPS, HOST_CR0),
    ("cr3_mbz_set", {"cr3": BASE.cr3 | (1 << 52)}, CAPS, HOST_CR0),
    ("cr4_mbz_set", {"cr4": BASE.cr4 | (1 << 13)}, CAPS, HOST_CR0),          # VMXE
    ("cr4_mbz_set", {"cr4": BASE.cr4 | (1 << 15)}, CAPS, HOST_CR0),
    ("cr4_mbz_set", {"cr4": BASE.cr4 | A.CR4_PCIDE}, CAPS, HOST_CR0),        # not reported
    ("cr4_mbz_set", {"cr4": BASE.cr4 | (1 << 40)}, CAPS, HOST_CR0),
    ("dr6_high_set", {"dr6": BASE.dr6 | (1 << 32)}, CAPS, HOST_CR0),
    ("dr7_high_set", {"dr7": BASE.dr7 | (1 << 60)}, CAPS, HOST_CR0),
    ("efer_mbz_set", {"efer": BASE.efer | (1 << 9)}, CAPS, HOST_CR0),
    ("efer_mbz_set", {"efer": BASE.efer | (1 << 16)}, CAPS, HOST_CR0),
    ("efer_mbz_set", {"efer": BASE.efer | A.EFER_LMSLE}, CAPS, HOST_CR0),
    ("efer_mbz_set", {"efer": BASE.efer | A.EFER_TCE}, CAPS, HOST_CR0),
    ("efer_mbz_set", {"efer": BASE.efer | (1 << 1)}, CAPS, HOST_CR0),
    ("long_mode_unsupported",
     {"efer": A.EFER_SVME | A.EFER_LME, "cr0": 0x11, "cs_attrib": 0xC9B},
     HostCaps(maxphyaddr=40, long_mode=False,
              efer_supported=K.EFER_DEFAULT_SUPPORTED), HOST_CR0),
    ("long_mode_without_pae", {"cr4": BASE.cr4 & ~A.CR4_PAE}, CAPS, HOST_CR0),
    ("long_mode_without_pe", {"cr0": BASE.cr0 & ~A.CR0_PE}, CAPS, HOST_CR0),
    ("long_mode_cs_l_and_d", {"cs_attrib": BASE.cs_attrib | V.SEG_ATTR_DB}, CAPS, HOST_CR0),
    ("vmrun_intercept_clear", {"intercept_misc2": V.INTERCEPT_VMMCALL}, CAPS, HOST_CR0),
    ("vnmi_without_nmi_intercept", {"vintr": 1 << 26}, HostCaps(maxphyaddr=40, vnmi=True),
     HOST_CR0),
    ("msrpm_beyond_maxphyaddr", {"msrpm_base_pa": TOP - 0x1000}, CAPS, HOST_CR0),
    ("msrpm_beyond_maxphyaddr", {"msrpm_base_pa": TOP}, CAPS, HOST_CR0),
    ("msrpm_beyond_maxphyaddr", {"msrpm_base_pa": 0xFFFF_FFFF_FFFF_F000}, CAPS, HOST_CR0),
    ("iopm_beyond_maxphyaddr", {"iopm_base_pa": TOP - 0x2000}, CAPS, HOST_CR0),
    ("iopm_beyond_maxphyaddr", {"iopm_base_pa": TOP | 0x1000}, CAPS, HOST_CR0),
    ("eventinj_reserved_type", {"eventinj": V.EVENTINJ_V | (1 << 8) | 0x20}, CAPS, HOST_CR0),
    ("eventinj_reserved_type", {"eventinj": V.EVENTINJ_V | (5 << 8)}, CAPS, HOST_CR0),
    ("eventinj_reserved_type", {"eventinj": V.EVENTINJ_V | (6 << 8)}, CAPS, HOST_CR0),
    ("eventinj_reserved_type", {"eventinj": V.EVENTINJ_V | (7 << 8) | 14}, CAPS, HOST_CR0),
    ("eventinj_not_an_exception", {"eventinj": V.eventinj_encode(2, 3)}, CAPS, HOST_CR0),
    ("eventinj_not_an_exception", {"eventinj": V.eventinj_encode(9, 3)}, CAPS, HOST_CR0),
    ("eventinj_not_an_exception", {"eventinj": V.eventinj_encode(15, 3)}, CAPS, HOST_CR0),
    ("eventinj_not_an_exception", {"eventinj": V.eventinj_encode(31, 3)}, CAPS, HOST_CR0),
    ("eventinj_not_an_exception", {"eventinj": V.eventinj_encode(32, 3)}, CAPS, HOST_CR0),
    ("eventinj_not_an_exception", {"eventinj": V.eventinj_encode(0xFF, 3, 0)}, CAPS, HOST_CR0),
    ("eventinj_impossible_in_64bit", {"eventinj": V.eventinj_encode(5, 3)}, CAPS, HOST_CR0),
    ("eventinj_impossible_in_64bit", {"eventinj": V.eventinj_encode(4, 3)}, CAPS, HOST_CR0),
    ("asid_zero", {"guest_asid": 0}, CAPS, HOST_CR0),
    ("np_without_host_paging", {}, CAPS, 0x11),
    ("ncr3_mbz_set", {"n_cr3": BASE.n_cr3 | TOP}, CAPS, HOST_CR0),
    ("ncr3_mbz_set", {"n_cr3": 1 << 63}, CAPS, HOST_CR0),
    ("g_pat_reserved", {"g_pat": 0x0007_0406_0007_0402}, CAPS, HOST_CR0),      # type 2
    ("g_pat_reserved", {"g_pat": 0x0307_0406_0007_0406}, CAPS, HOST_CR0),      # type 3, top byte
    ("g_pat_reserved", {"g_pat": 0x0007_0406_0008_0406}, CAPS, HOST_CR0),      # 8
    ("g_pat_reserved", {"g_pat": 0x0007_0406_0007_04FE}, CAPS, HOST_CR0),      # reserved bits
]


def _rule(name: str) -> K.Rule:
    return next(r for r in K.RULES_WITH_G_PAT if r.name == name)


@pytest.mark.parametrize("name,changes,caps,host_cr0", ONE_RULE_CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(ONE_RULE_CASES)])
def test_breaking_one_rule(name: str, changes: dict[str, Any], caps: HostCaps,
                           host_cr0: int | None) -> None:
    c = BASE._replace(**changes)
    rule = _rule(name)
    assert run_checks(c, caps, host_cr0) == rule.explanation
    assert [r.name for r in all_failures(c, caps, host_cr0)] == [name]
    assert not passes_all(c, caps, host_cr0)


def test_v_nmi_enable_needs_the_nmi_intercept_only_where_vnmi_is_reported() -> None:
    vnmi = HostCaps(maxphyaddr=40, vnmi=True)
    enabled = BASE._replace(vintr=1 << 26)
    assert _ok(enabled)                                          # no vNMI: the bit is ignored
    assert _ok(enabled._replace(intercept_misc1=BASE.intercept_misc1 | V.INTERCEPT_NMI), vnmi)
    assert not _ok(enabled, vnmi)


def test_every_rule_has_a_case() -> None:
    assert {r.name for r in K.RULES_WITH_G_PAT} == {c[0] for c in ONE_RULE_CASES}


def test_explanations_are_user_facing() -> None:
    for rule in K.RULES_WITH_G_PAT:
        assert rule.explanation.endswith(")."), rule.name
        assert "APM vol. 2 §15." in rule.explanation, rule.name
        assert "\n" not in rule.explanation
    assert run_checks(BASE._replace(efer=0), CAPS, HOST_CR0) == (
        "EFER.SVME is zero in the guest state (APM vol. 2 §15.5.1).")


def test_first_failure_wins_in_apm_order() -> None:
    c = BASE._replace(efer=0, guest_asid=0)
    assert run_checks(c, CAPS, HOST_CR0) == _rule("efer_svme_zero").explanation
    assert [r.name for r in all_failures(c, CAPS, HOST_CR0)] == ["efer_svme_zero", "asid_zero"]


# --- the edges of individual rules ---------------------------------------------------------------

def test_cr0_cd_nw_combinations() -> None:
    for cd, nw, ok in ((0, 0, True), (1, 0, True), (1, 1, True), (0, 1, False)):
        cr0 = (BASE.cr0 & ~(A.CR0_CD | A.CR0_NW)) | (cd * A.CR0_CD) | (nw * A.CR0_NW)
        assert _ok(BASE._replace(cr0=cr0)) is ok


def test_cr3_low_and_address_bits_are_not_mbz() -> None:
    # Reserved-but-ignored low bits (and the PCID field) never fail VMRUN.
    for bit in range(12):
        assert _ok(BASE._replace(cr3=BASE.cr3 | (1 << bit)))
    assert _ok(BASE._replace(cr3=TOP - 0x1000))
    for bit in range(40, 64):
        assert not _ok(BASE._replace(cr3=1 << bit))
    # Same in legacy modes and with paging off.
    legacy = BASE._replace(efer=A.EFER_SVME, cr0=0x11, cr4=0, cs_attrib=0xC9B)
    assert _ok(legacy._replace(cr3=0xFFF))
    assert not _ok(legacy._replace(cr3=TOP))


def test_cr3_mbz_follows_maxphyaddr() -> None:
    c = BASE._replace(cr3=1 << 45)
    assert not _ok(c, HostCaps(maxphyaddr=40))
    assert _ok(c, HostCaps(maxphyaddr=48))


def test_cr4_supported_set_comes_from_caps() -> None:
    c = BASE._replace(cr4=BASE.cr4 | A.CR4_PCIDE)
    assert not _ok(c)
    assert _ok(c, HostCaps(maxphyaddr=40, cr4_supported=K.CR4_DEFAULT_SUPPORTED | A.CR4_PCIDE))


def test_long_mode_rules_need_both_lme_and_pg() -> None:
    # LME without PG (long mode not yet active): PAE/PE/CS rules do not apply.
    c = BASE._replace(cr0=0x11, cr4=0, cs_attrib=0x29B | V.SEG_ATTR_DB)
    assert _ok(c)
    # PG without LME: legacy paging, CS.L+CS.D is not checked.
    c = BASE._replace(efer=A.EFER_SVME, cs_attrib=0x29B | V.SEG_ATTR_DB)
    assert _ok(c)


def test_cs_l_and_d_needs_pae_too() -> None:
    c = BASE._replace(cr4=BASE.cr4 & ~A.CR4_PAE, cs_attrib=BASE.cs_attrib | V.SEG_ATTR_DB)
    assert [r.name for r in all_failures(c, CAPS, HOST_CR0)] == ["long_mode_without_pae"]


def test_permission_map_edges() -> None:
    # The maximum supported physical address is TOP - 1: a map whose last byte is there is
    # already beyond it (kvm-unit-tests' svm_guest_state_test, test_msrpm_iopm_bitmap_addrs).
    assert _ok(BASE._replace(msrpm_base_pa=TOP - 0x3000))
    assert not _ok(BASE._replace(msrpm_base_pa=TOP - 0x2000))
    assert not _ok(BASE._replace(msrpm_base_pa=TOP - 0x2000 + 1))    # low 12 bits ignored
    assert _ok(BASE._replace(msrpm_base_pa=TOP - 0x3000 + 0xFFF))
    assert not _ok(BASE._replace(msrpm_base_pa=TOP - 0x1000))
    # The IOPM's extent is the 8 KiB + 1 byte a port access can read.
    assert _ok(BASE._replace(iopm_base_pa=TOP - 0x4000))
    assert _ok(BASE._replace(iopm_base_pa=TOP - 0x3000))
    assert _ok(BASE._replace(iopm_base_pa=TOP - 0x2002))             # masks to TOP - 0x3000
    assert not _ok(BASE._replace(iopm_base_pa=TOP - 0x2000))
    assert not _ok(BASE._replace(iopm_base_pa=TOP - 0x1000))
    # Checked even when the corresponding intercept is off.
    c = BASE._replace(intercept_misc1=0, msrpm_base_pa=TOP)
    assert not _ok(c)


def test_event_injection_legal_cases() -> None:
    legal = [
        V.eventinj_encode(0x20, V.EVENTINJ_TYPE_INTR),
        V.eventinj_encode(3, V.EVENTINJ_TYPE_INTR),                   # INTR below 32 is fine
        V.eventinj_encode(2, V.EVENTINJ_TYPE_NMI),
        V.eventinj_encode(7, V.EVENTINJ_TYPE_NMI),                    # vector of an NMI is ignored
        V.eventinj_encode(14, V.EVENTINJ_TYPE_EXCEPTION, 2),
        V.eventinj_encode(8, V.EVENTINJ_TYPE_EXCEPTION, 0),
        V.eventinj_encode(4, V.EVENTINJ_TYPE_SOFT_INT),               # INT 4 exists in 64-bit mode
        V.eventinj_encode(0x80, V.EVENTINJ_TYPE_SOFT_INT),
        (1 << 8) | 0x20,                                              # reserved type but V=0
        0xFFFF_FFFF_7FFF_FFFF,                                        # everything but V
    ]
    for e in legal:
        assert _ok(BASE._replace(eventinj=e)), hex(e)


def test_exception_vectors_exhaustive() -> None:
    valid = {0, 1, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 14, 16, 17, 18, 19, 21, 28, 29, 30}
    legacy = BASE._replace(efer=A.EFER_SVME, cr0=0x11, cr4=0, cs_attrib=0xC9B)
    for vec in range(256):
        assert _ok(legacy._replace(eventinj=V.eventinj_encode(vec, 3))) is (vec in valid), vec


def test_br_and_of_only_rejected_in_64bit_mode() -> None:
    for vec in (4, 5):
        e = V.eventinj_encode(vec, 3)
        assert not _ok(BASE._replace(eventinj=e))                     # 64-bit
        assert _ok(BASE._replace(eventinj=e, cs_attrib=0xC9B))        # compatibility mode
        assert _ok(BASE._replace(eventinj=e, efer=A.EFER_SVME, cr4=0, cs_attrib=0x29B))  # legacy


def test_exception_vectors_narrowed_by_caps() -> None:
    caps = HostCaps(maxphyaddr=40, exception_vectors=K.EXCEPTION_VECTORS_DEFINED & ~(1 << 21))
    assert _ok(BASE._replace(eventinj=V.eventinj_encode(21, 3, 0)))
    assert not _ok(BASE._replace(eventinj=V.eventinj_encode(21, 3, 0)), caps)


def test_nested_paging_rules_only_with_np_enable() -> None:
    off = BASE._replace(nested_ctl=0, n_cr3=1 << 63, g_pat=0xFFFF_FFFF_FFFF_FFFF)
    assert _ok(off, host_cr0=0x11)


def test_np_enable_without_npt_support_is_ignored() -> None:
    caps = HostCaps(maxphyaddr=40, npt=False)
    c = BASE._replace(n_cr3=1 << 63, g_pat=0x0202_0202_0202_0202)
    assert _ok(c, caps, host_cr0=0x11)
    assert not K.nested_paging_enabled(c, caps)
    assert K.nested_paging_enabled(c, CAPS)


def test_host_cr0_unknown_skips_only_that_rule() -> None:
    assert _ok(BASE, host_cr0=None)
    assert not _ok(BASE._replace(n_cr3=TOP), host_cr0=None)


def test_g_pat_check_can_be_skipped() -> None:
    bad = BASE._replace(g_pat=0x0202_0202_0202_0202)
    assert not _ok(bad)
    assert _ok(bad, check_g_pat=False)
    assert K.g_pat_check(bad, CAPS) == K.G_PAT_RULE.explanation
    assert K.g_pat_check(BASE, CAPS) is None
    assert K.g_pat_check(bad._replace(nested_ctl=0), CAPS) is None


def test_pat_types() -> None:
    assert [t for t in range(256) if K.pat_type_valid(t)] == [0, 1, 4, 5, 6, 7]


@given(st.lists(st.integers(0, 255), min_size=8, max_size=8))
def test_g_pat_valid_matches_per_byte(fields: list[int]) -> None:
    pat = sum(b << (8 * i) for i, b in enumerate(fields))
    assert K.g_pat_valid(pat) == all(K.pat_type_valid(b) for b in fields)


@given(st.one_of(st.integers(0, (1 << 64) - 1),
                 st.lists(st.sampled_from([0, 1, 2, 3, 4, 5, 6, 7, 8, 0x80]), min_size=8, max_size=8)
                 .map(lambda bs: sum(b << (8 * i) for i, b in enumerate(bs)))))
def test_g_pat_valid_agrees_with_wrmsr_rule(pat: int) -> None:
    assert K.g_pat_valid(pat) == pat_valid(pat)


def test_g_pat_power_on_value_is_valid() -> None:
    assert K.g_pat_valid(0x0007_0406_0007_0406)


# --- property tests ------------------------------------------------------------------------------

_u64 = st.integers(0, (1 << 64) - 1)
_u32 = st.integers(0, (1 << 32) - 1)
_u16 = st.integers(0, (1 << 16) - 1)
_u8 = st.integers(0, 255)


def _near(base: int, width: int = 64) -> st.SearchStrategy[int]:
    """Mostly the baseline with a few bits flipped, sometimes anything at all."""
    flips = st.lists(st.integers(0, width - 1), max_size=3).map(
        lambda bits: base ^ sum(1 << b for b in set(bits)))
    return st.one_of(flips, st.just(base), st.integers(0, (1 << width) - 1))


_interesting = {
    "efer": _near(BASE.efer), "cr0": _near(BASE.cr0), "cr3": _near(BASE.cr3),
    "cr4": _near(BASE.cr4), "dr6": _near(BASE.dr6), "dr7": _near(BASE.dr7),
    "cs_attrib": _near(BASE.cs_attrib, 16), "intercept_misc2": _near(BASE.intercept_misc2, 32),
    "msrpm_base_pa": _near(BASE.msrpm_base_pa), "iopm_base_pa": _near(BASE.iopm_base_pa),
    "guest_asid": st.one_of(st.just(1), _u32), "nested_ctl": _near(BASE.nested_ctl),
    "n_cr3": _near(BASE.n_cr3), "g_pat": _near(BASE.g_pat),
    "eventinj": st.one_of(st.just(0), _u64, st.builds(
        V.eventinj_encode, st.one_of(st.sampled_from([2, 4, 5, 8, 9, 14, 21, 31, 32]), _u8),
        st.one_of(st.just(3), st.integers(0, 7)),
        st.one_of(st.none(), _u32))),
}
# Addresses around the top of physical memory, where the map and CR3 rules flip.
_edge_addr = st.builds(lambda k, d: max(0, (1 << k) + d), st.one_of(st.just(40), st.integers(32, 52)),
                       st.integers(-0x4000, 0x1000))
for _f in ("msrpm_base_pa", "iopm_base_pa", "cr3", "n_cr3"):
    _interesting[_f] = st.one_of(_interesting[_f], _edge_addr)
_host_cr0 = st.one_of(st.none(), st.sampled_from([HOST_CR0, 0x11, 0x8000_0010, 0]), _u64)

_caps = st.builds(
    HostCaps,
    maxphyaddr=st.one_of(st.just(40), st.integers(32, 52)), long_mode=st.booleans(), npt=st.booleans(),
    cr4_supported=st.one_of(st.just(K.CR4_DEFAULT_SUPPORTED), _u64),
    efer_supported=st.one_of(st.just(K.EFER_DEFAULT_SUPPORTED), _u64),
    exception_vectors=st.one_of(st.just(K.EXCEPTION_VECTORS_DEFINED), st.integers(0, (1 << 256) - 1)),
)


@settings(max_examples=1500, deadline=None)
@given(st.fixed_dictionaries({}, optional=_interesting), _caps, _host_cr0, st.booleans())
def test_random_vmcbs(changes: dict[str, int], caps: HostCaps, host_cr0: int | None,
                      check_g_pat: bool) -> None:
    c = BASE._replace(**changes)
    result = run_checks(c, caps, host_cr0, check_g_pat)
    fails = all_failures(c, caps, host_cr0, check_g_pat)
    assert (result is None) == (fails == [])
    assert passes_all(c, caps, host_cr0, check_g_pat) == (fails == [])
    if fails:
        assert result == fails[0].explanation
    for rule in K.RULES_WITH_G_PAT:
        assert isinstance(rule.broken(c, caps, host_cr0), bool)


@settings(max_examples=100, deadline=None)
@given(_u64, _caps, st.one_of(st.none(), _u64))
def test_random_bytes_never_raise(seed: int, caps: HostCaps, host_cr0: int | None) -> None:
    data = random.Random(seed).randbytes(V.VMCB_SIZE)
    c = V.read_cache(data)
    result = run_checks(c, caps, host_cr0)
    fails = all_failures(c, caps, host_cr0)
    assert (result is None) == (fails == [])
    assert passes_all(c, caps, host_cr0) == (fails == [])


@st.composite
def _one_field(draw: st.DrawFn) -> dict[str, int]:
    name = draw(st.sampled_from(sorted(_interesting)))
    return {name: draw(_interesting[name])}


@settings(max_examples=1500, deadline=None)
@given(_one_field(), _host_cr0, st.booleans())
def test_random_single_field(change: dict[str, int], host_cr0: int | None, check_g_pat: bool) -> None:
    # One field off the valid baseline at a time: a single broken rule is where the fused fast
    # path and the per-rule predicates could disagree unnoticed.
    c = BASE._replace(**change)
    fails = all_failures(c, CAPS, host_cr0, check_g_pat)
    assert passes_all(c, CAPS, host_cr0, check_g_pat) == (fails == [])
    assert run_checks(c, CAPS, host_cr0, check_g_pat) == (fails[0].explanation if fails else None)
