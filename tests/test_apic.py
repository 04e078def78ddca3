"""The local APIC: register semantics on the device, and the guests that drive it through the
machine (xAPIC MMIO, x2APIC MSRs, timer on virtual time, delivery through the IDT)."""
from __future__ import annotations

from pathlib import Path

import pytest

from emu.core.devices.apic import (APIC_BASE_EN, APIC_BASE_EXTD, APIC_EOI, APIC_ICR_LO, APIC_LVT_TIMER,
                              APIC_PPR, APIC_SVR, APIC_TIMER_CCR, APIC_TIMER_DCR, APIC_TIMER_ICR,
                              APIC_TPR, APIC_ICR_HI, APIC_LDR, APIC_DFR, ApicError, LocalApic,
                              divisor)
from emu.loader.asm import GUESTS_DIR, assemble_source
from emu.loader.multiboot import parse_image
from emu.core.machine import Machine
from emu.core.msr import MSR_APIC_BASE
from tests.conftest import parse_tap
from tests import harness


class Clock:
    def __init__(self) -> None:
        self.t = 0
        self.changes = 0

    def apic(self) -> LocalApic:
        def advance(n: int) -> None:
            self.t += n
        def changed() -> None:
            self.changes += 1
        a = LocalApic(lambda: self.t, advance, changed)
        a.write_reg(APIC_SVR, 0x1FF)
        return a


def test_divide_configuration():
    assert [divisor(v) for v in (0x0, 0x1, 0x2, 0x3, 0x8, 0x9, 0xA, 0xB)] == \
        [2, 4, 8, 16, 32, 64, 128, 1]


def test_priority_tpr_and_eoi():
    a = Clock().apic()
    a.write_reg(APIC_ICR_LO, 0x44000 | 0x41)
    a.write_reg(APIC_ICR_LO, 0x44000 | 0x72)
    assert a.pending() == 0x72
    a.write_reg(APIC_TPR, 0x70)               # class 7 masks 0x72, and 0x41
    assert a.pending() is None and a.read_reg(APIC_PPR) == 0x70
    a.write_reg(APIC_TPR, 0)
    a.acknowledge(0x72)
    assert a.read_reg(APIC_PPR) == 0x70       # in service sets the processor priority
    assert a.pending() is None                # 0x41 waits behind 0x72 in service
    a.write_reg(APIC_EOI, 0)
    assert a.isr == 0 and a.pending() == 0x41


def test_illegal_vector_sets_esr_and_is_dropped():
    a = Clock().apic()
    a.write_reg(APIC_ICR_LO, 0x44000 | 0x05)
    assert a.irr == 0 and a.esr & 0x20


ALL_BUT_SELF, ALL, SELF = 0xC0000, 0x80000, 0x40000
FIXED, LOWEST, SMI, NMI, INIT, STARTUP = 0x000, 0x100, 0x200, 0x400, 0x500, 0x600
ASSERT, LOGICAL = 0x4000, 0x800


def _signals(a: LocalApic) -> tuple[int, bool, bool, bool]:
    return a.irr, a.nmi_pending, a.init_pending, a.smi_pending


@pytest.mark.parametrize("mode", [FIXED, LOWEST, SMI, NMI, INIT, STARTUP])
def test_all_but_self_reaches_no_one_on_one_cpu(mode):
    """The start-up broadcast of INIT and SIPI (and any other all-excluding-self IPI) has no
    other processor to reach: nothing arrives here, nothing stops."""
    a = Clock().apic()
    a.write_reg(APIC_ICR_LO, ALL_BUT_SELF | ASSERT | mode | 0x40)
    assert _signals(a) == (0, False, False, False)


def test_physical_destination_of_another_apic_reaches_no_one():
    a = Clock().apic()
    a.write_reg(APIC_ICR_HI, 1 << 24)                     # APIC ID 1: not present
    a.write_reg(APIC_ICR_LO, ASSERT | INIT)
    a.write_reg(APIC_ICR_LO, ASSERT | FIXED | 0x40)
    assert _signals(a) == (0, False, False, False)
    a.write_reg(APIC_ICR_HI, 0)                           # ID 0: this one
    a.write_reg(APIC_ICR_LO, ASSERT | FIXED | 0x41)
    a.write_reg(APIC_ICR_HI, 0xFF << 24)                  # physical broadcast
    a.write_reg(APIC_ICR_LO, ASSERT | FIXED | 0x42)
    assert a.irr == (1 << 0x41) | (1 << 0x42)


