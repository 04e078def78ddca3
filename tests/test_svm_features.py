"""SVM features beyond the base (CPUID 8000_000A EDX), one L1 at a time: each test runs an L2
under a vmcb12 prepared in Python and reads what the #VMEXIT left in vmcb12 and the registers.

PAUSE filter (APM vol. 2, 15.14.4): L2 counts its completed PAUSEs in R13, so the PAUSE that
exits shows as R13 = the PAUSEs before it.
vNMI (15.21.10): L2's NMI handler counts in R15; vmcb12's V_NMI and V_NMI_MASK after the exit
say what is still pending and blocked."""
from __future__ import annotations

import pytest
from unicorn.x86_const import UC_X86_REG_R12, UC_X86_REG_R13, UC_X86_REG_R14, UC_X86_REG_R15

from emu.arch.vmcb import (INTERCEPT_NMI, INTERCEPT_PAUSE, VMEXIT_INVALID, VMEXIT_PAUSE,
                           VMEXIT_VMMCALL)
from emu.core.cpu_models import FEATURES
from tests import harness
from tests.nested_image import EXIT_PASS, L2_CODE, nested_image, vmcb12
from tests.tinyimage import asm64, gate64, handler

ONCE = "mov rax, rdi\n vmrun\n" + EXIT_PASS


def edx(b: harness.Booted) -> int:
    return b.machine.cpuid.query(0x8000000A, 0)[3]


def bit(name: str) -> int:
    return FEATURES[name][3]


# ---- PAUSE filter ----------------------------------------------------------------------------
def pauses(n: int) -> str:
    return "".join("pause\n inc r13\n" for _ in range(n))


def spin(iterations: int) -> str:
    """About 2 * iterations instructions with no PAUSE."""
    return f"mov ecx, {iterations}\n spin: dec ecx\n jnz spin\n"


def run_pause(l2: str, cpu: str | None = None, **fields: int) -> tuple[harness.Booted, int]:
    b = harness.boot(nested_image(ONCE, "xor r13, r13\n" + l2 + "vmmcall\n",
                                  vmcb12(misc1=INTERCEPT_PAUSE, **fields)), cpu=cpu)
    assert b.result.reason == "exit", b.result
    return b, b.machine.uc.reg_read(UC_X86_REG_R13)


def test_epyc_reports_pause_filter_and_threshold():
    b, _ = run_pause(pauses(1))
    assert edx(b) & bit("pause-filter") and edx(b) & bit("pfthreshold")
    assert not edx(harness.boot(nested_image(ONCE, "vmmcall", vmcb12()), cpu="qemu64")) \
        & bit("pause-filter")


@pytest.mark.parametrize("count, executed", [(1, 0), (2, 1), (5, 4)])
def test_the_pause_that_brings_the_count_to_zero_exits(count, executed):
    b, r13 = run_pause(pauses(8), pause_filter_count=count)
    vm = b.vmcb12
    assert vm.exitcode == VMEXIT_PAUSE and r13 == executed
    first = L2_CODE + len(asm64("xor r13, r13", L2_CODE))
    step = len(asm64(pauses(1), 0))
    assert vm.save.rip == first + executed * step      # at the PAUSE that exits
    assert vm.nrip == vm.save.rip + 2


def test_fewer_pauses_than_the_count_complete_in_l2():
    b, r13 = run_pause(pauses(4), pause_filter_count=5)
    assert b.vmcb12.exitcode == VMEXIT_VMMCALL and r13 == 4


def test_count_zero_makes_every_pause_exit():
    b, r13 = run_pause(pauses(3), pause_filter_count=0)
    assert b.vmcb12.exitcode == VMEXIT_PAUSE and r13 == 0


def test_without_the_feature_the_count_is_ignored():
    b, r13 = run_pause(pauses(3), cpu="EPYC,-pause-filter", pause_filter_count=5)
    assert not edx(b) & bit("pause-filter")
    assert b.vmcb12.exitcode == VMEXIT_PAUSE and r13 == 0


def test_count_applies_only_while_l1_intercepts_pause():
    b = harness.boot(nested_image(ONCE, pauses(3) + "vmmcall", vmcb12(pause_filter_count=1)))
    assert b.vmcb12.exitcode == VMEXIT_VMMCALL


# Four PAUSEs in two pairs with a gap between the pairs, count 3: counted as one loop the third
# PAUSE exits; with the gap beyond the threshold the second pair starts a new loop (reload).
TWO_LOOPS = "{p}" + "{gap}" + "{p}"


