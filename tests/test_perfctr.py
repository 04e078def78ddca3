"""Performance counters (emu/core/perfctr.py): event 0x76, CPU clocks not halted, counts the
virtual clock without the time HLT jumped over; what svmemu cannot count stops the run."""
from __future__ import annotations

import pytest

from emu.core.machine import Machine
from emu.errors import Unsupported

CTL0, CTR0 = 0xC0010000, 0xC0010004
EN, INT, OS, USR = 1 << 22, 1 << 20, 1 << 17, 1 << 16
CYCLES = 0x76


def test_cycles_count_the_clock_while_enabled_and_not_halted():
    m = Machine(64 << 20, stdout=None)
    m.msrs.wrmsr(CTR0, 1000)
    m.msrs.wrmsr(CTL0, EN | OS | USR | CYCLES)
    m.tsc += 5000
    assert m.msrs.rdmsr(CTR0) == 6000
    m.irq.halted_ticks += 3000              # HLT jumped over 3000 ticks: not counted
    m.tsc += 3000
    assert m.msrs.rdmsr(CTR0) == 6000
    m.msrs.wrmsr(CTR0, 10)                  # a write while counting restarts from the value
    m.tsc += 7
    assert m.msrs.rdmsr(CTR0) == 17
    m.msrs.wrmsr(CTL0, OS | USR | CYCLES)   # disabled: the count stays
    m.tsc += 100
    assert m.msrs.rdmsr(CTR0) == 17


@pytest.mark.parametrize("ctl", [EN | OS | USR | 0xC0, EN | OS | CYCLES, EN | USR | CYCLES,
                                 EN | OS | USR | CYCLES | (1 << 8), EN | OS | USR | CYCLES | (1 << 40),
                                 EN])
def test_what_is_not_counted_stops_and_changes_nothing(ctl):
    m = Machine(64 << 20, stdout=None)
    m.msrs.wrmsr(CTL0, OS | USR | CYCLES)
    with pytest.raises(Unsupported, match="not counted"):
        m.msrs.wrmsr(CTL0, ctl)
    assert m.msrs.rdmsr(CTL0) == OS | USR | CYCLES


def test_an_overflow_with_its_interrupt_enabled_stops_the_run_at_an_interrupt_point():
    m = Machine(64 << 20, stdout=None)
    m.msrs.wrmsr(CTR0, (1 << 48) - 10)
    m.msrs.wrmsr(CTL0, EN | INT | OS | USR | CYCLES)
    assert m.perf.deadline() is None        # no slice bound, no interrupt window for it
    m.tsc += 9
    m.irq.tick_timers()                     # not yet
    m.tsc += 1
    with pytest.raises(Unsupported, match="overflowed"):
        m.irq.tick_timers()


def test_without_its_interrupt_a_counter_wraps_silently():
    m = Machine(64 << 20, stdout=None)
    m.msrs.wrmsr(CTR0, (1 << 48) - 10)
    m.msrs.wrmsr(CTL0, EN | OS | USR | CYCLES)
    assert m.perf.deadline() is None
    m.tsc += 15
    m.perf.tick(m.tsc)
    assert m.msrs.rdmsr(CTR0) == 5


def test_with_several_cpus_each_counts_its_own_clock():
    m = Machine(64 << 20, stdout=None, cpus=2)
    ap = m.cpu_list[1]
    for cpu in (m, ap):
        cpu.msrs.wrmsr(CTL0, EN | OS | USR | CYCLES)
    m.tsc += 40
    ap.tsc += 30
    ap.irq.halted_ticks += 10
    assert m.msrs.rdmsr(CTR0) == 40 and ap.msrs.rdmsr(CTR0) == 20


def test_a_snapshot_keeps_a_running_count_and_it_counts_on_after_restore():
    from emu.core import snapshot
    m = Machine(64 << 20, stdout=None)
    m.msrs.wrmsr(CTR0, 100)
    m.msrs.wrmsr(CTL0, EN | OS | USR | CYCLES)
    m.tsc += 50
    data = snapshot.encode(snapshot.take(m, ram=False))
    assert m.msrs.rdmsr(CTR0) == 150               # taking it changed nothing
    fresh = Machine(64 << 20, stdout=None)
    fresh.irq.halted_ticks = 12345                 # its own clock's history
    snapshot.restore(fresh, snapshot.decode(data), restore_ram=False)
    assert fresh.msrs.rdmsr(CTR0) == 150
    fresh.tsc += 8
    assert fresh.msrs.rdmsr(CTR0) == 158