def test_logical_destination_flat_and_cluster():
    a = Clock().apic()
    a.write_reg(APIC_LDR, 0x02 << 24)                     # logical ID bit 1
    a.write_reg(APIC_ICR_HI, 0x01 << 24)
    a.write_reg(APIC_ICR_LO, LOGICAL | ASSERT | FIXED | 0x40)
    assert a.irr == 0                                     # flat: no common bit
    a.write_reg(APIC_ICR_HI, 0x03 << 24)
    a.write_reg(APIC_ICR_LO, LOGICAL | ASSERT | FIXED | 0x41)
    assert a.irr == 1 << 0x41
    a.write_reg(APIC_DFR, 0x0FFFFFFF)                     # cluster model
    a.write_reg(APIC_LDR, 0x12 << 24)                     # cluster 1, member bit 1
    a.write_reg(APIC_ICR_HI, 0x22 << 24)                  # cluster 2
    a.write_reg(APIC_ICR_LO, LOGICAL | ASSERT | FIXED | 0x42)
    assert not a.irr & 1 << 0x42
    a.write_reg(APIC_ICR_HI, 0x16 << 24)                  # cluster 1, bits 1 and 2
    a.write_reg(APIC_ICR_LO, LOGICAL | ASSERT | FIXED | 0x43)
    assert a.irr & 1 << 0x43


def test_self_ipis_of_each_mode_arrive_as_their_signal():
    a = Clock().apic()
    a.write_reg(APIC_ICR_LO, SELF | ASSERT | LOWEST | 0x50)
    assert _signals(a) == (1 << 0x50, False, False, False)
    a.write_reg(APIC_ICR_LO, ALL | ASSERT | SMI)
    assert a.smi_pending and not a.init_pending
    a.write_reg(APIC_ICR_LO, SELF | ASSERT | INIT)
    assert a.init_pending
    b = Clock().apic()
    b.write_reg(APIC_ICR_LO, SELF | INIT | 0x8000)        # INIT level de-assert: ignored
    b.write_reg(APIC_ICR_LO, SELF | ASSERT | STARTUP | 0x10)   # SIPI: not waiting for one
    assert _signals(b) == (0, False, False, False)


def test_reserved_delivery_modes_stop_the_run():
    from emu.errors import Unsupported
    a = Clock().apic()
    for mode in (0x300, 0x700):
        with pytest.raises(Unsupported):
            a.write_reg(APIC_ICR_LO, SELF | ASSERT | mode | 0x40)


def test_self_nmi_is_pending_apart_from_irr():
    a = Clock().apic()
    a.write_reg(APIC_ICR_LO, 0x44000 | 0x400 | 0x40)        # NMI: the vector is ignored
    assert a.nmi_pending and a.irr == 0 and a.pending() is None


def test_one_shot_timer_counts_virtual_time():
    c = Clock()
    a = c.apic()
    a.write_reg(APIC_TIMER_DCR, 0x0)          # divide by 2
    a.write_reg(APIC_LVT_TIMER, 0x30)
    a.write_reg(APIC_TIMER_ICR, 100)
    assert a.deadline() == 200
    c.t = 150
    assert a.current_count(c.t) == 25
    a.tick(199)
    assert a.irr == 0
    a.tick(200)
    assert a.irr == 1 << 0x30 and a.deadline() is None and a.current_count(300) == 0


def test_periodic_timer_reloads():
    c = Clock()
    a = c.apic()
    a.write_reg(APIC_TIMER_DCR, 0xB)
    a.write_reg(APIC_LVT_TIMER, 0x20000 | 0x31)
    a.write_reg(APIC_TIMER_ICR, 50)
    for period in range(1, 4):
        a.tick(50 * period)
        assert a.irr == 1 << 0x31
        a.acknowledge(0x31)
        a.write_reg(APIC_EOI, 0)
        assert a.deadline() == 50 * (period + 1)
    assert a.current_count(160) == 40


