"""Where an interrupt line goes on QEMU's pc machine: ISA IRQ n drives both the 8259 pair's IRQ n
and I/O APIC pin n, except the PIT's IRQ0, which reaches I/O APIC pin 2 (the interrupt source
override firmware tables declare); lines 16-23 exist on the I/O APIC only."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from emu.core.devices.apic import LocalApic
    from emu.core.devices.ioapic import IoApic
    from emu.core.devices.pic import PicPair

ISA_IRQS = 16
PIT_IOAPIC_PIN = 2


def ioapic_pin(irq: int) -> int:
    return PIT_IOAPIC_PIN if irq == 0 else irq


class InterruptLines:
    def __init__(self, pic: "PicPair", ioapic: "IoApic", apic: "LocalApic") -> None:
        self.pic = pic
        self.ioapic = ioapic
        self.apic = apic

    def set(self, irq: int, level: int) -> None:
        if irq < ISA_IRQS:
            self.pic.set_irq(irq, level)
        self.ioapic.set_irq(ioapic_pin(irq), level)

    def routed(self, irq: int) -> bool:
        """Could an edge on `irq` interrupt the CPU (masks only)?"""
        via_pic = irq < ISA_IRQS and self.pic.unmasked(irq) and self.apic.lint0_accepts()
        return via_pic or self.ioapic.unmasked(ioapic_pin(irq))