@pytest.mark.parametrize("gap, threshold, cpu, exits", [
    (100, 0, None, True),             # no threshold: one count over all four
    (100, 50, None, False),           # ~200 instructions > 50: the count reloads
    (5, 50, None, True),              # ~10 instructions < 50: the same loop
    (100, 50, "EPYC,-pfthreshold", True),   # threshold not reported: ignored
])
def test_threshold_reloads_the_count_after_a_long_gap(gap, threshold, cpu, exits):
    l2 = TWO_LOOPS.format(p=pauses(2), gap=spin(gap))
    b, r13 = run_pause(l2, cpu=cpu, pause_filter_count=3, pause_filter_threshold=threshold)
    if exits:
        # the first PAUSE reloads when a threshold counts (no PAUSE before it), else decrements
        assert b.vmcb12.exitcode == VMEXIT_PAUSE and r13 == (3 if threshold and not cpu else 2)
    else:
        assert b.vmcb12.exitcode == VMEXIT_VMMCALL and r13 == 4


# ---- vNMI ------------------------------------------------------------------------------------
V_NMI, V_NMI_MASK, V_GIF, V_NMI_ENABLE, V_GIF_ENABLE = 1 << 11, 1 << 12, 1 << 9, 1 << 26, 1 << 25
NMI_COUNTS = "inc r15\n iretq"               # L2's NMI handler
NMI_EXITS = "inc r15\n vmmcall"              # one that never returns: blocking stays


def run_vnmi(l2: str, vintr: int, cpu: str | None = "max", misc1: int = INTERCEPT_NMI,
             nmi_handler: str = NMI_COUNTS) -> tuple[harness.Booted, int]:
    b = harness.boot(nested_image("xor r15, r15\n" + ONCE, l2, vmcb12(misc1=misc1, vintr=vintr),
                                  idt={2: gate64(handler(0))}, handlers=[nmi_handler]), cpu=cpu)
    assert b.result.reason == "exit", b.result
    return b, b.machine.uc.reg_read(UC_X86_REG_R15)


def test_vnmi_reported_by_max_and_granted_to_epyc():
    assert edx(harness.boot(nested_image(ONCE, "vmmcall", vmcb12()), cpu="max")) & bit("vnmi")
    assert not edx(harness.boot(nested_image(ONCE, "vmmcall", vmcb12()))) & bit("vnmi")
    assert edx(harness.boot(nested_image(ONCE, "vmmcall", vmcb12()), cpu="EPYC,+vnmi")) \
        & bit("vnmi")


def test_vnmi_without_the_nmi_intercept_is_invalid():
    b, r15 = run_vnmi("vmmcall", V_NMI_ENABLE | V_NMI, misc1=0)
    assert b.vmcb12.exitcode == VMEXIT_INVALID and r15 == 0
    assert "NMI intercept" in b.ext.last_invalid_reason
    # Without vNMI reported the bit is ignored: no check, no virtual NMI.
    b, r15 = run_vnmi("vmmcall", V_NMI_ENABLE | V_NMI, cpu="EPYC", misc1=0)
    assert b.vmcb12.exitcode == VMEXIT_VMMCALL and r15 == 0


def test_pending_vnmi_is_taken_at_once_whatever_if():
    b, r15 = run_vnmi("vmmcall", V_NMI_ENABLE | V_NMI)       # vmcb12's RFLAGS.IF is 0
    vm = b.vmcb12
    assert vm.exitcode == VMEXIT_VMMCALL and r15 == 1
    assert (vm.v_nmi, vm.v_nmi_mask, vm.v_nmi_enable) == (0, 0, 1)   # taken; its IRET unblocked


def test_vnmi_handler_still_running_leaves_the_mask_set():
    b, r15 = run_vnmi("vmmcall", V_NMI_ENABLE | V_NMI, nmi_handler=NMI_EXITS)
    vm = b.vmcb12
    assert vm.exitcode == VMEXIT_VMMCALL and r15 == 1
    assert (vm.v_nmi, vm.v_nmi_mask) == (0, 1)


