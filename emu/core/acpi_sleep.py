"""ACPI S3, suspend to RAM, and the resume, as QEMU's pc machine and SeaBIOS 1.16 do them.

Measured on QEMU 7.2 with guests/s3.S; QEMU's hw/acpi/core.c, hw/rtc/mc146818rtc.c and
SeaBIOS's resume.c say the same.

Suspend. The guest writes PM1 control with SLP_EN and sleep type 1 (the DSDT's \\_S3): the
machine stops right after that OUT (Machine.suspend_request: no further instruction runs on any
CPU, where QEMU's TCG finishes the translation block first), RAM is kept, and the RTC writes
0xFE in the CMOS shutdown status. Time then jumps to the first enabled wake event (never a busy
wait): the RTC alarm with PM1 enable RTC_EN and status B's AIE, or the PM timer's status bit
toggling with TMR_EN, QEMU's two wake reasons a guest can arm. When neither can ever happen the
run ends as a machine halted for good does (reason `halt`, status 0), with a message saying so:
QEMU would wait forever.

Wake. WAK_STS and the cause's status bit are set in PM1 status; QEMU resets the machine
(`platform_reset`): every CPU, PM1 enable and control, the RTC's PIE/AIE/SQWE and status C, the
8259s, the 8254, the I/O APIC, the HPET and the UART; RAM, CMOS RAM, the clock and PCI
configuration are kept. Then SeaBIOS's resume path runs: it reads and clears the shutdown
status, finds the FADT through its RSDP and the FACS through FIRMWARE_CTRL, sets the 8259s up
(vectors 0x08/0x70, everything masked but the cascade), sets the boot CPU's local APIC up as at
boot (SVR 0x1FF, LINT0/LINT1 the virtual wire) and jumps to the FACS's 32-bit
Firmware_Waking_Vector in real mode: CS = vector >> 4, IP = vector & 0xF, CR0 = ET, FLAGS = 2,
data segments and general registers 0, SS:SP = 0:0xF70 (its resume stack). SeaBIOS ignores
X_Firmware_Waking_Vector (our FACS is the ACPI 1.0 one, which has none). Application processors
wait for SIPI, as at boot. Without a waking vector SeaBIOS reboots the machine: the run ends as
every reset does (status 4). The local APIC of an application processor and the 8042 keep their
state; the TSC keeps counting virtual time, as QEMU's TCG clock does (a real reset zeroes it).
"""
from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from emu.core.devices.cmos import CMOS_SHUTDOWN_STATUS
from emu.core.devices.pm_timer import RTC_EN
from emu.core.firmware.acpi import RSDP_ADDR
from emu.errors import STATUS_HALTED

if TYPE_CHECKING:
    from emu.core.board import Board

CR0_AT_WAKING_VECTOR = 0x10        # ET: SeaBIOS runs with caches enabled
SP_AT_WAKING_VECTOR = 0xF70        # SeaBIOS's S3 resume stack (0x1000) less its call frames
RSDT_ENTRIES_OFFSET = 36
FADT_FIRMWARE_CTRL = 36
FACS_WAKING_VECTOR = 12


def sleep(cpu: "Board") -> None:
    """`cpu` wrote SLP_TYP = S3 with SLP_EN and has stopped after that instruction: sleep until
    a wake event, then resume at the waking vector (or end the run when nothing can wake)."""
    boot = cpu.cpu_list[0]
    pc = boot.pc
    pc.cmos.suspend()
    now = max(c.tsc for c in boot.cpu_list)
    for c in boot.cpu_list:
        c.tsc = now
    rtc = pc.cmos.alarm_wake_time() if pc.pm.enable & RTC_EN else None
    tmr = pc.pm.timer_wake_time()
    if rtc is None and tmr is None:
        boot.stop("halt", STATUS_HALTED,
                  "suspended to RAM (ACPI S3) with no wake event that can happen (PM1 enable "
                  "RTC_EN with the RTC alarm armed, or TMR_EN): the machine sleeps for good")
        return
    wake = min(t for t in (rtc, tmr) if t is not None)
    for c in boot.cpu_list:
        c.tsc = max(c.tsc, wake)
    platform_reset(boot, by_rtc=rtc == wake)
    pc.cmos.ram[CMOS_SHUTDOWN_STATUS] = 0          # SeaBIOS's handle_resume
    vector = waking_vector(boot)
    if not vector:
        boot.reset_request("resume from S3 with no waking vector in the FACS: the firmware "
                           "reboots the machine")
        return
    pc.seabios_pic_setup()
    for ap in boot.cpu_list[1:]:
        ap.enter_wait_for_sipi()
    boot.reset_to_real_mode(vector >> 4, vector & 0xF, CR0_AT_WAKING_VECTOR, SP_AT_WAKING_VECTOR)
    boot.apic.firmware_state()                     # SeaBIOS sets the BSP's APIC up again


def platform_reset(boot: "Board", by_rtc: bool) -> None:
    """The devices as QEMU's reset on wake-up leaves them (see the module docstring)."""
    pc = boot.pc
    pc.cmos.platform_reset()
    pc.pm.woken(by_rtc)
    pc.reset_devices()


def waking_vector(boot: "Board") -> int:
    """The FACS's Firmware_Waking_Vector, found as SeaBIOS finds it: its RSDP, the RSDT's first
    FACP, FIRMWARE_CTRL, the "FACS" signature. 0 when any link is missing or broken."""
    ram = boot.ram
    size = boot.layout.below_4g

    def u32(addr: int) -> int | None:
        if not 0 <= addr <= size - 4:
            return None
        return struct.unpack_from("<I", ram, addr)[0]

    rsdt = u32(RSDP_ADDR + 16)
    if rsdt is None or ram[rsdt:rsdt + 4] != b"RSDT":
        return 0
    length = u32(rsdt + 4) or 0
    for entry in range(rsdt + RSDT_ENTRIES_OFFSET, rsdt + length - 3, 4):
        table = u32(entry)
        if table is None or ram[table:table + 4] != b"FACP":
            continue
        facs = u32(table + FADT_FIRMWARE_CTRL)
        if facs is None or ram[facs:facs + 4] != b"FACS":
            return 0
        return u32(facs + FACS_WAKING_VECTOR) or 0
    return 0
