"""The L1-hypervisor guests (guests/svm_*.S) on svmemu, checked from outside as well as by
themselves: every TAP line is ok, and what each #VMEXIT wrote into vmcb12 (copied by the guest
into its exit log, guests/svm.inc) is what the APM says, field by field."""
from __future__ import annotations

import io
import struct
from dataclasses import dataclass

import pytest


from emu.loader.asm import GUESTS_DIR, assemble_source
from emu.loader.multiboot import parse_image
from emu.core.machine import Machine
from emu.core.trace import Tracer
from svm_ext import checks
from svm_ext.extension import SVM_FEATURE_NRIPS, SvmExtension
from emu.arch.vmcb import (EVENTINJ_TYPE_EXCEPTION, EVENTINJ_TYPE_INTR, INTERCEPT_CR0_SEL_WRITE,
                          INTERCEPT_INTN, INTERCEPT_INVD, INTERCEPT_VMMCALL, INTERCEPT_VMRUN,
                          INTERCEPT_WBINVD, VMEXIT_CLGI, VMEXIT_CPUID, VMEXIT_CR0_READ,
                          VMEXIT_CR0_SEL_WRITE, VMEXIT_CR0_WRITE, VMEXIT_DR0_READ, VMEXIT_DR0_WRITE,
                          VMEXIT_EXCP0, VMEXIT_HLT, VMEXIT_INVALID, VMEXIT_INVD, VMEXIT_INVLPG,
                          VMEXIT_INVLPGA, VMEXIT_IRET, VMEXIT_MSR, VMEXIT_PAUSE, VMEXIT_POPF,
                          VMEXIT_PUSHF, VMEXIT_RDPMC, VMEXIT_RDTSC, VMEXIT_RDTSCP, VMEXIT_SHUTDOWN,
                          VMEXIT_STGI, VMEXIT_SWINT, VMEXIT_VMLOAD, VMEXIT_VMMCALL, VMEXIT_VMRUN,
                          VMEXIT_VMSAVE, VMEXIT_WBINVD, Vmcb, eventinj_encode, exit_name)
from tests.conftest import parse_tap
from tests.nested_image import L2_CODE
from tests.tinyimage import asm64, gate64, handler

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
    explanations = {r.name: r.explanation for r in checks.RULES_WITH_G_PAT}
    for line, (tag, rule) in zip(failed, sorted(CHECK_CASES.items())):
        explanation = explanations[rule.__name__]
        assert explanation in line, (tag, line)


def test_svm_checks_counts_and_final_state():
    g = run_guest("svm_checks")
    assert g.ext.state.stats == {"vmrun": 2, "vmexit": 2 + len(CHECK_CASES)}
    assert not g.ext.state.in_l2
    # The #GP at CPL 3 left L1 back in ring 0 and the last #VMEXIT left GIF clear.
    assert not g.ext.state.gif


