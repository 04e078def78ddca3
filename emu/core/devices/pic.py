"""The two 8259A programmable interrupt controllers of a PC (master at 0x20/0x21, slave at
0xA0/0xA1, cascaded on the master's IRQ2) and the PIIX's edge/level control registers (ELCR,
0x4D0/0x4D1), behaving as QEMU's i8259 does.

Programming: ICW1 (a command-port write with bit 4) starts initialisation; ICW2 sets the vector
base (bits 7:3), ICW3 is accepted, ICW4 (when ICW1 asked for it) selects auto-EOI and special
fully nested mode. Afterwards a data-port write is OCW1 (the mask register), a command-port
write OCW2 (non-specific, specific and rotating EOIs, priority rotation) or OCW3 (read IRR or
ISR at the command port, poll, special mask). ELCR bits make an IRQ level-triggered; otherwise an
IRQ is latched in IRR on its rising edge.

The master's INTR output goes to the local APIC's LINT0 (the "virtual wire" firmware sets up:
LINT0 in ExtINT mode), and the CPU's interrupt acknowledge (`acknowledge`) returns the vector,
moving the IRQ from IRR to ISR. An acknowledge with nothing to give returns the spurious IRQ 7
of the chip concerned, as the 8259A does.

State at entry is what SeaBIOS leaves under QEMU 7.2 (measured): vector bases 0x08 and 0x70,
masks 0xB8 and 0x8E (IRQ0 timer, 1 keyboard, 2 cascade, 6 floppy, 8 RTC, 12 mouse, 13 FPU,
14 disk unmasked), ELCR 0x00 and 0x0C (IRQ10 and 11, the PCI interrupts, level-triggered).
"""
from __future__ import annotations

from typing import Callable, Iterable

from emu.core.devices.base import PortDevice

PIC_MASTER_CMD = 0x20
PIC_MASTER_DATA = 0x21
PIC_SLAVE_CMD = 0xA0
PIC_SLAVE_DATA = 0xA1
ELCR_MASTER = 0x4D0
ELCR_SLAVE = 0x4D1
CASCADE_IRQ = 2
SPURIOUS_IRQ = 7

ICW1_INIT = 0x10
ICW1_IC4 = 0x01
ICW1_SNGL = 0x02
OCW3_SELECT = 0x08
OCW3_POLL = 0x04
OCW3_RR = 0x02
OCW3_RIS = 0x01
OCW3_ESMM = 0x40
OCW3_SMM = 0x20
ICW4_AEOI = 0x02
ICW4_SFNM = 0x10

ELCR_MASK_MASTER = 0xF8          # IRQ0-2 are always edge-triggered
ELCR_MASK_SLAVE = 0xDE           # and IRQ8 and 13

BIOS_MASTER_BASE = 0x08
BIOS_SLAVE_BASE = 0x70
BIOS_MASTER_IMR = 0xB8
BIOS_SLAVE_IMR = 0x8E
BIOS_ELCR_SLAVE = 0x0C

_FIELDS = ("last_irr", "irr", "imr", "isr", "priority_add", "irq_base", "read_isr", "poll",
           "special_mask", "init_state", "auto_eoi", "rotate_on_auto_eoi", "sfnm", "init4",
           "single", "elcr")