def test_periodic_timer_far_behind_catches_up_in_one_step():
    """Virtual time jumped ten million periods (a HLT, a TSC write): one interrupt, the count
    of elapsed periods exact, the next deadline after `now`, and no loop over every period."""
    c = Clock()
    a = c.apic()
    a.write_reg(APIC_TIMER_DCR, 0xB)          # divide by 1
    a.write_reg(APIC_LVT_TIMER, 0x20000 | 0x31)
    a.write_reg(APIC_TIMER_ICR, 50)
    now = 50 * 10_000_000 + 7
    a.tick(now)
    assert a.irr == 1 << 0x31
    assert a.timer_fired == 10_000_000 and a.deadline() == 50 * 10_000_001 > now


def test_ccr_read_advances_time_so_polling_terminates():
    c = Clock()
    a = c.apic()
    a.write_reg(APIC_TIMER_DCR, 0xB)
    a.write_reg(APIC_TIMER_ICR, 5000)
    reads = 0
    while a.read_reg(APIC_TIMER_CCR):
        reads += 1
    assert reads == 4 and c.t == 5000


def test_x2apic_msrs_and_mode_rules():
    a = Clock().apic()
    with pytest.raises(ApicError):
        a.read_msr(0x802)                     # not in x2APIC mode
    with pytest.raises(ApicError):
        a.write_base_msr(0xFEE00000 | APIC_BASE_EXTD, 40)      # EXTD without EN
    a.write_base_msr(0xFEE00000 | APIC_BASE_EN | APIC_BASE_EXTD, 40)
    assert a.mmio_base() is None
    assert a.read_msr(0x803) & 0xFF == 0x10
    a.write_msr(0x83F, 0x55)                  # SELF_IPI
    assert a.pending() == 0x55
    with pytest.raises(ApicError):
        a.write_msr(0x80B, 1)                 # EOI must be written with 0
    with pytest.raises(ApicError):
        a.read_msr(0x80B)                     # EOI is write-only
    with pytest.raises(ApicError):
        a.write_base_msr(0xFEE00000 | APIC_BASE_EN, 40)        # x2APIC -> xAPIC directly


def boot(source: str, tmp_path: Path | None = None):
    """A bundled guest's path, or (with tmp_path) a guest's source text."""
    path = harness.source(tmp_path, source) if tmp_path is not None else source
    b = harness.boot(path, nested=False, cmdline=path, timeout=60)
    return b.machine, b.result, b.serial


def test_apic_guest_passes_and_leaves_the_apic_idle():
    m, res, out = boot(str(GUESTS_DIR / "apic.S"))
    checks = parse_tap(out)
    assert res.reason == "exit" and res.status == 1, out
    assert len(checks) == 30 and all(c.ok for c in checks.values()), out
    apic = m.apic
    assert apic.irr == 0 and apic.isr == 0
    assert apic.deadline() is None
    assert apic.lvt[APIC_LVT_TIMER] == 0x10051
    assert apic.read_reg(APIC_SVR) == 0x1FF
    # The guest checks "at least three" (QEMU's wall-clock timer may slip in a fourth); on the
    # virtual clock it is exactly three.
    from emu.loader.asm import assemble
    sym = assemble(str(GUESTS_DIR / "apic.S")).symbols["periodic_count"]
    assert int.from_bytes(m.ram[sym:sym + 8], "little") == 3


def test_apic_guest_is_reproducible_run_to_run():
    """Virtual time: the same guest sees the same timer counts and interrupt points."""
    runs = [boot(str(GUESTS_DIR / "apic.S")) for _ in range(2)]
    (m1, _, out1), (m2, _, out2) = runs
    assert out1 == out2
    assert m1.tsc == m2.tsc and m1.tsc > 0


X2APIC_GUEST = r'''
.include "prelude.inc"
main:
    set_idt_handler 0x66, handler
    mov eax, 1
    cpuid
    check_mask rcx, 0x200000, 0x200000, "CPUID.1:ECX reports x2APIC"
    mov ecx, 0x1b
    rdmsr
    or eax, 0xc00
    wrmsr
    mov ecx, 0x80f
    mov eax, 0x1ff
    xor edx, edx
    wrmsr
    mov ecx, 0x802
    rdmsr
    check_eq rax, 0, "x2APIC ID"
    cli
    mov ecx, 0x83f
    mov eax, 0x66
    wrmsr
    sti
    nop
    cli
    check_eq [count], 1, "SELF_IPI delivered"
    expect_fault .Lr
    mov ecx, 0x80b
    mov eax, 1
    wrmsr
.Lr:
    check_eq [fault_vector], 13, "EOI with a non-zero value raises #GP"
    ret
handler:
    inc qword ptr [count]
    push rcx
    push rax
    push rdx
    mov ecx, 0x80b
    xor eax, eax
    xor edx, edx
    wrmsr
    pop rdx
    pop rax
    pop rcx
    iretq
.bss
count: .space 8
.text
'''