def test_masked_vnmi_waits_for_l2_iret():
    b, r15 = run_vnmi("inc r13\n vmmcall", V_NMI_ENABLE | V_NMI | V_NMI_MASK)
    vm = b.vmcb12
    assert vm.exitcode == VMEXIT_VMMCALL and r15 == 0 and (vm.v_nmi, vm.v_nmi_mask) == (1, 1)
    # An IRET of L2's own (to the next instruction) ends the blocking: the NMI comes after it.
    iret_to_next = """
        mov rax, rsp
        push 0x10
        push rax
        pushfq
        push 0x8
        lea rax, [rip + after]
        push rax
        iretq
    after:
        mov r14, r15
        vmmcall
    """
    b, r15 = run_vnmi(iret_to_next, V_NMI_ENABLE | V_NMI | V_NMI_MASK)
    vm = b.vmcb12
    assert vm.exitcode == VMEXIT_VMMCALL and r15 == 1
    assert b.machine.uc.reg_read(UC_X86_REG_R14) == 1      # taken right after the IRET
    assert (vm.v_nmi, vm.v_nmi_mask) == (0, 0)


def test_vnmi_waits_for_v_gif():
    b, r15 = run_vnmi("vmmcall", V_NMI_ENABLE | V_NMI | V_GIF_ENABLE)
    assert r15 == 0 and (b.vmcb12.v_nmi, b.vmcb12.v_nmi_mask) == (1, 0)
    b, r15 = run_vnmi("vmmcall", V_NMI_ENABLE | V_NMI | V_GIF_ENABLE | V_GIF)
    assert r15 == 1 and b.vmcb12.v_nmi == 0


# ---- decode assists --------------------------------------------------------------------------
# EXITINFO1 and the instruction bytes the CPU hands the hypervisor (APM vol. 2, chapter 15,
# "Decode Assists"); the svm_intercepts guest checks the common cases (tests/test_nested_guests).
CR_VALID = 1 << 63


def run_intercepted(l2: str, cpu: str | None = None, **fields: int) -> harness.Booted:
    b = harness.boot(nested_image(ONCE, l2 + "\n vmmcall", vmcb12(**fields)), cpu=cpu)
    assert b.result.reason == "exit", b.result
    return b


@pytest.mark.parametrize("l2, fields, code, info1", [
    ("mov r9, cr3", dict(intercept_cr_read=1 << 3), 0x03, CR_VALID | 9),       # REX.B
    ("mov cr4, r14", dict(intercept_cr_write=1 << 4), 0x14, CR_VALID | 14),
    ("smsw eax", dict(intercept_cr_read=1), 0x00, 0),                           # no GPR named
    ("clts", dict(intercept_cr_write=1), 0x10, 0),
    ("mov eax, 0xe\n lmsw ax", dict(intercept_cr_write=1), 0x10, 0),
    ("mov r12, dr3", dict(intercept_dr_read=1 << 3), 0x23, 12),
    ("mov dr2, rsi", dict(intercept_dr_write=1 << 2), 0x32, 6),
    ("mov rbx, 0x7000\n invlpg [rbx + 0x123]", dict(misc1=1 << 25), 0x79, 0x7123),
    ("int 0x41", dict(misc1=1 << 21), 0x75, 0x41),
])
def test_decode_assists_exitinfo1(l2, fields, code, info1):
    b = run_intercepted(l2, **fields)
    assert (b.vmcb12.exitcode, b.vmcb12.exitinfo1) == (code, info1)
    # Without the feature reported, the same exit carries nothing.
    b = run_intercepted(l2, cpu="EPYC,-decodeassists", **fields)
    assert (b.vmcb12.exitcode, b.vmcb12.exitinfo1) == (code, 0)


def test_pf_intercept_carries_the_instruction_bytes():
    l2 = "mov rbx, 0x100000000\n mov rax, [rbx]\n nop\n nop"
    b = run_intercepted(l2, exceptions=1 << 14)
    vm = b.vmcb12
    assert vm.exitcode == 0x4E and vm.exitinfo2 == 0x100000000
    assert vm.insn_len == 15
    faulting = L2_CODE + len(asm64("mov rbx, 0x100000000", L2_CODE))
    assert vm.save.rip == faulting
    expected = bytes(b.machine.mem.view[faulting:faulting + 15])
    assert vm.insn_bytes == expected and expected.startswith(asm64("mov rax, [rbx]", 0))
    b = run_intercepted(l2, cpu="EPYC,-decodeassists", exceptions=1 << 14)
    assert b.vmcb12.exitcode == 0x4E and b.vmcb12.insn_len == 0