class Chip:
    """One 8259A."""

    def __init__(self, master: bool) -> None:
        self.master = master
        self.elcr_mask = ELCR_MASK_MASTER if master else ELCR_MASK_SLAVE
        self.elcr = 0
        self.irr = 0
        self.init_reset()

    def init_reset(self) -> None:
        """What ICW1 clears (the ELCR is the PIIX's, not the 8259's)."""
        self.last_irr = 0
        self.irr &= self.elcr
        self.imr = 0
        self.isr = 0
        self.priority_add = 0
        self.irq_base = 0
        self.read_isr = 0
        self.poll = 0
        self.special_mask = 0
        self.init_state = 0
        self.auto_eoi = 0
        self.rotate_on_auto_eoi = 0
        self.sfnm = 0
        self.init4 = 0
        self.single = 0

    def set_irq(self, irq: int, level: int) -> None:
        mask = 1 << irq
        if self.elcr & mask:                 # level-triggered: IRR follows the line
            if level:
                self.irr |= mask
                self.last_irr |= mask
            else:
                self.irr &= ~mask
                self.last_irr &= ~mask
        elif level:                          # edge-triggered: latch a rising edge
            if not self.last_irr & mask:
                self.irr |= mask
            self.last_irr |= mask
        else:
            self.last_irr &= ~mask

    def _priority(self, mask: int) -> int:
        """Priority (0 highest) of the highest-priority bit set in `mask`; 8 for none."""
        if not mask & 0xFF:
            return 8
        p = 0
        while not mask & (1 << ((p + self.priority_add) & 7)):
            p += 1
        return p

    def pending_irq(self) -> int | None:
        """The IRQ this chip would raise INTR for, if any (above what is in service)."""
        p = self._priority(self.irr & ~self.imr)
        if p == 8:
            return None
        in_service = self.isr
        if self.special_mask:
            in_service &= ~self.imr
        if self.sfnm and self.master:
            in_service &= ~(1 << CASCADE_IRQ)
        if p < self._priority(in_service):
            return (p + self.priority_add) & 7
        return None

    def intack(self, irq: int) -> None:
        if self.auto_eoi:
            if self.rotate_on_auto_eoi:
                self.priority_add = (irq + 1) & 7
        else:
            self.isr |= 1 << irq
        if not self.elcr & (1 << irq):
            self.irr &= ~(1 << irq)

    def write_command(self, value: int) -> None:
        if value & ICW1_INIT:
            self.init_reset()
            self.init_state = 1
            self.init4 = value & ICW1_IC4
            self.single = 1 if value & ICW1_SNGL else 0
        elif value & OCW3_SELECT:
            if value & OCW3_POLL:
                self.poll = 1
            if value & OCW3_RR:
                self.read_isr = value & OCW3_RIS
            if value & OCW3_ESMM:
                self.special_mask = 1 if value & OCW3_SMM else 0
        else:                                # OCW2
            cmd = value >> 5
            if cmd in (0, 4):
                self.rotate_on_auto_eoi = cmd >> 2
            elif cmd in (1, 5):              # non-specific EOI (5: and rotate)
                p = self._priority(self.isr)
                if p != 8:
                    irq = (p + self.priority_add) & 7
                    self.isr &= ~(1 << irq)
                    if cmd == 5:
                        self.priority_add = (irq + 1) & 7
            elif cmd == 3:                   # specific EOI
                self.isr &= ~(1 << (value & 7))
            elif cmd == 6:                   # set priority
                self.priority_add = (value + 1) & 7
            elif cmd == 7:                   # rotate on specific EOI
                irq = value & 7
                self.isr &= ~(1 << irq)
                self.priority_add = (irq + 1) & 7

    def write_data(self, value: int) -> None:
        if self.init_state == 0:
            self.imr = value                 # OCW1
        elif self.init_state == 1:           # ICW2
            self.irq_base = value & 0xF8
            self.init_state = (3 if self.init4 else 0) if self.single else 2
        elif self.init_state == 2:           # ICW3 (cascade wiring: fixed on a PC)
            self.init_state = 3 if self.init4 else 0
        else:                                # ICW4
            self.sfnm = (value >> 4) & 1
            self.auto_eoi = (value >> 1) & 1
            self.init_state = 0

    def read_command(self) -> int:
        if self.poll:
            self.poll = 0
            irq = self.pending_irq()
            if irq is None:
                return 0
            self.intack(irq)
            return irq | 0x80
        return self.isr if self.read_isr else self.irr

    def state(self) -> dict:
        return {name: getattr(self, name) for name in _FIELDS}

    def load_state(self, state: dict) -> None:
        for name in _FIELDS:
            setattr(self, name, int(state[name]))


