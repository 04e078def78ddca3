"""ACPI tables as QEMU 7.2's pc machine builds them and SeaBIOS places them.

Measured on QEMU 7.2 (dump of guest memory, -m 128M): RSDP revision 0 (ACPI 1.0: an RSDT, no
XSDT) at 0xF59D0 in the BIOS segment; the tables in the 128 KiB SeaBIOS reserves at the top of
low RAM: FACS first (64-byte aligned), then the DSDT, FADT, MADT and RSDT; every table with OEM
"BOCHS " / "BXPC    ", revision 1, creator "BXPC" 1.  The FADT is the 116-byte ACPI 1.0 one for
the PIIX4 power management function at I/O base 0x600 (PM1a event 0x600, control 0x604, a
24-bit PM timer at 0x608, GPE0 at 0xAFE0), SCI on IRQ 9, SMI command port 0xB2 (0xF1 enables
ACPI mode).  The MADT lists each local APIC, the I/O APIC (id 0, GSI base 0, 0xFEC00000), the
overrides IRQ0 -> GSI 2 and IRQ 5, 9, 10, 11 level-triggered active-high, and NMI on LINT1 of
every processor.

The HPET table describes the event timer block at 0xFED00000 (its capability word 0x8086A201,
HPET number 0, no minimum tick, no page protection) and the WAET says the PM timer is reliable
(one read suffices), as QEMU's; the RSDT lists FADT, MADT, HPET and WAET in that order.

Deliberate difference: the DSDT is the smallest one a kernel needs (the sleep states of QEMU's
PIIX4 with S3 and S4 enabled: \\_S3 sleep type 1, \\_S4 type 2, \\_S5 type 0 for soft-off, the
numbers devices/pm_timer.py acts on) instead of QEMU's 6 KiB of AML describing PCI and ISA
devices svmemu does not have.
"""
from __future__ import annotations

import struct

from emu.core.devices.hpet import GCAP_LOW, HPET_BASE
from emu.core.devices.pm_timer import SLP_TYP_S3, SLP_TYP_S4, SLP_TYP_S5
from emu.core.firmware.checksum import with_checksum
from emu.core.firmware.mptable import IO_APIC_ADDR, IO_APIC_ID, LOCAL_APIC_ADDR

RSDP_ADDR = 0xF59D0
RSDP_REVISION_ACPI_1 = 0
OEM_ID = b"BOCHS "
OEM_TABLE_ID = b"BXPC    "
OEM_REVISION = 1
CREATOR_ID = b"BXPC"
CREATOR_REVISION = 1
SDT_HEADER_SIZE = 36
SDT_CHECKSUM_OFFSET = 9
FACS_SIZE = 64
FACS_ALIGN = 64

# FADT (ACPI 1.0, 116 bytes) values of QEMU's PIIX4 PM.
PM_IO_BASE = 0x600
PM1A_EVT_BLK = PM_IO_BASE
PM1A_CNT_BLK = PM_IO_BASE + 0x04
PM_TMR_BLK = PM_IO_BASE + 0x08
GPE0_BLK = 0xAFE0
SCI_IRQ = 9
SMI_CMD_PORT = 0xB2
ACPI_ENABLE_VALUE = 0xF1
ACPI_DISABLE_VALUE = 0xF0
PM1_EVT_LEN = 4
PM1_CNT_LEN = 2
PM_TMR_LEN = 4
GPE0_LEN = 4
P_LVL_LAT_NONE = 0x0FFF          # C2/C3 latencies above the limits: no C2, no C3
RTC_CENTURY_INDEX = 0x32
INT_MODEL_APIC = 1
FADT_WBINVD = 1 << 0
FADT_PROC_C1 = 1 << 2
FADT_SLP_BUTTON = 1 << 5
FADT_RTC_S4 = 1 << 7
FADT_USE_PLATFORM_CLOCK = 1 << 15
FADT_FLAGS = (FADT_WBINVD | FADT_PROC_C1 | FADT_SLP_BUTTON | FADT_RTC_S4
              | FADT_USE_PLATFORM_CLOCK)
FADT_SIZE_ACPI_1 = 116

# MADT structure types (ACPI 6.x, 5.2.12).
MADT_PCAT_COMPAT = 1
MADT_LOCAL_APIC = 0
MADT_IO_APIC = 1
MADT_INT_SRC_OVERRIDE = 2
MADT_LOCAL_APIC_NMI = 4
MADT_ENABLED = 1
MPS_INTI_POLARITY_HIGH = 0x1
MPS_INTI_TRIGGER_LEVEL = 0xC
LEVEL_HIGH_IRQS = (5, 9, 10, 11)
ALL_PROCESSORS = 0xFF

# AML (ACPI 6.x, 20.2): Name(_Sx_, Package(4) {type, type, 0, 0}) for S3, S4 and S5, each type
# encoded as QEMU's aml_int does (ZeroOp, OneOp, else BytePrefix and the byte).
AML_NAME_OP = 0x08
AML_PACKAGE_OP = 0x12
AML_ZERO_OP = 0x00
AML_ONE_OP = 0x01
AML_BYTE_PREFIX = 0x0A


def _aml_int(value: int) -> bytes:
    if value in (AML_ZERO_OP, AML_ONE_OP):
        return bytes([value])
    return bytes([AML_BYTE_PREFIX, value])


def _sleep_package(name: bytes, typ: int) -> bytes:
    elements = _aml_int(typ) * 2 + bytes([AML_ZERO_OP] * 2)
    return (bytes([AML_NAME_OP]) + name
            + bytes([AML_PACKAGE_OP, 2 + len(elements), 4]) + elements)   # PkgLength counts itself