def test_x2apic_guest(tmp_path):
    src = X2APIC_GUEST.replace('.include "prelude.inc"', f'.include "{GUESTS_DIR}/prelude.inc"')
    m, res, out = boot(src, tmp_path)
    checks = parse_tap(out)
    assert len(checks) == 4 and all(c.ok for c in checks.values()), out
    assert m.msrs.rdmsr(MSR_APIC_BASE) & APIC_BASE_EXTD
    assert m.apic.isr == 0 and m.apic.irr == 0


def test_cpuid_apic_bit_follows_global_enable():
    m = Machine(128 << 20, stdout=None)
    assert m.cpuid.query(1, 0)[3] & (1 << 9)
    m.msrs.wrmsr(MSR_APIC_BASE, 0xFEE00000)                    # EN clear
    assert not m.cpuid.query(1, 0)[3] & (1 << 9)


def test_snapshot_mid_timer_resumes_to_the_same_end():
    """The APIC (timer, IRR/ISR, virtual time) is part of a snapshot: stopping anywhere and
    resuming in a fresh machine ends exactly as the uninterrupted run."""
    from emu.core import snapshot
    path = str(GUESTS_DIR / "apic.S")
    image = assemble_source(path)
    whole, _, out_whole = boot(path)
    for budget in (20_000, 34_000, 36_000, 41_000):     # the whole run is ~43,000
        m = Machine(128 << 20, stdout=None)
        m.load_multiboot(parse_image(image, path, m.ram_size), path)
        first = m.run(max_insns=budget)
        assert first.reason == "max-insns", budget
        snap = snapshot.take(m)
        m2 = Machine(128 << 20, stdout=None)
        snapshot.restore(m2, snap)
        res = m2.run(timeout=60)
        assert res.reason == "exit" and res.status == 1
        assert bytes(m2.serial.output).decode() == out_whole
        assert m2.apic.deadline() is None and m2.apic.isr == 0


def test_timer_lvt_keeps_the_mode_field_but_not_the_status_bit():
    a = Clock().apic()
    a.write_reg(APIC_LVT_TIMER, 0x40000 | 0x1000 | 0x45)            # TSC-deadline, status
    assert a.read_reg(APIC_LVT_TIMER) == 0x40045


def test_tsc_deadline_timer_fires_once_at_its_deadline():
    """TSC-deadline mode (LVT timer mode 10b): IA32_TSC_DEADLINE arms it, it fires when virtual
    time (the TSC) reaches the value, then reads 0; the initial count is ignored; outside the
    mode the MSR reads 0 and writes are ignored; a change of mode disarms it."""
    c = Clock()
    a = c.apic()
    a.write_tsc_deadline(500)                       # one-shot mode: ignored
    assert a.read_tsc_deadline() == 0 and a.deadline() is None
    a.write_reg(APIC_LVT_TIMER, 0x40000 | 0x31)
    a.write_reg(APIC_TIMER_ICR, 10)                 # ignored in this mode
    assert a.deadline() is None and a.current_count(0) == 0
    a.write_tsc_deadline(500)
    assert a.read_tsc_deadline() == 500 and a.deadline() == 500
    a.tick(499)
    assert a.irr == 0
    a.tick(500)
    assert a.irr == 1 << 0x31 and a.read_tsc_deadline() == 0 and a.deadline() is None
    a.write_tsc_deadline(900)
    a.write_reg(APIC_LVT_TIMER, 0x31)               # back to one-shot: disarmed
    assert a.deadline() is None
    c.t = 1000
    a.write_reg(APIC_LVT_TIMER, 0x40000 | 0x32)
    a.write_tsc_deadline(800)                       # already past: fires at once
    assert a.irr & (1 << 0x32) and a.read_tsc_deadline() == 0


def test_cpuid_reports_the_tsc_deadline_timer():
    m = Machine(32 << 20, stdout=None)
    assert m.cpuid.query(1, 0)[2] & (1 << 24)
    m.msrs.wrmsr(0x6E0, 12345)                      # one-shot mode: ignored, no #GP
    assert m.msrs.rdmsr(0x6E0) == 0