class PicPair(PortDevice):
    """Master and slave 8259A; `changed` is called when the INTR output may have changed."""
    name = "pic"

    def __init__(self, changed: Callable[[], None] = lambda: None) -> None:
        self.changed = changed
        self.sync: Callable[[], None] = lambda: None   # bring timers' edges up to now
        # called when a mask changes: a timer's line may now reach the CPU, or no longer
        self.rerouted: Callable[[], None] = lambda: None
        self.master = Chip(True)
        self.slave = Chip(False)
        self.firmware_state()

    def firmware_state(self) -> None:
        """What SeaBIOS programs before it starts a kernel (see the module docstring)."""
        for chip, base, imr in ((self.master, BIOS_MASTER_BASE, BIOS_MASTER_IMR),
                                (self.slave, BIOS_SLAVE_BASE, BIOS_SLAVE_IMR)):
            chip.irr = 0
            chip.init_reset()
            chip.irq_base, chip.imr, chip.init4 = base, imr, 1
        self.master.elcr, self.slave.elcr = 0, BIOS_ELCR_SLAVE

    def ports(self) -> Iterable[int]:
        return (PIC_MASTER_CMD, PIC_MASTER_DATA, PIC_SLAVE_CMD, PIC_SLAVE_DATA, ELCR_MASTER,
                ELCR_SLAVE)

    # ---- lines and the CPU ---------------------------------------------------------------
    def set_irq(self, irq: int, level: int) -> None:
        """ISA IRQ line 0-15 driven to `level`."""
        if irq >= 8:
            self.slave.set_irq(irq - 8, level)
        else:
            self.master.set_irq(irq, level)
        self._update()

    def _update(self) -> None:
        self.master.set_irq(CASCADE_IRQ, 1 if self.slave.pending_irq() is not None else 0)
        self.changed()

    def intr(self) -> bool:
        """The master's INTR output."""
        return self.master.pending_irq() is not None

    def unmasked(self, irq: int) -> bool:
        """Would an edge on ISA IRQ `irq` reach INTR (masks only, not priorities)?"""
        if irq >= 8:
            return not (self.slave.imr >> (irq - 8)) & 1 and not (self.master.imr >> 2) & 1
        return not (self.master.imr >> irq) & 1

    def vector(self) -> int:
        """The vector an interrupt acknowledge would return now, without acknowledging."""
        irq = self.master.pending_irq()
        if irq is None:
            return self.master.irq_base + SPURIOUS_IRQ
        if irq == CASCADE_IRQ:
            irq2 = self.slave.pending_irq()
            return self.slave.irq_base + (SPURIOUS_IRQ if irq2 is None else irq2)
        return self.master.irq_base + irq

    def acknowledge(self) -> int:
        """The CPU's interrupt acknowledge cycle: the vector, IRR -> ISR."""
        irq = self.master.pending_irq()
        if irq is None:
            vector = self.master.irq_base + SPURIOUS_IRQ
        else:
            self.master.intack(irq)
            if irq == CASCADE_IRQ:
                irq2 = self.slave.pending_irq()
                if irq2 is None:
                    vector = self.slave.irq_base + SPURIOUS_IRQ
                else:
                    self.slave.intack(irq2)
                    vector = self.slave.irq_base + irq2
            else:
                vector = self.master.irq_base + irq
        self._update()
        return vector

    # ---- ports ---------------------------------------------------------------------------
    def read(self, port: int, size: int) -> int:
        self.sync()
        if port == ELCR_MASTER:
            return self.master.elcr
        if port == ELCR_SLAVE:
            return self.slave.elcr
        chip = self.master if port < 0x80 else self.slave
        if port & 1:
            return chip.imr
        value = chip.read_command()
        if chip.poll == 0:
            self._update()
        return value

    def write(self, port: int, size: int, value: int) -> None:
        value &= 0xFF
        if port == ELCR_MASTER:
            self.master.elcr = value & self.master.elcr_mask
        elif port == ELCR_SLAVE:
            self.slave.elcr = value & self.slave.elcr_mask
        else:
            chip = self.master if port < 0x80 else self.slave
            imr = chip.imr
            if port & 1:
                chip.write_data(value)
            else:
                chip.write_command(value)
            if chip.imr != imr:
                self.rerouted()
        self._update()

    def state(self) -> dict:
        return {"master": self.master.state(), "slave": self.slave.state()}

    def load_state(self, state: dict) -> None:
        self.master.load_state(state["master"])
        self.slave.load_state(state["slave"])
