"""The CPU side of the PC: CPU models and their CPUID, the AMD MSR table with its #GP rules,
CR4 writes checked against the model, and IPIs of every delivery mode as one CPU receives them."""
from __future__ import annotations

from pathlib import Path

import pytest

from emu.cli.main import main as cli_main
from emu.core.cpu_models import parse_cpu
from emu.core.machine import Machine
from emu.core.msr import GeneralProtection
from emu.errors import OptionError, Unsupported
from emu.loader.asm import GUESTS_DIR, assemble
from svm_ext.extension import SvmExtension
from tests.conftest import parse_tap
from tests import harness


def machine(cpu: str = "EPYC", svm: bool = True) -> Machine:
    model = parse_cpu(cpu)
    return Machine(128 << 20, stdout=None, cpu=model,
                   extensions=[SvmExtension()] if svm and model.svm else [])


# ---- models and CPUID ----------------------------------------------------------------------------
def test_epyc_is_the_default_and_max_is_epyc_with_later_features():
    default = Machine(128 << 20, stdout=None)
    for m in (default, machine("max,+svm")):
        eax = m.cpuid.query(1, 0)[0]
        assert (eax >> 8) & 0xF == 0xF and (eax >> 20) & 0xFF == 0x8      # family 17h
    epyc, top = machine("EPYC").cpuid.table, machine("max").cpuid.table
    assert {k: v for k, v in top.items() if k != (7, 0)} == \
        {k: v for k, v in epyc.items() if k != (7, 0)}
    # CLWB, PCOMMIT; UMIP, PKU, PKS: what max adds, and all EPYC lacks of them
    assert top[(7, 0)][1] == epyc[(7, 0)][1] | 1 << 24 | 1 << 22
    assert top[(7, 0)][2] == 1 << 2 | 1 << 3 | 1 << 31 and epyc[(7, 0)][2] == 0


def test_qemu64_is_family_15_with_svm_and_no_xsave():
    m = machine("qemu64")
    a, b, c, d = m.cpuid.query(1, 0)
    assert (a >> 8) & 0xF == 0xF and (a >> 20) & 0xFF == 0 and a == 0x00060FB1
    assert c & 1 and c & (1 << 13) and not c & (1 << 26)          # SSE3, CX16, no XSAVE
    assert m.cpuid.query(0x80000001, 0)[2] & (1 << 2)             # SVM (from the extension)
    assert m.cpuid.query(0xD, 0) == (0, 0, 0, 0)
    assert m.cpuid.query(0x80000001, 0)[3] & (1 << 29)            # long mode


def test_opteron_g1_is_family_15_model_6_without_svm_unless_asked():
    m = machine("Opteron_G1,vendor=AuthenticAMD")
    a, b, c, d = m.cpuid.query(1, 0)
    assert a == 0x00000F61 and c & 1 and not c & (1 << 13)         # SSE3, no CX16
    ext = m.cpuid.query(0x80000001, 0)
    assert not ext[2] & (1 << 2) and not ext[2] & 1                # no SVM, no LAHF-LM
    assert ext[3] & (1 << 29) and ext[3] & (1 << 11)               # long mode, SYSCALL
    assert not parse_cpu("Opteron_G1").svm
    assert parse_cpu("Opteron_G1,+svm").svm
    assert machine("Opteron_G1,+svm").cpuid.query(0x80000001, 0)[2] & (1 << 2)


def test_xsave_leaf_advertises_no_avx_state():
    """Unicorn raises #UD on VEX instructions, so XCR0 may hold x87 and SSE only."""
    m = machine()
    eax, ebx, ecx, edx = m.cpuid.query(0xD, 0)
    assert (eax, edx) == (3, 0) and ecx == 0x240
    assert not m.cpuid.query(1, 0)[2] & (1 << 28)                 # no AVX