# ---------------------------------------------------------------------------- svm_intercepts
# tag -> (EXITCODE, EXITINFO1, EXITINFO2, instruction length for NRIP or None for no NRIP).
# Decode assists are reported (CPUID 8000_000A EDX[7]), so EXITINFO1 of a MOV CRn exit is
# bit 63 | the GPR's number (RBX 3, RCX 1, RDX 2), of a MOV DRn exit the GPR's number, of INVLPG
# the address, of INTn the vector; NRIP save is reported, so every instruction intercept has
# NRIP = RIP + length.
PF_ADDR = 0x100000000
CR_RBX, CR_RCX, CR_RDX, RBX = 1 << 63 | 3, 1 << 63 | 1, 1 << 63 | 2, 3
INTERCEPT_CASES = {
    1: (VMEXIT_CR0_READ, CR_RBX, 0, 3), 2: (VMEXIT_CR0_READ + 3, CR_RCX, 0, 3),
    3: (VMEXIT_CR0_READ + 4, CR_RDX, 0, 3), 4: (VMEXIT_VMMCALL, 0, 0, 3),
    5: (VMEXIT_CR0_WRITE, CR_RBX, 0, 3), 6: (VMEXIT_CR0_WRITE + 3, CR_RCX, 0, 3),
    7: (VMEXIT_CR0_WRITE + 4, CR_RDX, 0, 3), 8: (VMEXIT_VMMCALL, 0, 0, 3),
    9: (VMEXIT_CR0_SEL_WRITE, CR_RBX, 0, 3), 10: (VMEXIT_CR0_WRITE, CR_RBX, 0, 3),
    11: (VMEXIT_DR0_READ, RBX, 0, 3), 12: (VMEXIT_DR0_READ + 7, RBX, 0, 3),
    13: (VMEXIT_DR0_WRITE + 1, RBX, 0, 3), 14: (VMEXIT_DR0_WRITE + 6, RBX, 0, 3),
    15: (VMEXIT_VMMCALL, 0, 0, 3),
    16: (VMEXIT_EXCP0 + 6, 0, 0, None), 17: (VMEXIT_EXCP0 + 3, 0, 0, None),
    18: (VMEXIT_EXCP0 + 0, 0, 0, None), 19: (VMEXIT_EXCP0 + 14, 0, PF_ADDR, None),
    20: (VMEXIT_EXCP0 + 14, 2, PF_ADDR + 8, None),
    21: (VMEXIT_CPUID, 0, 0, 2), 22: (VMEXIT_HLT, 0, 0, 1), 23: (VMEXIT_INVLPG, 0x200000, 0, 3),
    24: (VMEXIT_RDTSC, 0, 0, 2), 25: (VMEXIT_RDTSCP, 0, 0, 3), 26: (VMEXIT_PAUSE, 0, 0, 2),
    27: (VMEXIT_WBINVD, 0, 0, 2), 28: (VMEXIT_INVD, 0, 0, 2), 29: (VMEXIT_IRET, 0, 0, 2),
    30: (VMEXIT_PUSHF, 0, 0, 1), 31: (VMEXIT_POPF, 0, 0, 1), 32: (VMEXIT_SWINT, 0x30, 0, 2),
    33: (VMEXIT_VMMCALL, 0, 0, 3), 34: (VMEXIT_VMRUN, 0, 0, 3), 35: (VMEXIT_VMLOAD, 0, 0, 3),
    36: (VMEXIT_VMSAVE, 0, 0, 3), 37: (VMEXIT_STGI, 0, 0, 3), 38: (VMEXIT_CLGI, 0, 0, 3),
    39: (VMEXIT_MSR, 0, 0, 2), 40: (VMEXIT_VMMCALL, 0, 0, 3), 41: (VMEXIT_MSR, 1, 0, 2),
    42: (VMEXIT_VMMCALL, 0, 0, 3), 43: (VMEXIT_MSR, 0, 0, 2), 44: (VMEXIT_MSR, 0, 0, 2),
    45: (VMEXIT_VMMCALL, 0, 0, 3),
    46: (VMEXIT_CR0_READ + 2, CR_RBX, 0, 3), 47: (VMEXIT_CR0_WRITE + 8, CR_RBX, 0, 4),
    48: (VMEXIT_DR0_WRITE + 7, RBX, 0, 3), 49: (VMEXIT_VMMCALL, 0, 0, 3),
    50: (VMEXIT_RDPMC, 0, 0, 2), 51: (VMEXIT_INVLPGA, 0, 0, 3), 52: (VMEXIT_SHUTDOWN, 0, 0, None),
}


def test_svm_intercepts_cpuid_reports_nrip_save_and_decode_assists():
    g = run_guest("svm_intercepts")
    edx = g.machine.cpuid.query(0x8000000A, 0)[3]
    assert edx & SVM_FEATURE_NRIPS and edx & (1 << 7)


@pytest.mark.parametrize("tag", sorted(INTERCEPT_CASES))
def test_svm_intercepts_exit_fields(tag):
    g = run_guest("svm_intercepts")
    code, info1, info2, length = INTERCEPT_CASES[tag]
    r = g.by_tag(tag)
    assert (r.exitcode, r.info1, r.info2, r.intinfo) == (code, info1, info2, 0), \
        (tag, exit_name(r.exitcode), hex(r.info1), hex(r.info2))
    assert r.nrip == (0 if length is None else r.rip + length), (tag, hex(r.rip), hex(r.nrip))


def test_svm_intercepts_every_step_logged_and_l1_back_in_control():
    g = run_guest("svm_intercepts")
    assert [r.tag for r in g.log] == sorted(INTERCEPT_CASES)
    assert g.ext.state.stats == {"vmrun": len(INTERCEPT_CASES), "vmexit": len(INTERCEPT_CASES)}
    assert not g.ext.state.in_l2


# ---------------------------------------------------------------------------- regressions
# Unicorn 2.1.4's SVM checks RDTSCP as RDTSC, INVD as WBINVD and INT3 as INTn, and has no
# selective CR0 write intercept (svm_ext/hw_quirks.py, emu/core/machine.py).

def test_rdtscp_in_l1_loads_tsc_aux_into_ecx():
    from tests.nested_image import EXIT_PASS
    from tests.tinyimage import long_mode_image
    from unicorn.x86_const import UC_X86_REG_RCX, UC_X86_REG_R15
    l1 = """
        mov ecx, 0xC0000103
        mov eax, 0x55
        xor edx, edx
        wrmsr
        mov ecx, 0x77
        rdtscp
        mov r15, 0x1234
    """ + EXIT_PASS
    m = Machine(128 << 20, stdout=None, extensions=[SvmExtension()])
    m.load_multiboot(long_mode_image(l1, {}, []), "test")
    res = m.run(timeout=20)
    assert res.reason == "exit"
    assert m.uc.reg_read(UC_X86_REG_RCX) == 0x55          # TSC_AUX, not the untouched 0x77
    assert m.uc.reg_read(UC_X86_REG_R15) == 0x1234        # the 3-byte instruction was skipped whole


