"""What the firmware leaves in memory and in the CPU for a kernel booted like
``qemu-system-x86_64 -kernel`` (QEMU 7.2's pc machine with SeaBIOS).

One module per thing: layout.py (RAM ranges, the e820 map, where firmware data lives), bda.py
(BIOS data area, EBDA), ivt.py (the real-mode interrupt vector table and its handlers),
bios_services.py (the real-mode BIOS calls those handlers answer), mptable.py (MP floating
pointer and configuration table), acpi.py (RSDP, RSDT, FADT, FACS, DSDT, MADT), smbios.py
(SMBIOS 2.8), mtrr.py (the MTRRs SeaBIOS programs).  ``install`` puts
them in a machine before its kernel is loaded; everything it writes lies in ranges the e820
map reserves (EBDA, BIOS segment, the top 128 KiB of low RAM), so no kernel is told it may use
that memory.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from emu.core.firmware.acpi import build_acpi
from emu.core.firmware.bda import bda_contents
from emu.core.firmware.ivt import ivt_contents
from emu.core.firmware.layout import FIRMWARE_RESERVED_TOP, ram_layout
from emu.core.firmware.mptable import MP_FLOATING_ADDR, PciInterrupt, build_mptable
from emu.core.firmware.mtrr import seabios_mtrrs
from emu.core.firmware.smbios import build_smbios
from emu.errors import OptionError

PCI_INTERRUPT_LINE = 0x3C
PCI_INTERRUPT_PIN = 0x3D
MAX_XAPIC_CPUS = 255      # APIC ids 0..254; 0xFF is the broadcast id

if TYPE_CHECKING:
    from emu.core.board import Board


def firmware_contents(ram_size: int, cpus: int, cpuid_1: tuple[int, int, int, int],
                      pci_interrupts: tuple[PciInterrupt, ...] = ()) -> list[tuple[int, bytes]]:
    """(physical address, bytes) of every structure the firmware leaves in RAM."""
    if not 1 <= cpus <= MAX_XAPIC_CPUS:
        raise OptionError(f"the firmware tables describe 1 to {MAX_XAPIC_CPUS} CPUs (8-bit "
                          f"xAPIC ids), not {cpus}")
    lay = ram_layout(ram_size)
    try:
        acpi = build_acpi(cpus, lay.firmware_top, FIRMWARE_RESERVED_TOP)
    except ValueError as e:
        raise OptionError(f"firmware tables do not fit: {e}") from None
    smbios = build_smbios(ram_size, cpus, cpuid_1, lay.firmware_top, MP_FLOATING_ADDR)
    return (ivt_contents() + bda_contents() + build_mptable(cpus, cpuid_1, pci_interrupts)
            + acpi + smbios)


def pci_interrupts(functions: dict[tuple[int, int], Any]) -> tuple[PciInterrupt, ...]:
    """The MP table's PCI interrupt entries, as SeaBIOS derives them from bus 0: one per
    device and pin of a function with an interrupt pin, to the I/O APIC input its interrupt
    line names."""
    out: dict[tuple[int, int], PciInterrupt] = {}
    for (dev, _fn), f in sorted(functions.items()):
        pin, line = f.space[PCI_INTERRUPT_PIN], f.space[PCI_INTERRUPT_LINE]
        if pin and (dev, pin) not in out:
            out[(dev, pin)] = PciInterrupt(dev, pin - 1, line)
    return tuple(out.values())


def install(machine: "Board") -> list[tuple[int, int]]:
    """Write the firmware's tables into the machine's RAM and program its MTRRs; the (address,
    length) spans written, so that the loader knows where RAM is no longer zero."""
    lay = ram_layout(machine.ram_size)
    cpuid_1 = tuple(machine.cpuid.query(1, 0))
    pc = getattr(machine, "pc", None)
    pci = pci_interrupts(pc.pci.functions) if pc is not None else ()
    written = []
    for addr, data in firmware_contents(machine.ram_size, machine.cpus, cpuid_1,  # type: ignore[arg-type]
                                        pci):
        assert lay.is_ram(addr, len(data)), f"firmware data at {addr:#x} outside RAM"
        machine.ram[addr:addr + len(data)] = data
        written.append((addr, len(data)))
    install_mtrrs(machine)
    return written


def install_mtrrs(machine: "Board") -> None:
    """Program one CPU's MTRRs as SeaBIOS leaves them (the same on every CPU)."""
    lay = ram_layout(machine.ram_size)
    machine.msrs.values.update(seabios_mtrrs(lay.below_4g, machine.msrs.maxphyaddr))