def test_npf_carries_the_instruction_bytes_and_none_for_a_fetch():
    from tests.test_npf import PAGE4K, read, fetch, run_npf, set_entry
    hide = (lambda t: set_entry(t, PAGE4K, 1, clear=1))
    m, vm, _ = run_npf(read(PAGE4K + 0x18), hide)
    assert vm.exitcode == 0x400 and vm.insn_len == 15
    rip = vm.save.rip
    assert vm.insn_bytes == bytes(m.mem.view[rip:rip + 15])      # L2 code is identity-mapped
    assert vm.insn_bytes.startswith(asm64("mov rax, [rbx]", 0))
    m, vm, _ = run_npf(fetch(PAGE4K), hide)
    assert vm.exitcode == 0x400 and vm.save.rip == PAGE4K and vm.insn_len == 0


# ---- flush by ASID ---------------------------------------------------------------------------
@pytest.mark.parametrize("tlb_control", [1, 3, 7])
def test_tlb_control_flushes_what_l1_changed_between_runs(tlb_control):
    """L1 remaps L2's page at 6 MiB between two VMRUNs (L2 shares L1's 2 MiB page tables)
    without INVLPG: the TLB_CONTROL flush makes L2 see the new page."""
    pd = 0x22000                                     # tinyimage's page directory
    l1 = f"""
        mov rbx, 0x600000
        mov qword ptr [rbx], 0x1111
        mov rbx, 0x800000
        mov qword ptr [rbx], 0x2222
        mov rax, rdi
        vmrun
        mov r12, r15
        mov rcx, {pd + 3 * 8}
        mov qword ptr [rcx], 0x800083
        mov rax, [rdi + 0x578]
        add rax, 3                 # past the VMMCALL
        mov [rdi + 0x578], rax
        mov rax, rdi
        vmrun
    """ + EXIT_PASS
    l2 = ("mov rbx, 0x600000\n mov r15, [rbx]\n vmmcall\n"
          "mov rbx, 0x600000\n mov r15, [rbx]\n vmmcall")
    b = harness.boot(nested_image(l1, l2, vmcb12(tlb_control=tlb_control)))
    assert b.result.reason == "exit", b.result
    assert b.machine.uc.reg_read(UC_X86_REG_R12) == 0x1111
    assert b.machine.uc.reg_read(UC_X86_REG_R15) == 0x2222
    assert edx(b) & bit("flushbyasid")


# ---- last-branch recording and LBR virtualization -------------------------------------------
# L1 (or L2) captures each branch's addresses with LEA into registers; the test compares them
# with what LastBranchFromIP/ToIP (and vmcb12's BR_FROM/BR_TO) hold. No other branch runs
# while DebugCtl.LBR is set.
DEBUGCTL, FROM_IP, TO_IP = 0x1D9, 0x1DB, 0x1DC


def lbr_on(value: int = 1) -> str:
    return f"mov ecx, {DEBUGCTL}\n mov eax, {value}\n xor edx, edx\n wrmsr\n"


def branch(name: str, from_reg: str, to_reg: str) -> str:
    return (f"lea {from_reg}, [rip + {name}_from]\n lea {to_reg}, [rip + {name}_to]\n"
            f"{name}_from: jmp {name}_to\n nop\n nop\n {name}_to: nop\n")


def lbr_ips(b: harness.Booted) -> tuple[int, int]:
    values = b.machine.msrs.values
    return values.get(FROM_IP, 0), values.get(TO_IP, 0)


def regs(b: harness.Booted, *names: str) -> list[int]:
    import unicorn.x86_const as x
    return [b.machine.uc.reg_read(getattr(x, f"UC_X86_REG_{n.upper()}")) for n in names]


def test_lbr_records_the_last_branch_and_nothing_else():
    l1 = (lbr_on() + branch("first", "r8", "r9") + branch("second", "r10", "r11")
          + "mov rsi, 0x300000\n mov rdi, 0x300100\n mov ecx, 8\n rep movsb\n"
          + lbr_on(0) + "mov ecx, 0x1D9\n rdmsr\n mov r12, rax\n" + EXIT_PASS)
    b = harness.boot(nested_image(l1, "vmmcall", vmcb12()))
    assert b.result.reason == "exit", b.result
    assert lbr_ips(b) == tuple(regs(b, "r10", "r11"))        # the second jmp; REP is none
    assert regs(b, "r12") == [0]


def test_lbr_msrs_are_read_only_and_btf_is_unsupported():
    b = harness.boot(nested_image("mov ecx, 0x1DB\n xor eax, eax\n xor edx, edx\n wrmsr\n"
                                  + EXIT_PASS, "vmmcall", vmcb12(),
                                  idt={13: gate64(handler(0))}, handlers=["mov r15, 13\n hlt"]))
    assert regs(b, "r15") == [13]
    b = harness.boot(nested_image(lbr_on(2) + EXIT_PASS, "vmmcall", vmcb12()))
    assert b.result.reason == "unsupported" and "BTF" in b.result.message