def _nested(l2: str, idt: dict | None = None, handlers: list[str] = (), **vmcb):
    from tests.nested_image import EXIT_PASS, nested_image, vmcb12
    img = nested_image("mov rax, rdi\n vmrun\n" + EXIT_PASS, l2, vmcb12(**vmcb), idt=idt,
                       handlers=handlers)
    m = Machine(128 << 20, stdout=None, extensions=[SvmExtension()])
    m.load_multiboot(img, "test")
    res = m.run(timeout=20)
    assert res.reason == "exit", res
    from tests.nested_image import VMCB12
    return m, Vmcb(m.mem.view, VMCB12)


def test_int3_is_the_bp_exception_intercept_not_intn():
    m, vm = _nested("int3\n vmmcall", exceptions=1 << 3, misc1=INTERCEPT_INTN)
    assert vm.exitcode == VMEXIT_EXCP0 + 3 and vm.save.rip == L2_CODE
    m, vm = _nested("int 0x30\n vmmcall", exceptions=1 << 3, misc1=INTERCEPT_INTN)
    assert vm.exitcode == VMEXIT_SWINT and vm.nrip == L2_CODE + 2
    # Without the #BP intercept, INT3 goes through L2's IDT even when INTn is intercepted.
    m, vm = _nested("int3\n vmmcall", misc1=INTERCEPT_INTN, idt={3: gate64(handler(0))},
                    handlers=["add rsp, 0\n iretq"])
    assert vm.exitcode == VMEXIT_VMMCALL and vm.save.rip == L2_CODE + 1


def test_invd_and_wbinvd_intercepts_are_told_apart():
    m, vm = _nested("invd\n vmmcall", misc1=INTERCEPT_INVD)
    assert vm.exitcode == VMEXIT_INVD and vm.save.rip == L2_CODE and vm.nrip == L2_CODE + 2
    m, vm = _nested("invd\n wbinvd\n vmmcall", misc2=INTERCEPT_VMRUN | INTERCEPT_VMMCALL
                    | INTERCEPT_WBINVD)
    assert vm.exitcode == VMEXIT_WBINVD and vm.save.rip == L2_CODE + 2
    m, vm = _nested("wbinvd\n invd\n vmmcall", misc1=INTERCEPT_INVD)
    assert vm.exitcode == VMEXIT_INVD and vm.save.rip == L2_CODE + 2


def test_selective_cr0_write_exits_only_beyond_ts_and_mp():
    l2 = "mov rax, cr0\n xor rax, 0xA\n mov cr0, rax\n xor rax, 0x40000\n mov cr0, rax\n vmmcall"
    m, vm = _nested(l2, misc1=INTERCEPT_CR0_SEL_WRITE)
    assert vm.exitcode == VMEXIT_CR0_SEL_WRITE
    assert vm.save.cr0 == 0x80010011 ^ 0xA                # the TS/MP write happened, AM's did not
    first = len(asm64("mov rax, cr0\n xor rax, 0xA\n mov cr0, rax\n xor rax, 0x40000", L2_CODE))
    assert vm.save.rip == L2_CODE + first and vm.nrip == L2_CODE + first + 3


def test_selective_cr0_intercept_catches_lmsw_changing_mp():
    """LMSW under the selective intercept exits when it changes any bit it writes, MP too
    (a MOV to CR0 changing only MP does not exit, above); an LMSW that changes nothing runs."""
    l2 = "smsw eax\n lmsw ax\n xor eax, 2\n lmsw ax\n vmmcall"
    m, vm = _nested(l2, misc1=INTERCEPT_CR0_SEL_WRITE)
    assert vm.exitcode == VMEXIT_CR0_SEL_WRITE
    first = len(asm64("smsw eax\n lmsw ax\n xor eax, 2", L2_CODE))
    assert vm.save.rip == L2_CODE + first and vm.nrip == L2_CODE + first + 3
    assert vm.save.cr0 == 0x80010011                     # MP not set: the write was intercepted