def test_svm_features_leaf_only_what_svm_ext_implements():
    m = machine()
    edx = m.cpuid.query(0x8000000A, 0)[3]
    # NP, LBR virtualization, NRIP save, TSC ratio, flush by ASID, decode assists, PAUSE filter
    # and its threshold, vGIF; not GMET or vNMI (EPYC's Zen 1 lacks them; `max` has both,
    # `+gmet` and `+vnmi` grant them)
    assert edx == 0b1011 | 1 << 4 | 1 << 6 | 1 << 7 | 1 << 10 | 1 << 12 | 1 << 16
    assert machine("max").cpuid.query(0x8000000A, 0)[3] == edx | 1 << 17 | 1 << 25
    assert machine("EPYC,+vnmi").cpuid.query(0x8000000A, 0)[3] == edx | 1 << 25
    assert machine("EPYC,+gmet").cpuid.query(0x8000000A, 0)[3] == edx | 1 << 17
    assert machine("qemu64").cpuid.query(0x8000000A, 0)[3] == 0b1001 | 1 << 16
    assert not machine("EPYC,-vgif").cpuid.query(0x8000000A, 0)[3] & (1 << 16)


def test_features_added_and_hidden():
    m = machine("EPYC,+perfctr-core,-smap,ibpb=on,x2apic=off")
    assert m.cpuid.query(0x80000001, 0)[2] & (1 << 23)
    assert not m.cpuid.query(7, 0)[1] & (1 << 20)
    assert m.cpuid.query(0x80000008, 0)[1] & (1 << 12)
    assert not m.cpuid.query(1, 0)[2] & (1 << 21)                  # hidden after the APIC's override
    m = machine("EPYC,-svm")
    assert not m.cpuid.query(0x80000001, 0)[2] & (1 << 2)
    assert not parse_cpu("EPYC,-svm").svm


@pytest.mark.parametrize("spec, message", [
    ("pentium", "unknown CPU model"),
    ("EPYC,+warp-drive", "unknown CPU feature"),
    ("EPYC,+avx", "not implemented"),
    ("qemu64,+avic", "not implemented"),
    ("EPYC,smap", "bad CPU feature"),
    ("EPYC,vendor=GenuineIntel", "not implemented"),
])
def test_bad_cpu_specs_are_option_errors(spec, message):
    with pytest.raises(OptionError, match=message):
        parse_cpu(spec)


