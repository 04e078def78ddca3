"""The I/O APIC at 0xFEC00000, as QEMU's pc machine has it (82093AA-style, version 0x20, 24 pins).

MMIO: IOREGSEL at offset 0x00 selects a register, IOWIN at 0x10 reads or writes it (32-bit
accesses), and the version-0x20 EOI register at 0x40 takes a vector. Registers: 0x00 ID (bits
27:24), 0x01 version (0x00170020: 24 entries, version 0x20), 0x02 arbitration (read-only, reads as the
ID register: QEMU loads the arbitration ID from the ID, as the 82093AA does on each write of the
ID), 0x10 + 2n / 0x11 + 2n the low and high halves of redirection entry n. The version and
arbitration registers ignore writes.

A redirection entry routes its pin to the local APIC: vector, delivery mode (fixed, lowest
priority -- arbitrated on the local APICs' bus --, SMI, NMI, INIT, ExtINT: the CPU fetches the
vector from the 8259 with an interrupt acknowledge), destination (physical APIC ID or 0xFF; logical,
matched against the APIC's LDR and DFR), trigger mode and mask. Edge-triggered pins deliver on
a rising edge and drop edges while masked; level-triggered pins deliver while the line is high,
setting Remote IRR until the CPU's EOI for that vector (the local APIC's EOI of a vector it
accepted as level-triggered is broadcast here, or the EOI register is written); then, if the
line is still high, it delivers again. SMI and INIT arrive at the CPU as the IPIs of those modes
do (devices/apic.py, ApicBus); modes 3 and 6 stop the run as unsupported.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from emu.errors import Unsupported
from emu.core.devices.base import PortDevice

if TYPE_CHECKING:
    from emu.core.devices.apic import LocalApic

IOAPIC_BASE = 0xFEC00000
IOAPIC_MMIO_SIZE = 0x1000
IOAPIC_NUM_PINS = 24
IOAPIC_VERSION = 0x20

IOREGSEL = 0x00
IOWIN = 0x10
IOAPIC_EOI = 0x40

IOAPIC_REG_ID = 0x00
IOAPIC_REG_VER = 0x01
IOAPIC_REG_ARB = 0x02
IOAPIC_REG_REDTBL = 0x10

# Redirection entry fields.
RTE_VECTOR = 0xFF
RTE_DELMOD_SHIFT = 8
RTE_DESTMOD_LOGICAL = 1 << 11
RTE_DELIVS = 1 << 12
RTE_POLARITY_LOW = 1 << 13
RTE_REMOTE_IRR = 1 << 14
RTE_TRIGGER_LEVEL = 1 << 15
RTE_MASKED = 1 << 16
RTE_DEST_SHIFT = 56
RTE_READ_ONLY = RTE_DELIVS | RTE_REMOTE_IRR
RTE_WRITABLE = 0xFF00_0000_0001_FFFF & ~RTE_READ_ONLY

DM_FIXED = 0
DM_LOWEST = 1
DM_SMI = 2
DM_NMI = 4
DM_INIT = 5
DM_EXTINT = 7


class IoApic(PortDevice):
    name = "ioapic"

    def __init__(self, apic: "LocalApic", changed: Callable[[], None] = lambda: None) -> None:
        self.apic = apic
        self.changed = changed
        self.sync: Callable[[], None] = lambda: None   # bring timers' edges up to now
        self.reset()

    def reset(self) -> None:
        self.ioapic_id = 0
        self.ioregsel = 0
        self.irr = 0                 # lines held high (level) / edges waiting to deliver
        self.redtbl = [RTE_MASKED] * IOAPIC_NUM_PINS

    # ---- pins ------------------------------------------------------------------------------
    def set_irq(self, pin: int, level: int) -> None:
        if not 0 <= pin < IOAPIC_NUM_PINS:
            return
        mask = 1 << pin
        entry = self.redtbl[pin]
        if entry & RTE_TRIGGER_LEVEL:
            if level:
                self.irr |= mask
                if not entry & RTE_REMOTE_IRR:
                    self._service()
            else:
                self.irr &= ~mask
        elif level and not entry & RTE_MASKED:       # edges on a masked pin are lost
            self.irr |= mask
            self._service()

    def unmasked(self, pin: int) -> bool:
        return 0 <= pin < IOAPIC_NUM_PINS and not self.redtbl[pin] & RTE_MASKED

    def _service(self) -> None:
        for pin in range(IOAPIC_NUM_PINS):
            mask = 1 << pin
            entry = self.redtbl[pin]
            if not self.irr & mask or entry & RTE_MASKED:
                continue
            if entry & RTE_TRIGGER_LEVEL:
                if entry & RTE_REMOTE_IRR:
                    continue
                self.redtbl[pin] = entry | RTE_REMOTE_IRR
            else:
                self.irr &= ~mask
            self._deliver(entry)

    def _deliver(self, entry: int) -> None:
        mode = (entry >> RTE_DELMOD_SHIFT) & 7
        dest = entry >> RTE_DEST_SHIFT
        if mode not in (DM_FIXED, DM_LOWEST, DM_SMI, DM_NMI, DM_INIT, DM_EXTINT):
            raise Unsupported(f"unsupported: I/O APIC delivery mode {mode} (entry {entry:#x})")
        # The local APICs' bus resolves the destination (none named: the message goes nowhere)
        # and delivers by mode, SMI and INIT included, as an IPI of that mode would arrive.
        bus = self.apic.bus
        assert bus is not None
        targets = bus.match(dest, bool(entry & RTE_DESTMOD_LOGICAL))
        if mode == DM_LOWEST:
            targets = bus.lowest_priority(targets)
        bus.deliver(mode, entry & RTE_VECTOR, targets, level=bool(entry & RTE_TRIGGER_LEVEL))

    def eoi(self, vector: int) -> None:
        """An EOI for `vector` (local APIC broadcast or the EOI register): Remote IRR clears
        on every level-triggered entry with that vector, and a line still high delivers again."""
        hit = False
        for pin, entry in enumerate(self.redtbl):
            if entry & RTE_TRIGGER_LEVEL and entry & RTE_REMOTE_IRR and \
                    entry & RTE_VECTOR == vector:
                self.redtbl[pin] = entry & ~RTE_REMOTE_IRR
                hit = True
        if hit:
            self._service()

    # ---- registers -------------------------------------------------------------------------
    def read_reg(self, index: int) -> int:
        if index in (IOAPIC_REG_ID, IOAPIC_REG_ARB):     # QEMU: the arbitration ID is the ID
            return (self.ioapic_id & 0xF) << 24
        if index == IOAPIC_REG_VER:
            return ((IOAPIC_NUM_PINS - 1) << 16) | IOAPIC_VERSION
        n = (index - IOAPIC_REG_REDTBL) >> 1
        if 0 <= n < IOAPIC_NUM_PINS:
            entry = self.redtbl[n]
            return (entry >> 32) & 0xFFFFFFFF if index & 1 else entry & 0xFFFFFFFF
        return 0xFFFFFFFF

    def write_reg(self, index: int, value: int) -> None:
        value &= 0xFFFFFFFF
        if index == IOAPIC_REG_ID:
            self.ioapic_id = (value >> 24) & 0xF
            return
        n = (index - IOAPIC_REG_REDTBL) >> 1
        if not 0 <= n < IOAPIC_NUM_PINS:
            return
        old = self.redtbl[n]
        if index & 1:
            new = (old & 0xFFFFFFFF) | (value << 32)
        else:
            new = (old & ~0xFFFFFFFF) | value
        new = (new & RTE_WRITABLE) | (old & RTE_READ_ONLY)
        if not new & RTE_TRIGGER_LEVEL:
            new &= ~RTE_REMOTE_IRR       # an edge-triggered entry has no Remote IRR
        self.redtbl[n] = new
        if (old ^ new) & RTE_MASKED:
            self.changed()           # a timer's line may now reach the CPU, or no longer
        self._service()

    def mmio_read(self, offset: int, size: int) -> int:
        self.sync()
        if offset == IOREGSEL:
            value = self.ioregsel
        elif offset == IOWIN:
            value = self.read_reg(self.ioregsel)
        else:
            value = 0
        return value & ((1 << (8 * size)) - 1)

    def mmio_write(self, offset: int, size: int, value: int) -> None:
        if offset == IOREGSEL:
            self.ioregsel = value & 0xFF
        elif offset == IOWIN:
            self.write_reg(self.ioregsel, value)
        elif offset == IOAPIC_EOI:
            self.eoi(value & 0xFF)

    # ---- snapshots -------------------------------------------------------------------------
    def state(self) -> dict:
        return {"ioapic_id": self.ioapic_id, "ioregsel": self.ioregsel, "irr": self.irr,
                "redtbl": list(self.redtbl)}

    def load_state(self, state: dict) -> None:
        self.ioapic_id = int(state["ioapic_id"])
        self.ioregsel = int(state["ioregsel"])
        self.irr = int(state["irr"])
        self.redtbl = [int(v) for v in state["redtbl"]]
