"""The PC around the CPU, as QEMU's pc machine (i440FX + PIIX) presents it to a kernel after
SeaBIOS: which device sits where and how their interrupt lines and clocks are wired.

  ports 0x20/0x21, 0xA0/0xA1, 0x4D0/0x4D1   8259 pair + ELCR        pic.py
  ports 0x40-0x43, 0x61                     8254 PIT, port B         pit.py
  ports 0x60, 0x64                          8042 keyboard controller kbc.py
  ports 0x70/0x71                           RTC and CMOS             cmos.py
  port 0x80                                 POST codes               post.py
  port 0x92                                 fast A20 and reset       port92.py
  ports 0xE0-0xE7, 0x2000-0x2017            QEMU pc-testdev          testdev.py
  0xFF000000 (64 KiB, RAM-like)             pc-testdev's iomem       testdev.py
  ports 0x600-0x63F                         ACPI PM block and timer  pm_timer.py
  ports 0xCF8-0xCFF                         PCI configuration        pci.py
  0xFEC00000                                I/O APIC                 ioapic.py
  0xFED00000                                HPET                     hpet.py
  holes in the physical address space       all-ones                 open_bus.py

Interrupts: ISA lines go to the 8259 and the I/O APIC (gsi.py); the 8259's INTR reaches the
local APICs' LINT0 (ExtINT; with several CPUs each CPU whose LINT0 takes it, devices/apic.py); the local APIC broadcasts EOIs of level-triggered vectors to the
I/O APIC. The HPET's legacy replacement mode takes IRQ 0 and IRQ 8 from the PIT and the RTC.
Clocks: clock.py.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from emu.core.devices.cmos import RTC_IRQ, Cmos
from emu.core.devices.gsi import InterruptLines
from emu.core.devices.hpet import GINTR_STA, HPET_BASE, HPET_MAP_SIZE, MASK64, Hpet
from emu.core.devices.ioapic import IOAPIC_BASE, IOAPIC_MMIO_SIZE, IoApic
from emu.core.devices.kbc import KBC_IRQ, KeyboardController
from emu.core.devices.pci import PM_BASE_DEFAULT, PciHost
from emu.core.devices.pic import (BIOS_MASTER_BASE, BIOS_SLAVE_BASE, CASCADE_IRQ, ICW1_IC4,
                                  ICW1_INIT, PIC_MASTER_CMD,
                                  PIC_MASTER_DATA, PIC_SLAVE_CMD, PIC_SLAVE_DATA, PicPair)
from emu.core.devices.apm import ApmControl
from emu.core.devices.pit import PIT_CHANNEL0, PIT_CONTROL, PIT_IRQ, PORT_B, Pit8254
from emu.core.devices.pm_timer import PmBlock
from emu.core.devices.port92 import SystemPortA
from emu.core.devices.serial import COM1_IRQ
from emu.core.devices.post import PostPort
from emu.core.devices.testdev import PcTestdev
from emu.arch.msrs import MSR_NB_CFG
from emu.core.msrs_amd import NB_CFG_ENABLE_CF8_EXT_CFG
from emu.core.firmware.layout import ram_layout
from emu.errors import Unsupported

if TYPE_CHECKING:
    from emu.core.board import Board

PIT_LOBYTE_HIBYTE_MODE3 = 0x36     # control word: access lobyte/hibyte, mode 3, binary
PIC_ICW4_8086 = 0x01


def ram_split(ram_size: int) -> tuple[int, int]:
    """(RAM below 4 GiB, RAM above 4 GiB) as QEMU's pc machine lays them out
    (emu/core/firmware/layout.py holds the rule)."""
    lay = ram_layout(ram_size)
    return lay.below_4g, lay.above_4g


class PcPlatform:
    def __init__(self, m: "Board") -> None:
        self.m = m
        apic = m.apic
        apic.firmware_state()
        self.pic = PicPair(changed=self._pic_changed)
        self.ioapic = IoApic(apic, changed=m.irq.changed)
        self.lines = InterruptLines(self.pic, self.ioapic, apic)
        self.pic.sync = self.ioapic.sync = m.irq.tick_timers
        self.pic.rerouted = m.irq.changed
        apic.extint = self.pic
        apic.on_level_eoi = self.ioapic.eoi
        m.irq.map_mmio(IOAPIC_BASE, IOAPIC_MMIO_SIZE, self.ioapic)

        now, advance = m.irq.now, m.irq.advance
        self.hpet = Hpet(now, advance, self.lines.set, self.lines.routed)
        self.hpet.sync, self.hpet.changed = m.irq.tick_timers, m.irq.changed
        m.irq.map_mmio(HPET_BASE, HPET_MAP_SIZE, self.hpet)
        self.pit = Pit8254(now, advance, lambda level: self._legacy_line(PIT_IRQ, level),
                           lambda: not self.hpet.legacy and self.lines.routed(PIT_IRQ))
        m.irq.timers.append(self.pit)
        m.irq.timers.append(self.hpet)
        m.serial.irq = lambda level: self.lines.set(COM1_IRQ, level)
        below, above = ram_split(m.ram_size)
        self.cmos = Cmos(now, below, above)
        self.cmos.irq = lambda level: self._legacy_line(RTC_IRQ, level)
        self.cmos.routed = lambda: not self.hpet.legacy and self.lines.routed(RTC_IRQ)
        m.irq.timers.append(self.cmos)
        self.kbc = KeyboardController(m.reset_request, self._a20,
                                      lambda level: self.lines.set(KBC_IRQ, level))
        self.port92 = SystemPortA(m.reset_request, self._a20)
        self.pm = PmBlock(now, advance, m.poweroff, PM_BASE_DEFAULT, m.suspend_request)
        self.pci = PciHost(m.reset_request, self._move_pm)
        self.pci.ext_cfg = lambda: bool(m.msrs.values.get(MSR_NB_CFG, 0)
                                        & NB_CFG_ENABLE_CF8_EXT_CFG)
        self.pm.moved = self._move_pm
        self.testdev = PcTestdev(self.lines.set)
        self.testdev.iomem.map_into(m.uc)
        for dev in (self.pic, self.pit, self.kbc, self.cmos, PostPort(), self.port92,
                    self.testdev, self.pm, self.pci, ApmControl(self.pm)):
            m.add_device(dev)
        m.devices.append(self.ioapic)
        m.devices.append(self.hpet)

    def reset_devices(self) -> None:
        """What QEMU's machine reset does to the devices that do not keep their state (the
        wake-up from S3, emu/core/acpi_sleep.py): the 8254's channels back to mode 3 with the
        full count and channel 2's gate off, the I/O APIC's entries masked, the HPET stopped,
        the UART's registers cleared. The 8259s are reset by the firmware's own setup
        (`seabios_pic_setup`)."""
        for ch in range(3):
            self.pit.write(PIT_CONTROL, 1, ch << 6 | PIT_LOBYTE_HIBYTE_MODE3)
            self.pit.write(PIT_CHANNEL0 + ch, 1, 0)
            self.pit.write(PIT_CHANNEL0 + ch, 1, 0)
        self.pit.write(PORT_B, 1, 0)
        self.ioapic.reset()
        self.hpet.write_reg(GINTR_STA, self.hpet.isr, MASK64)   # lower its level-triggered lines
        self.hpet.reset()
        serial = self.m.serial
        was = serial.level
        serial.reset()
        if was:
            serial.irq(0)
        self.m.irq.changed()

    def seabios_pic_setup(self) -> None:
        """SeaBIOS's pic_setup: ICW1-4 to both 8259s (vectors 0x08 and 0x70, cascade on IRQ 2),
        then every input masked but the cascade."""
        for cmd, data, base, icw3, imr in (
                (PIC_MASTER_CMD, PIC_MASTER_DATA, BIOS_MASTER_BASE, 1 << CASCADE_IRQ,
                 0xFF & ~(1 << CASCADE_IRQ)),
                (PIC_SLAVE_CMD, PIC_SLAVE_DATA, BIOS_SLAVE_BASE, CASCADE_IRQ, 0xFF)):
            self.pic.write(cmd, 1, ICW1_INIT | ICW1_IC4)
            self.pic.write(data, 1, base)
            self.pic.write(data, 1, icw3)
            self.pic.write(data, 1, PIC_ICW4_8086)
            self.pic.write(data, 1, imr)

    def _legacy_line(self, irq: int, level: int) -> None:
        """The PIT's and the RTC's outputs, cut off while the HPET's legacy replacement
        routing owns their lines."""
        if not self.hpet.legacy:
            self.lines.set(irq, level)

    def _pic_changed(self) -> None:
        if self.pic.intr():
            self.m.irq.changed()
            for cpu in self.m.cpu_list[1:]:     # application processors whose LINT0 hears it
                if cpu.apic.lint0_accepts():
                    cpu.irq.changed()

    @staticmethod
    def _a20(enabled: bool) -> None:
        if not enabled:
            raise Unsupported("unsupported: the guest disabled the A20 gate (svmemu keeps "
                              "address bit 20 unmasked)")

    def _move_pm(self, base: int | None) -> None:
        m = self.m
        for port in self.pm.ports():
            if m.ports.get(port) is self.pm:
                del m.ports[port]
        self.pm.base = base
        for port in self.pm.ports():
            m.ports[port] = self.pm
