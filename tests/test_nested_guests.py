"""The L1-hypervisor guests (guests/svm_*.S) on svmemu, checked from outside as well as by
themselves: every TAP line is ok, and what each #VMEXIT wrote into vmcb12 (copied by the guest
into its exit log, guests/svm.inc) is what the APM says, field by field."""
from __future__ import annotations

import io
import struct
from dataclasses import dataclass


from emu.loader.asm import GUESTS_DIR, assemble_source
from emu.loader.multiboot import parse_image
from emu.machine import Machine
from emu.trace import Tracer
from svm_ext import checks
from svm_ext.extension import SvmExtension
from svm_ext.vmcb import VMEXIT_INVALID, VMEXIT_VMMCALL
from tests.conftest import parse_tap

EXIT_LOG = 0x900000
EXIT_LOG_COUNT = 0x8FFFF8


@dataclass
class ExitRecord:
    exitcode: int
    info1: int
    info2: int
    intinfo: int
    nrip: int
    rip: int
    tag: int
    marker: int


@dataclass
class GuestRun:
    machine: Machine
    ext: SvmExtension
    output: str
    trace: str
    log: list[ExitRecord]

    def by_tag(self, tag: int) -> ExitRecord:
        found = [r for r in self.log if r.tag == tag]
        assert len(found) == 1, (tag, found)
        return found[0]


_cache: dict[str, GuestRun] = {}


def run_guest(name: str) -> GuestRun:
    """Boot guests/NAME.S once per session with exit tracing on; every check must pass."""
    if name in _cache:
        return _cache[name]
    path = str(GUESTS_DIR / f"{name}.S")
    ext = SvmExtension()
    trace = io.StringIO()
    m = Machine(128 << 20, stdout=None, extensions=[ext],
                tracer=Tracer(frozenset({"exits"}), trace))
    m.load_multiboot(parse_image(assemble_source(path), path, m.ram_size), f"{path} ")
    res = m.run(timeout=60)
    out = bytes(m.serial.output).decode()
    assert "Bail out!" not in out, out
    checks_ = parse_tap(out)
    assert checks_, out
    bad = {n: line.detail for n, line in checks_.items() if not line.ok}
    assert not bad, out
    assert res.reason == "exit" and res.status == 1, (res, out)
    count = struct.unpack_from("<Q", m.ram, EXIT_LOG_COUNT)[0]
    log = [ExitRecord(*struct.unpack_from("<8Q", m.ram, EXIT_LOG + 64 * i)) for i in range(count)]
    _cache[name] = GuestRun(m, ext, out, trace.getvalue(), log)
    return _cache[name]


# ---------------------------------------------------------------------------- svm_checks
# tag -> the consistency rule (svm_ext/checks.py) the case breaks, in the guest's order.
CHECK_CASES = {
    1: checks.efer_svme_zero, 2: checks.cr0_nw_without_cd, 3: checks.cr0_high_set,
    4: checks.cr0_high_set, 5: checks.cr3_mbz_set, 6: checks.cr3_mbz_set,
    7: checks.cr4_mbz_set, 8: checks.cr4_mbz_set, 9: checks.dr6_high_set,
    10: checks.dr7_high_set, 11: checks.efer_mbz_set, 12: checks.efer_mbz_set,
    13: checks.long_mode_without_pae, 14: checks.long_mode_without_pe,
    15: checks.long_mode_cs_l_and_d, 16: checks.vmrun_intercept_clear, 17: checks.asid_zero,
    18: checks.msrpm_beyond_maxphyaddr, 19: checks.iopm_beyond_maxphyaddr,
    20: checks.eventinj_not_an_exception, 21: checks.eventinj_reserved_type,
    22: checks.eventinj_reserved_type,
}


def test_svm_checks_every_broken_rule_is_vmexit_invalid_in_64_bits():
    g = run_guest("svm_checks")
    assert [r.tag for r in g.log] == list(range(24))
    for tag, rule in CHECK_CASES.items():
        r = g.by_tag(tag)
        assert r.exitcode == VMEXIT_INVALID, (tag, hex(r.exitcode))
        assert (r.info1, r.info2, r.intinfo) == (0, 0, 0), tag
        assert r.marker == 0, f"L2 ran in case {tag}"


def test_svm_checks_valid_vmcbs_run_l2():
    g = run_guest("svm_checks")
    for tag in (0, 23):
        r = g.by_tag(tag)
        assert r.exitcode == VMEXIT_VMMCALL and r.marker == 1
        assert r.nrip == r.rip + 3                  # NRIP: after the 3-byte VMMCALL


def test_svm_checks_trace_names_the_rule_each_case_breaks():
    g = run_guest("svm_checks")
    failed = [line for line in g.trace.splitlines() if "VMEXIT_INVALID" in line]
    assert len(failed) == len(CHECK_CASES)
    for line, (tag, rule) in zip(failed, sorted(CHECK_CASES.items())):
        explanation = checks._rule(rule).explanation
        assert explanation in line, (tag, line)


def test_svm_checks_counts_and_final_state():
    g = run_guest("svm_checks")
    assert g.ext.state.stats == {"vmrun": 2, "vmexit": 2 + len(CHECK_CASES)}
    assert not g.ext.state.in_l2
    # The #GP at CPL 3 left L1 back in ring 0 and the last #VMEXIT left GIF clear.
    assert not g.ext.state.gif