@pytest.mark.parametrize("insn, cpu", [("rdtscp", "EPYC,-rdtscp"), ("skinit", "EPYC,-skinit")])
def test_instruction_the_cpu_lacks_is_ud_before_its_intercept(insn, cpu):
    """RDTSCP hidden from CPUID, and SKINIT (no svmemu CPU has it), raise #UD in L2 even with
    their intercepts set: #UD comes before instruction intercepts (APM vol. 2, 15.7), and L1's
    #UD intercept takes it (kvm-unit-tests svm_unsupported_instruction_intercept_test)."""
    from emu.arch.vmcb import INTERCEPT_RDTSCP, INTERCEPT_SKINIT
    from emu.core.cpu_models import parse_cpu
    from tests.nested_image import EXIT_PASS, VMCB12, nested_image, vmcb12
    img = nested_image("mov rax, rdi\n vmrun\n" + EXIT_PASS, insn + "\n vmmcall",
                       vmcb12(misc2=INTERCEPT_VMRUN | INTERCEPT_VMMCALL | INTERCEPT_RDTSCP
                              | INTERCEPT_SKINIT, exceptions=1 << 6))
    m = Machine(128 << 20, stdout=None, extensions=[SvmExtension()], cpu=parse_cpu(cpu))
    m.load_multiboot(img, "test")
    assert m.run(timeout=20).reason == "exit"
    vm = Vmcb(m.mem.view, VMCB12)
    assert vm.exitcode == VMEXIT_EXCP0 + 6 and vm.save.rip == L2_CODE


# ---------------------------------------------------------------------------- svm_vmload_vmsave
VMCB_B, VMCB_C, VMCB_ORIG = 0x808000, 0x809000, 0x80A000


def test_vmload_vmsave_round_trip_in_guest_memory():
    g = run_guest("svm_vmload_vmsave")
    loaded, orig = Vmcb(g.machine.mem.view, VMCB_B).save, Vmcb(g.machine.mem.view, VMCB_ORIG).save
    assert loaded.fs == (0x10, 0xC93, 0xFFFFF, 0x0000123456789000)
    assert loaded.tr.selector == 0x20 and loaded.tr.attrib == 0x8B and loaded.tr.limit == 0x80
    assert loaded.ldtr == (0x28, 0x82, 0x1F, 0x3000)
    # What L1 had at boot (VMSAVE'd first) is back in the CPU at the end (VMLOAD'ed last).
    cpu = g.machine.msrs.cpu
    assert orig.tr.selector == 0x20 and orig.tr.limit == 103
    for name, msr in (("lstar", 0xC0000082), ("kernel_gs_base", 0xC0000102),
                      ("sysenter_eip", 0x176), ("star", 0xC0000081)):
        assert cpu.read(msr) == getattr(orig, name), name
    assert cpu.read(0xC0000100) == orig.fs.base


def test_vmsave_in_l2_without_intercept_saved_l2_state():
    g = run_guest("svm_vmload_vmsave")
    assert [(r.tag, r.exitcode) for r in g.log] == [(1, VMEXIT_VMMCALL), (2, VMEXIT_VMMCALL)]
    saved = Vmcb(g.machine.mem.view, VMCB_C).save
    assert saved.fs.base == 0xB000 and saved.lstar == 0xA200 and saved.kernel_gs_base == 0xA100
    vm = Vmcb(g.machine.mem.view, 0x800000)
    assert vm.save.rip == g.log[1].rip and vm.nrip == g.log[1].nrip == g.log[1].rip + 3


# ---------------------------------------------------------------------------- svm_event_inject
def test_event_inject_delivered_events_leave_no_trace_in_the_vmcb():
    g = run_guest("svm_event_inject")
    assert [r.tag for r in g.log] == list(range(1, 10))
    for r in g.log[:7]:
        assert (r.exitcode, r.info1, r.info2, r.intinfo) == (VMEXIT_VMMCALL, 0, 0, 0), r.tag
        assert r.nrip == r.rip + 3


def test_event_inject_delivery_fault_reports_the_injected_event():
    g = run_guest("svm_event_inject")
    np_exit, pf_exit = g.by_tag(8), g.by_tag(9)
    # INTR 0x41 through a not-present gate: #NP(0x41 << 3 | IDT | EXT), EXITINTINFO = the INTR.
    assert (np_exit.exitcode, np_exit.info1) == (VMEXIT_EXCP0 + 11, 0x41 << 3 | 2 | 1)
    assert np_exit.intinfo == eventinj_encode(0x41, EVENTINJ_TYPE_INTR)
    assert np_exit.nrip == 0
    # #GP(0x10) whose frame lands on a not-present page: #PF(write) at the first push below RSP.
    assert (pf_exit.exitcode, pf_exit.info1) == (VMEXIT_EXCP0 + 14, 2)
    assert 0x100000000 <= pf_exit.info2 < 0x100001000 and pf_exit.info2 % 8 == 0
    assert pf_exit.intinfo == eventinj_encode(13, EVENTINJ_TYPE_EXCEPTION, 0x10)
    vm = Vmcb(g.machine.mem.view, 0x800000)
    assert vm.eventinj == 0 and vm.save.rsp == 0x100001000 and vm.save.rip == pf_exit.rip
