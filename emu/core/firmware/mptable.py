"""The MultiProcessor Specification 1.4 tables, as SeaBIOS builds them on QEMU's pc machine.

Older kernels (and teaching OSes) find the processors and the I/O APIC by searching for the
floating pointer "_MP_" (first KiB of the EBDA, then 0xF0000-0xFFFFF) and reading the
configuration table it points to.  Measured on QEMU 7.2 (dump of guest memory, -m 128M):
pointer at 0xF5BA0, table at 0xF5BB0, OEM "BOCHSCPU", product "0.1", spec revision 1.4, one
processor entry per *package* (SeaBIOS lists only the first logical CPU of each package when
CPUID.1:EDX.HTT is set), buses PCI (0) and ISA (1), I/O APIC id 0 version 0x11, then the
interrupt assignments: one per PCI device and pin with an interrupt (QEMU: the PIIX4 PM function
00:01.3 INTA -> 9, which svmemu has too, and the e1000 00:03.0 INTA -> 11, which it has not),
ISA IRQs 0-15 identity-mapped
except IRQ0 -> INTIN2 and without 2 (the cascade) and 5, 9, 10, 11 (QEMU's PCI interrupt
lines), then ExtINT on LINT0 of the BSP and NMI on LINT1 of every processor.
"""
from __future__ import annotations

import struct

from emu.core.firmware.checksum import with_checksum

MP_FLOATING_ADDR = 0xF5BA0
MP_CONFIG_ADDR = 0xF5BB0
MP_SPEC_REV_1_4 = 4
MP_OEM_ID = b"BOCHSCPU"
MP_PRODUCT_ID = b"0.1         "
LOCAL_APIC_ADDR = 0xFEE00000
IO_APIC_ADDR = 0xFEC00000
IO_APIC_ID = 0
IO_APIC_VERSION = 0x11
LOCAL_APIC_VERSION = 0x14          # what SeaBIOS writes, whatever the APIC reports

# Entry types (MP spec 1.4, chapter 4).
MP_PROCESSOR = 0
MP_BUS = 1
MP_IOAPIC = 2
MP_IOINTR = 3
MP_LINTR = 4
MP_CPU_ENABLED = 1
MP_CPU_BSP = 2
MP_INT = 0
MP_NMI = 1
MP_EXTINT = 3
MP_IRQ_ACTIVE_HIGH = 0x1           # polarity bits 1:0 = 01; trigger bits 3:2 = 00 (conforming)
BUS_PCI = 0
BUS_ISA = 1
CPUID_1_EDX_HTT = 1 << 28
ALL_LAPICS = 0xFF

PCI_ISA_IRQS = frozenset({5, 9, 10, 11})   # QEMU's PCI interrupt lines; not listed as ISA
ISA_CASCADE_IRQ = 2
ISA_IRQ0_PIN = 2                           # the PIT's IRQ0 arrives on INTIN2

MP_HEADER_SIZE = 44
MP_FLOATING_SIZE = 16


class PciInterrupt:
    """A PCI function's interrupt pin and the I/O APIC input it is wired to."""

    __slots__ = ("device", "pin", "gsi")

    def __init__(self, device: int, pin: int, gsi: int) -> None:
        self.device = device
        self.pin = pin            # 0 = INTA#
        self.gsi = gsi


def packages_first_cpus(cpus: int, cpuid_1: tuple[int, int, int, int]) -> list[int]:
    """APIC ids SeaBIOS lists: the first of each package (logical CPUs per package from
    CPUID.1:EBX[23:16], rounded up to a power of two, when EDX.HTT says it is valid)."""
    _, ebx, _, edx = cpuid_1
    per_package = 1
    if edx & CPUID_1_EDX_HTT:
        n = max((ebx >> 16) & 0xFF, 1)
        per_package = 1 << (n - 1).bit_length()
    return list(range(0, cpus, per_package))


def build_mptable(cpus: int, cpuid_1: tuple[int, int, int, int],
                  pci_interrupts: tuple[PciInterrupt, ...] = ()) -> list[tuple[int, bytes]]:
    """(physical address, bytes) of the floating pointer and the configuration table."""
    signature, _, _, features = cpuid_1
    entries: list[bytes] = []
    for apic_id in packages_first_cpus(cpus, cpuid_1):
        flags = MP_CPU_ENABLED | (MP_CPU_BSP if apic_id == 0 else 0)
        entries.append(struct.pack("<BBBBII8x", MP_PROCESSOR, apic_id, LOCAL_APIC_VERSION, flags,
                                   signature, features))
    entries.append(struct.pack("<BB6s", MP_BUS, BUS_PCI, b"PCI   "))
    entries.append(struct.pack("<BB6s", MP_BUS, BUS_ISA, b"ISA   "))
    entries.append(struct.pack("<BBBBI", MP_IOAPIC, IO_APIC_ID, IO_APIC_VERSION, 1, IO_APIC_ADDR))
    for p in pci_interrupts:
        entries.append(struct.pack("<BBHBBBB", MP_IOINTR, MP_INT, MP_IRQ_ACTIVE_HIGH, BUS_PCI,
                                   (p.device << 2) | p.pin, IO_APIC_ID, p.gsi))
    for irq in range(16):
        if irq == ISA_CASCADE_IRQ or irq in PCI_ISA_IRQS:
            continue
        pin = ISA_IRQ0_PIN if irq == 0 else irq
        entries.append(struct.pack("<BBHBBBB", MP_IOINTR, MP_INT, 0, BUS_ISA, irq, IO_APIC_ID, pin))
    entries.append(struct.pack("<BBHBBBB", MP_LINTR, MP_EXTINT, 0, BUS_ISA, 0, 0, 0))
    entries.append(struct.pack("<BBHBBBB", MP_LINTR, MP_NMI, 0, BUS_ISA, 0, ALL_LAPICS, 1))
    body = b"".join(entries)
    header = struct.pack("<4sHBB8s12sIHHIHBB", b"PCMP", MP_HEADER_SIZE + len(body),
                         MP_SPEC_REV_1_4, 0, MP_OEM_ID, MP_PRODUCT_ID, 0, 0, len(entries),
                         LOCAL_APIC_ADDR, 0, 0, 0)
    config = with_checksum(header + body, 7)
    floating = with_checksum(struct.pack("<4sIBBB5s", b"_MP_", MP_CONFIG_ADDR,
                                         MP_FLOATING_SIZE // 16, MP_SPEC_REV_1_4, 0, bytes(5)), 10)
    return [(MP_FLOATING_ADDR, floating), (MP_CONFIG_ADDR, config)]