DSDT_AML = (_sleep_package(b"_S3_", SLP_TYP_S3) + _sleep_package(b"_S4_", SLP_TYP_S4)
            + _sleep_package(b"_S5_", SLP_TYP_S5))

def sdt(signature: bytes, body: bytes, revision: int = 1) -> bytes:
    """A system description table: the 36-byte header, ``body``, the checksum filled in."""
    header = struct.pack("<4sIBB6s8sI4sI", signature, SDT_HEADER_SIZE + len(body), revision, 0,
                         OEM_ID, OEM_TABLE_ID, OEM_REVISION, CREATOR_ID, CREATOR_REVISION)
    return with_checksum(header + body, SDT_CHECKSUM_OFFSET)


def facs() -> bytes:
    return struct.pack("<4sI", b"FACS", FACS_SIZE) + bytes(FACS_SIZE - 8)


def fadt(facs_addr: int, dsdt_addr: int) -> bytes:
    body = struct.pack(
        "<IIBBHIBBBBIIIIIIIIBBBBBBBBHHHHBBBBBHBI",
        facs_addr, dsdt_addr, INT_MODEL_APIC, 0, SCI_IRQ, SMI_CMD_PORT, ACPI_ENABLE_VALUE,
        ACPI_DISABLE_VALUE, 0, 0,                       # S4BIOS_REQ, PSTATE_CNT
        PM1A_EVT_BLK, 0, PM1A_CNT_BLK, 0, 0, PM_TMR_BLK, GPE0_BLK, 0,
        PM1_EVT_LEN, PM1_CNT_LEN, 0, PM_TMR_LEN, GPE0_LEN, 0, 0, 0,   # ..., GPE1_BASE, CST_CNT
        P_LVL_LAT_NONE, P_LVL_LAT_NONE, 0, 0,           # P_LVL2/3_LAT, FLUSH_SIZE/STRIDE
        0, 0, 0, 0, RTC_CENTURY_INDEX,                  # DUTY_OFFSET/WIDTH, DAY/MON_ALRM, CENTURY
        0, 0, FADT_FLAGS)                               # IAPC_BOOT_ARCH, reserved, flags
    table = sdt(b"FACP", body)
    assert len(table) == FADT_SIZE_ACPI_1
    return table


def madt(cpus: int) -> bytes:
    body = struct.pack("<II", LOCAL_APIC_ADDR, MADT_PCAT_COMPAT)
    for i in range(cpus):
        body += struct.pack("<BBBBI", MADT_LOCAL_APIC, 8, i, i, MADT_ENABLED)
    body += struct.pack("<BBBBII", MADT_IO_APIC, 12, IO_APIC_ID, 0, IO_APIC_ADDR, 0)
    body += struct.pack("<BBBBIH", MADT_INT_SRC_OVERRIDE, 10, 0, 0, 2, 0)
    for irq in LEVEL_HIGH_IRQS:
        body += struct.pack("<BBBBIH", MADT_INT_SRC_OVERRIDE, 10, 0, irq, irq,
                            MPS_INTI_POLARITY_HIGH | MPS_INTI_TRIGGER_LEVEL)
    body += struct.pack("<BBBHB", MADT_LOCAL_APIC_NMI, 6, ALL_PROCESSORS, 0, 1)
    return sdt(b"APIC", body)


GAS_SYSTEM_MEMORY = 0             # a Generic Address Structure's address space ID
HPET_NUMBER = 0
WAET_PM_TIMER_ONE_READ = 1 << 1   # "ACPI PM timer good": QEMU's only flag


def hpet() -> bytes:
    gas = struct.pack("<BBBBQ", GAS_SYSTEM_MEMORY, 0, 0, 0, HPET_BASE)
    return sdt(b"HPET", struct.pack("<I", GCAP_LOW) + gas + struct.pack("<BHB", HPET_NUMBER, 0, 0))


def waet() -> bytes:
    return sdt(b"WAET", struct.pack("<I", WAET_PM_TIMER_ONE_READ))


def rsdp(rsdt_addr: int) -> bytes:
    return with_checksum(struct.pack("<8sB6sBI", b"RSD PTR ", 0, OEM_ID, RSDP_REVISION_ACPI_1,
                                     rsdt_addr), 8)


def build_acpi(cpus: int, area: int, area_size: int) -> list[tuple[int, bytes]]:
    """(physical address, bytes) of every table: FACS, DSDT, FADT, MADT, HPET, WAET, RSDT from
    ``area`` (64-byte aligned) and the RSDP in the BIOS segment.  Raises ValueError when they
    do not fit in ``area_size`` bytes."""
    assert area % FACS_ALIGN == 0
    out: list[tuple[int, bytes]] = []
    pos = area

    def place(blob: bytes) -> int:
        nonlocal pos
        addr = pos
        out.append((addr, blob))
        pos = (pos + len(blob) + 3) & ~3
        return addr

    facs_addr = place(facs())
    dsdt_addr = place(sdt(b"DSDT", DSDT_AML))
    fadt_addr = place(fadt(facs_addr, dsdt_addr))
    madt_addr = place(madt(cpus))
    hpet_addr = place(hpet())
    waet_addr = place(waet())
    rsdt_addr = place(sdt(b"RSDT", struct.pack("<IIII", fadt_addr, madt_addr, hpet_addr,
                                               waet_addr)))
    if pos > area + area_size:
        raise ValueError(f"the ACPI tables need {pos - area:#x} bytes, the firmware area has "
                         f"{area_size:#x}")
    out.append((RSDP_ADDR, rsdp(rsdt_addr)))
    return out
