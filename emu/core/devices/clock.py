"""Virtual time as the PC's devices count it.

Every clock in the machine derives from one counter, `machine.tsc` (the TSC without its offset),
which moves only at events the machine sees (see emu/core/irq.py), never with the host's clock:
so a guest reads the same counts and takes its interrupts at the same instructions on every run.

The TSC is taken to run at TSC_HZ = 1 GHz (one tick per nanosecond; the local APIC timer counts
the same ticks, as QEMU's APIC timer counts 1 GHz). A device clock of `hz` has counted
floor(tsc * hz / TSC_HZ) cycles at TSC value `tsc`:

  * the 8254 PIT: PIT_HZ = 1,193,182 Hz, so 1 PIT cycle = 838.1 TSC ticks;
  * the ACPI PM timer: PM_TIMER_HZ = 3,579,545 Hz, 1 cycle = 279.4 TSC ticks;
  * the RTC's time of day: one second per TSC_HZ ticks from the boot date.

Integer arithmetic only, so a cycle count never depends on rounding of the host.
"""
from __future__ import annotations

TSC_HZ = 1_000_000_000
PIT_HZ = 1_193_182
PM_TIMER_HZ = 3_579_545


def cycles(tsc: int, hz: int) -> int:
    """Cycles of a `hz` clock completed by virtual time `tsc`."""
    return tsc * hz // TSC_HZ


def tsc_at(count: int, hz: int) -> int:
    """The first virtual time at which a `hz` clock has completed `count` cycles."""
    return -(-count * TSC_HZ // hz)