LBR_L1 = lbr_on() + branch("host", "r8", "r9") + "mov rax, rdi\n vmrun\n"
# L2 as kvm-unit-tests' svm_lbrv_test_guest3: a branch with LBR on, then straight to VMMCALL.
LBR_L2 = lbr_on() + branch("guest", "r10", "r11") + "vmmcall\n"


@pytest.mark.parametrize("cpu, virt_ext, leaks", [
    (None, 0, True),                 # no LBR virtualization: L2's branch is L1's last branch
    (None, 1, False),                # virtualized: L1's own state comes back at #VMEXIT
    ("EPYC,-lbrv", 1, True),         # not reported: VIRT_EXT bit 0 is ignored
])
def test_lbr_virtualization_switches_the_lbr_state(cpu, virt_ext, leaks):
    l1 = LBR_L1 + "mov ecx, 0x1D9\n rdmsr\n mov r12, rax\n" + lbr_on(0) + EXIT_PASS
    b = harness.boot(nested_image(l1, LBR_L2, vmcb12(virt_ext=virt_ext, dbgctl=0, br_from=0x1234)),
                     cpu=cpu)
    assert b.result.reason == "exit", b.result
    vm = b.vmcb12
    host, guest = tuple(regs(b, "r8", "r9")), tuple(regs(b, "r10", "r11"))
    assert vm.exitcode == VMEXIT_VMMCALL
    assert regs(b, "r12") == [1]                       # L1's DebugCtl.LBR at the #VMEXIT
    assert bool(edx(b) & bit("lbrv")) == (cpu is None)
    if leaks:
        assert lbr_ips(b) == guest                     # VMRUN and #VMEXIT are no branches
        assert (vm.save.dbgctl, vm.save.br_from) == (0, 0x1234)      # untouched
    else:
        assert lbr_ips(b) == host
        assert (vm.save.dbgctl, vm.save.br_from, vm.save.br_to) == (1,) + guest


def test_lbr_virtualization_loads_the_guest_state_from_vmcb12():
    """L2 starts with vmcb12's DBGCTL (LBR on) and BR_FROM/BR_TO; L1's recording is off."""
    l1 = "mov rax, rdi\n vmrun\n" + EXIT_PASS
    l2 = ("mov ecx, 0x1D9\n rdmsr\n mov r12, rax\n mov ecx, 0x1DB\n rdmsr\n mov r13, rax\n"
          + branch("guest", "r10", "r11") + lbr_on(0) + "vmmcall")
    b = harness.boot(nested_image(l1, l2, vmcb12(virt_ext=1, dbgctl=1, br_from=0x1234)))
    vm = b.vmcb12
    assert regs(b, "r12", "r13") == [1, 0x1234]
    assert (vm.save.dbgctl, vm.save.br_from, vm.save.br_to) == (0,) + tuple(regs(b, "r10", "r11"))
    assert lbr_ips(b) == (0, 0) and not b.machine.lbr.recording


# ---- TSC ratio -------------------------------------------------------------------------------
# L2's TSC is L1's scaled by TSC_RATIO (8.32 fixed point) plus TSC_OFFSET (APM vol. 2, 15.30.5).
# L1 reads its TSC before (R8) and after (R9) the run; L2 reads its own first (R14) and last
# (R13) of many RDTSCs (the repeated ones are answered in C) and one RDMSR of the TSC (R12).
TSC_RATIO = 0xC0000104
RATIO_3_5 = 0x3_8000_0000
OFFSET = 1 << 40
READ_TSC = "rdtsc\n shl rdx, 32\n or rax, rdx\n"
TSC_L1 = (f"mov ecx, {TSC_RATIO}\n mov eax, {RATIO_3_5 & 0xFFFFFFFF}\n mov edx, {RATIO_3_5 >> 32}\n"
          "wrmsr\n" + READ_TSC + "mov r8, rax\n mov rax, rdi\n vmrun\n" + READ_TSC + "mov r9, rax\n"
          + EXIT_PASS)
TSC_L2 = (READ_TSC + "mov r14, rax\n mov r15d, 200\n"
          "again: rdtsc\n shl rdx, 32\n or rax, rdx\n mov r13, rax\n dec r15d\n jnz again\n"
          "mov ecx, 0x10\n rdmsr\n shl rdx, 32\n or rax, rdx\n mov r12, rax\n vmmcall")