def test_cli_unknown_cpu_model_exits_2(capsys):
    image = str(GUESTS_DIR / "hello.S")
    assert cli_main(["run", image, "-cpu", "pentium"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown CPU model 'pentium'" in err


# ---- the MSR table ---------------------------------------------------------------------------------
def gp(m: Machine, op: str, index: int, value: int = 0) -> bool:
    try:
        m.msrs.rdmsr(index) if op == "r" else m.msrs.wrmsr(index, value)
    except GeneralProtection:
        return True
    return False


def test_legacy_perf_event_selects_and_counters():
    m = machine()
    for n in range(4):
        m.msrs.wrmsr(0xC0010000 + n, 0x3_0000_00C0 | (0x3 << 16))   # host/guest only, USR|OS
        assert m.msrs.rdmsr(0xC0010000 + n) == 0x3_0003_00C0
        assert gp(m, "w", 0xC0010000 + n, 1 << 19)                   # reserved bit 19
        assert gp(m, "w", 0xC0010000 + n, 1 << 42)                   # reserved 63:42
        m.msrs.wrmsr(0xC0010004 + n, (1 << 64) - 1)
        assert m.msrs.rdmsr(0xC0010004 + n) == (1 << 48) - 1          # 48-bit counters
    with pytest.raises(Unsupported, match="not counted"):
        m.msrs.wrmsr(0xC0010000, 1 << 22)                            # EN: would count events


def test_core_perf_msrs_only_with_perfctr_core_and_alias_the_legacy_ones():
    m = machine()
    assert gp(m, "r", 0xC0010200) and gp(m, "w", 0xC001020B, 0)
    m = machine("EPYC,+perfctr-core")
    m.msrs.wrmsr(0xC0010203, 1234)                                   # PerfCtr1
    assert m.msrs.rdmsr(0xC0010005) == 1234
    m.msrs.wrmsr(0xC001020A, 0x76)                                   # PerfEvtSel5: no alias
    assert m.msrs.rdmsr(0xC001020A) == 0x76 and gp(m, "r", 0xC001020C)


def test_debugctl_and_the_lbr_msrs():
    m = machine()
    m.msrs.wrmsr(0x1D9, 0x3C)                                        # PB0-PB3
    assert m.msrs.rdmsr(0x1D9) == 0x3C
    assert gp(m, "w", 0x1D9, 1 << 6)
    with pytest.raises(Unsupported):
        m.msrs.wrmsr(0x1D9, 2)                                       # BTF
    m.msrs.wrmsr(0x1D9, 1)                                           # LBR: emu/core/lbr.py
    assert m.msrs.rdmsr(0x1D9) == 1 and m.lbr.recording
    for index in range(0x1DB, 0x1DF):
        assert m.msrs.rdmsr(index) == 0 and gp(m, "w", index, 0)


def test_machine_check_msrs():
    m = machine()
    cap = m.msrs.rdmsr(0x179)
    banks = cap & 0xFF
    assert cap & (1 << 8) and banks == 10 and gp(m, "w", 0x179, cap)
    assert gp(m, "w", 0x17A, 1 << 3)
    m.msrs.wrmsr(0x17A, 0)
    for i in range(banks):
        ctl = 0x400 + 4 * i
        m.msrs.wrmsr(ctl, 0)
        m.msrs.wrmsr(ctl, (1 << 64) - 1)
        assert gp(m, "w", ctl, 0x8000_0000_0000_0000 >> 16)           # neither 0 nor all ones
        m.msrs.wrmsr(ctl + 1, 0)
        assert gp(m, "w", ctl + 1, 1)                                # STATUS: 0 only ...
        m.msrs.wrmsr(ctl + 2, (1 << 64) - 1)
        m.msrs.wrmsr(ctl + 3, 0x1234)
        assert m.msrs.rdmsr(ctl + 3) == 0x1234
    assert gp(m, "r", 0x400 + 4 * banks) and gp(m, "w", 0x400 + 4 * banks + 1, 0)
    hwcr = m.msrs.rdmsr(0xC0010015)
    m.msrs.wrmsr(0xC0010015, hwcr | (1 << 18))                       # ... unless McStatusWrEn
    m.msrs.wrmsr(0x401, 0xBAD)
    assert m.msrs.rdmsr(0x401) == 0xBAD


def test_hwcr_syscfg_and_intel_only_msrs():
    m = machine()
    assert m.msrs.rdmsr(0xC0010015) & (1 << 24)                      # TscFreqSel
    m.msrs.wrmsr(0xC0010015, 0)
    assert m.msrs.rdmsr(0xC0010015) == 1 << 24                       # read-only 1
    assert gp(m, "w", 0xC0010015, 1 << 40)
    with pytest.raises(Unsupported):
        m.msrs.wrmsr(0xC0010015, 1 << 17)                            # Wrap32Dis
    assert m.msrs.rdmsr(0xC0010010) == 1 << 20                       # MtrrVarDramEn
    assert gp(m, "w", 0xC0010010, 1 << 23)                           # SMEE: no SME on this model
    for intel in (0x17, 0x3A, 0x1A0, 0x345, 0x480, 0x38F):
        assert gp(m, "r", intel) and gp(m, "w", intel, 0)


def test_speculation_msrs_follow_cpuid():
    m = machine()
    assert gp(m, "r", 0x48) and gp(m, "w", 0x49, 1)
    m = machine("EPYC,+ibpb,+ibrs,+amd-stibp,+amd-ssbd")
    m.msrs.wrmsr(0x48, 7)
    assert m.msrs.rdmsr(0x48) == 7 and gp(m, "w", 0x48, 8)
    m.msrs.wrmsr(0x49, 1)
    assert gp(m, "r", 0x49) and gp(m, "w", 0x49, 2)


def test_tsc_ratio_and_xss_absent_without_their_features():
    m = machine()
    assert not gp(m, "r", 0xC0000104) and gp(m, "r", 0xDA0)         # EPYC reports TscRateMsr
    assert gp(machine("EPYC,-tsc-scale"), "r", 0xC0000104)
    assert gp(machine("EPYC,-svm"), "r", 0xC0000104)
    # PATCH_LEVEL: read-only, at the level QEMU reports for its AMD models (Xen prints it as
    # "BSP microcode revision: 0x01000065" on both).
    assert m.msrs.rdmsr(0x8B) == 0x01000065 and gp(m, "w", 0x8B, 0)


def test_vm_cr_only_with_svm():
    assert not gp(machine(), "r", 0xC0010114)
    assert gp(machine("EPYC,-svm"), "r", 0xC0010114)
    assert gp(machine("EPYC,-svm"), "w", 0xC0000080, 1 << 12)       # EFER.SVME reserved


# ---- guests -------------------------------------------------------------------------------------------
def boot(source: str, tmp_path: Path, cpu: str = "EPYC"):
    path = harness.source(tmp_path, source, "g.S")
    b = harness.boot(path, cpu=cpu, cmdline=path, timeout=60)
    return b.machine, b.result, b.serial


CR4_GUEST = r'''
.include "prelude.inc"
.macro cr4_gp bit, name, name2
    mov rax, cr4
    mov rbx, rax
    or rax, \bit
    expect_fault .Lr\@
    mov cr4, rax
.Lr\@:
    check_eq [fault_vector], 13, "\name"
    mov rax, cr4
    check_eq rax, rbx, "\name2"
.endm
main:
    cr4_gp 0x1000, "CR4.LA57 raises #GP", "CR4 unchanged by LA57"
    cr4_gp 0x800, "CR4.UMIP raises #GP", "CR4 unchanged by UMIP"
    cr4_gp 0x400000, "CR4.PKE raises #GP", "CR4 unchanged by PKE"
    cr4_gp 0x20000, "CR4.PCIDE raises #GP", "CR4 unchanged by PCIDE"
    cr4_gp 0x1000000, "CR4 bit 24 raises #GP", "CR4 unchanged by bit 24"
    mov rax, cr4
    and rax, ~0x20
    expect_fault .Lpae
    mov cr4, rax
.Lpae:
    check_eq [fault_vector], 13, "clearing CR4.PAE in long mode raises #GP"
    mov rax, cr4
    or rax, 0x40000
    expect_fault .Losx
    mov cr4, rax
.Losx:
    mov rbx, [rip + fault_vector]
    mov [rip + osxsave_fault], rbx
    mov eax, 1
    cpuid
    shr ecx, 27
    and ecx, 1
    mov [rip + osxsave_cpuid], rcx
    mov rax, cr4
    shr rax, 18
    and eax, 1
    check_eq [osxsave_cpuid], rax, "CPUID.1:ECX.OSXSAVE mirrors CR4.OSXSAVE"
    mov rax, cr4
    or rax, 0x80
    mov cr4, rax
    mov rax, cr4
    check_mask rax, 0x80, 0x80, "CR4.PGE is set"
    ret
.bss
osxsave_fault: .space 8
osxsave_cpuid: .space 8
.text
'''


@pytest.mark.parametrize("cpu, osxsave", [("EPYC", True), ("qemu64", False)])
def test_cr4_reserved_bits_raise_gp(tmp_path, cpu, osxsave):
    m, res, out = boot(CR4_GUEST, tmp_path, cpu)
    checks = parse_tap(out)
    assert res.reason == "exit" and len(checks) == 13, out
    assert all(c.ok for c in checks.values()), out
    at = assemble(str(tmp_path / "g.S")).symbols["osxsave_fault"]
    fault = int.from_bytes(m.ram[at:at + 8], "little")
    assert (fault == (1 << 64) - 1) == osxsave        # XSAVE models take OSXSAVE, qemu64 #GPs


XSETBV_GUEST = r'''
.include "prelude.inc"
main:
    mov rax, cr4
    or rax, 1 << 18                     # CR4.OSXSAVE
    mov cr4, rax
    xor ecx, ecx
    xor edx, edx
    mov eax, 3                          # x87 | SSE: the components the model reports
    xsetbv
    xor ecx, ecx
    xgetbv
    mov [xcr0_after_3], rax
    expect_fault .Lavx
    xor ecx, ecx
    xor edx, edx
    mov eax, 7                          # | AVX, which CPUID 0xD does not report
    xsetbv
.Lavx:
    mov rax, [fault_vector]
    mov [avx_fault], rax
    xor ecx, ecx
    xgetbv
    mov [xcr0_after_7], rax
    jmp report
.align 8
xcr0_after_3: .quad 0
xcr0_after_7: .quad 0
avx_fault: .quad 0
'''


def test_xsetbv_takes_only_the_models_xsave_components(tmp_path):
    """XCR0 bits beyond CPUID 0xD's EDX:EAX raise #GP(0) and leave XCR0 as it was (APM vol. 3,
    XSETBV); Unicorn would check them against its own EPYC, which has AVX."""
    m, res, out = boot(XSETBV_GUEST, tmp_path)
    assert res.reason == "exit", (res, out)
    sym = assemble(str(tmp_path / "g.S")).symbols
    word = lambda name: int.from_bytes(m.ram[sym[name]:sym[name] + 8], "little")  # noqa: E731
    assert word("xcr0_after_3") == 3
    assert word("avx_fault") == 13
    assert word("xcr0_after_7") == 3


IPI_GUEST = r'''
.include "prelude.inc"
.include "svm.inc"
.equ APIC, 0xfee00000
.equ ICR_LO, 0x300
.equ ICR_HI, 0x310
main:
    mov r15, APIC
    mov dword ptr [r15 + 0xf0], 0x1ff
    mov dword ptr [r15 + ICR_HI], 0
    mov dword ptr [r15 + ICR_LO], 0xC4500       # INIT, all excluding self
    mov dword ptr [r15 + ICR_LO], 0xC0610       # SIPI vector 0x10, all excluding self
    mov dword ptr [r15 + ICR_HI], 0x05000000
    mov dword ptr [r15 + ICR_LO], 0x04500       # INIT to APIC ID 5: not present
    jmp .Lj1
.Lj1:
    check_eq [marker], 0, "INIT and SIPI to other CPUs reach no one"
    mov dword ptr [r15 + ICR_LO], 0x44200       # SMI to self
    jmp .Lj2
.Lj2:
    check_eq [marker], 0, "an SMI to self is taken by the platform and returns"

    call svm_enable
    lea rdi, [rip + l2_init]
    call vmcb_init
    mov rdi, VMCB
    or dword ptr [rdi + V_INTERCEPT_MISC1], 1 << 3     # INIT
    run_l2 1
    check_exit 0x63, "INIT to self in L2 exits with #VMEXIT(INIT)"
    mov ecx, 0xc0010114
    rdmsr
    or eax, 2                                   # VM_CR.R_INIT
    wrmsr
    expect_fault .Lsx
    stgi                                        # the held INIT, now redirected
    nop
.Lsx:
    check_eq [fault_vector], 30, "with R_INIT the pending INIT becomes #SX"
    check_eq [fault_err], 1, "#SX error code 1"
    ret
l2_init:
    mov dword ptr [r15 + ICR_LO], 0x44500       # INIT to self
    vmmcall
.bss
marker: .space 8
.text
'''


def test_ipis_on_one_cpu(tmp_path):
    m, res, out = boot(IPI_GUEST, tmp_path)
    checks = parse_tap(out)
    assert res.reason == "exit" and res.status == 1, (res, out)
    assert len(checks) == 5 and all(c.ok for c in checks.values()), out
    assert not m.apic.signal_pending


INIT_SELF = r'''
.include "prelude.inc"
main:
    mov r15, 0xfee00000
    mov dword ptr [r15 + 0xf0], 0x1ff
    mov dword ptr [r15 + 0x300], 0x44500        # INIT to self, L1, no SVM redirection
    jmp .Lj1
.Lj1:
    print "not reached\n"
    ret
'''


def test_init_to_the_boot_cpu_restarts_the_machine(tmp_path):
    """INIT of the boot CPU restarts it in the firmware, which reboots (CMOS shutdown status
    0): the run ends as a reset does."""
    m, res, out = boot(INIT_SELF, tmp_path)
    assert res.reason == "reset" and res.status == 4 and "INIT" in res.message, res
    assert "not reached" not in out


def test_init_with_a_resume_code_stops_unsupported(tmp_path):
    src = INIT_SELF.replace("main:\n", "main:\n    mov al, 0x0f\n    out 0x70, al\n"
                            "    mov al, 0x0a\n    out 0x71, al\n")
    m, res, out = boot(src, tmp_path)
    assert res.reason == "unsupported" and "40:67" in res.message, res
    assert "not reached" not in out


def test_efer_bits_follow_the_model():
    m = machine("EPYC,-nx")
    efer = m.msrs.rdmsr(0xC0000080)
    assert gp(m, "w", 0xC0000080, efer | 1 << 11)
    m.msrs.wrmsr(0xC0000080, efer | 1)                               # SCE still there
    m = machine()
    m.msrs.wrmsr(0xC0000080, efer | (1 << 11) | 1)
    assert m.msrs.rdmsr(0xC0000080) & 0x801 == 0x801
    assert gp(m, "w", 0xC0000080, efer | 1 << 14)                    # FFXSR: EPYC reports none
    assert gp(m, "w", 0xC0000080, efer | 1 << 13) and gp(m, "w", 0xC0000080, efer | 1 << 15)


RDPMC_GUEST = r'''
.include "prelude.inc"
main:
    wrmsr64 0xc0010005, 0x123456789a
    mov ecx, 1
    rdpmc
    shl rdx, 32
    or rax, rdx
    check_eq rax, 0x123456789a, "RDPMC 1 reads PerfCtr1"
    mov ecx, 4
    expect_fault .L1
    rdpmc
.L1:
    mov rax, [rip + fault_vector]
    mov [rip + idx4], rax
    mov ecx, 6
    expect_fault .L2
    rdpmc
.L2:
    check_eq [fault_vector], 13, "RDPMC 6 raises #GP"
    ret
.bss
idx4: .space 8
.text
'''


@pytest.mark.parametrize("cpu, idx4_faults", [("EPYC", True), ("EPYC,+perfctr-core", False)])
def test_rdpmc_reads_the_counters(tmp_path, cpu, idx4_faults):
    m, res, out = boot(RDPMC_GUEST, tmp_path, cpu)
    checks = parse_tap(out)
    assert res.reason == "exit" and len(checks) == 2 and all(c.ok for c in checks.values()), out
    at = assemble(str(tmp_path / "g.S")).symbols["idx4"]
    vector = int.from_bytes(m.ram[at:at + 8], "little")
    assert vector == (13 if idx4_faults else (1 << 64) - 1)


def test_vmrun_checks_use_the_models_cr4_and_efer():
    from svm_ext.checks import CR4_DEFAULT_SUPPORTED
    from emu.arch.bits import CR4_OSXSAVE, CR4_SMEP, EFER_FFXSR, EFER_NXE, EFER_SVME
    epyc, q64 = SvmExtension(), SvmExtension()
    Machine(128 << 20, stdout=None, cpu=parse_cpu("EPYC"), extensions=[epyc])
    Machine(128 << 20, stdout=None, cpu=parse_cpu("qemu64"), extensions=[q64])
    assert epyc.caps.cr4_supported == CR4_DEFAULT_SUPPORTED     # EPYC is the default model
    assert epyc.caps.cr4_supported & (CR4_OSXSAVE | CR4_SMEP) == CR4_OSXSAVE | CR4_SMEP
    assert not q64.caps.cr4_supported & (CR4_OSXSAVE | CR4_SMEP)
    for ext in (epyc, q64):
        assert ext.caps.efer_supported & (EFER_NXE | EFER_SVME) == EFER_NXE | EFER_SVME
        assert not ext.caps.efer_supported & EFER_FFXSR


MOVABS_ICR = r'''
.include "prelude.inc"
main:
    set_idt_handler 0x66, handler
    mov r15, 0xfee00000
    mov dword ptr [r15 + 0xf0], 0x1ff
    mov eax, 0x40066                            # fixed, vector 0x66, to self
    sti
    nop                                         # past STI's interrupt shadow
    .byte 0xa3, 0x00, 0x03, 0xe0, 0xfe, 0x00, 0x00, 0x00, 0x00   # movabs [0xfee00300], eax
    nop
    cli
    check_eq [count], 1, "a self-IPI sent by MOVABS to the ICR arrives once"
    ret
handler:
    inc qword ptr [rip + count]
    mov dword ptr [r15 + 0xb0], 0
    iretq
.bss
count: .space 8
.text
'''


def test_icr_store_by_movabs_sends_one_ipi(tmp_path):
    """The store that sends an interrupt deliverable at once is completed, not restarted, also
    when it is the moffs form (A3) compilers emit for constant addresses."""
    m, res, out = boot(MOVABS_ICR, tmp_path)
    checks = parse_tap(out)
    assert res.reason == "exit" and len(checks) == 1 and all(c.ok for c in checks.values()), out


def test_every_model_reports_the_hypervisor_bit_as_qemu_does():
    """QEMU sets CPUID 1 ECX[31] on every named model; `-hypervisor` takes it away."""
    for model in ("EPYC", "qemu64", "Opteron_G1"):
        assert machine(model).cpuid.query(1, 0)[2] >> 31 == 1, model
    assert machine("EPYC,-hypervisor").cpuid.query(1, 0)[2] >> 31 == 0


@pytest.mark.parametrize("cpu, name", [("EPYC", "AMD EPYC Processor"),
                                       ("qemu64", "QEMU Virtual CPU version 2.5+"),
                                       ("Opteron_G1", "AMD Opteron 240 (Gen 1 Class Opteron)")])
def test_the_processor_name_is_qemus_model_id(cpu, name):
    """Linux prints it ("smpboot: CPU0: AMD EPYC Processor (family: 0x17, ...)") as on QEMU."""
    m = machine(cpu)
    raw = b"".join(r.to_bytes(4, "little") for leaf in range(0x80000002, 0x80000005)
                   for r in m.cpuid.query(leaf, 0))
    assert raw.rstrip(b"\0").decode() == name and len(raw) == 48


def test_nb_cfg_extends_config_address_to_registers_without_a_function():
    """NB_CFG.EnableCf8ExtCfg (Linux sets it on AMD family 10h and later): CONFIG_ADDRESS bits
    27:24 address registers 0x100 and up, which the pc machine's PCI functions do not have."""
    m = machine()
    assert gp(m, "w", 0xC001001F, 1) and m.msrs.rdmsr(0xC001001F) == 0
    pci = m.pc.pci
    ext_vendor = 0x8000_0000 | 0x0100_0000           # 00:00.0, register 0x100
    pci.write(0xCF8, 4, ext_vendor)
    assert pci.read(0xCFC, 4) == 0x12378086          # bits 27:24 reserved: the vendor ID
    m.msrs.wrmsr(0xC001001F, 1 << 46)
    pci.write(0xCF8, 4, ext_vendor)
    assert pci.read(0xCFC, 4) == 0xFFFFFFFF and pci.read(0xCF8, 4) == ext_vendor
    pci.write(0xCF8, 4, 0x8000_0000)
    assert pci.read(0xCFC, 4) == 0x12378086