def run_tsc(cpu: str | None = None, fast: bool = True, l1: str = TSC_L1) -> harness.Booted:
    from emu.core.cpu_models import parse_cpu
    from emu.core.machine import Machine
    from svm_ext.extension import SvmExtension
    ext = SvmExtension()
    m = Machine(harness.RAM, stdout=None, extensions=[ext],
                cpu=parse_cpu(cpu) if cpu else None)
    if m.replay is not None:
        m.replay.enabled = fast
    m.load_multiboot(nested_image(l1, TSC_L2, vmcb12(tsc_offset=OFFSET)), "tsc")
    res = m.run(timeout=20)
    return harness.Booted(m, ext, res, "")


def test_l2_tsc_is_l1_tsc_scaled_plus_offset():
    b = run_tsc()
    assert b.result.reason == "exit", b.result
    t0, t1, first, last, msr = regs(b, "r8", "r9", "r14", "r13", "r12")
    scaled = (lambda t: ((t * RATIO_3_5) >> 32) + OFFSET)
    assert scaled(t0) < first < last < msr <= scaled(t1)
    assert t1 < OFFSET                                  # L1's own TSC: neither scaled nor offset
    assert b.machine.tsc_ratio == 1 << 32               # #VMEXIT: L1 runs unscaled
    assert b.machine.msrs.rdmsr(TSC_RATIO) == RATIO_3_5


def test_tsc_ratio_answered_in_c_as_in_python():
    fast, slow = run_tsc(fast=True), run_tsc(fast=False)
    assert regs(fast, "r8", "r9", "r14", "r13", "r12") == regs(slow, "r8", "r9", "r14", "r13", "r12")


def test_tsc_ratio_msr_follows_cpuid():
    b = harness.boot(nested_image(ONCE, "vmmcall", vmcb12()))
    assert edx(b) & bit("tsc-scale") and b.machine.msrs.rdmsr(TSC_RATIO) == 1 << 32
    from emu.core.msr import GeneralProtection
    with pytest.raises(GeneralProtection):
        b.machine.msrs.wrmsr(TSC_RATIO, 1 << 40)        # bits 63:40 reserved
    b = run_tsc(cpu="EPYC,-tsc-scale", l1=READ_TSC + "mov r8, rax\n mov rax, rdi\n vmrun\n"
                + READ_TSC + "mov r9, rax\n" + EXIT_PASS)
    with pytest.raises(GeneralProtection):
        b.machine.msrs.rdmsr(TSC_RATIO)
    t0, t1, first = regs(b, "r8", "r9", "r14")
    assert t0 + OFFSET < first < t1 + OFFSET            # unscaled


def test_lbr_recording_follows_a_restored_snapshot():
    from emu.core import snapshot
    b = harness.boot(nested_image(lbr_on() + branch("host", "r8", "r9") + EXIT_PASS, "vmmcall",
                                  vmcb12()))
    m = b.machine
    assert m.lbr.recording and m.lbr.hook is not None
    snap = snapshot.take(m)
    fresh = harness.boot(nested_image(EXIT_PASS, "vmmcall", vmcb12())).machine
    assert not fresh.lbr.recording and fresh.lbr.hook is None
    snapshot.restore(fresh, snap)
    assert fresh.lbr.recording and fresh.lbr.hook is not None
    assert lbr_ips(harness.Booted(fresh, None, b.result, "")) == tuple(regs(b, "r8", "r9"))


def test_vnmi_held_by_v_gif_comes_at_l2_stgi():
    """V_GIF=0 holds the virtual NMI; L2's STGI (not intercepted: it sets V_GIF) lets it in
    right after. With vGIF hidden (-vgif) V_GIF_ENABLE is ignored and the NMI comes at once."""
    l2 = "mov r14, r15\n stgi\n mov r13, r15\n vmmcall"
    vintr = V_NMI_ENABLE | V_NMI | V_GIF_ENABLE
    b, r15 = run_vnmi(l2, vintr, misc1=INTERCEPT_NMI)
    assert r15 == 1 and regs(b, "r14", "r13") == [0, 1] and b.vmcb12.v_gif == 1
    b, r15 = run_vnmi(l2, vintr, cpu="max,-vgif", misc1=INTERCEPT_NMI)
    assert r15 == 1 and regs(b, "r14", "r13") == [1, 1]
