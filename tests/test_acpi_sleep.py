"""ACPI sleep states (emu/core/acpi_sleep.py, devices/pm_timer.py): S3 that no enabled event can
end stops with a clear message, the PM timer wakes a sleeping machine, a resume without a waking
vector reboots, S4 powers off. guests/s3.S checks the RTC wake and the resumed state (on QEMU
too); the kvm-unit-tests `s3` entry runs in the conformance suite."""
from __future__ import annotations

from emu.core import snapshot
from emu.core.devices.pm_timer import RTC_STS, TMR_STS, WAK_STS
from emu.core.firmware.acpi import DSDT_AML
from emu.core.machine import Machine
from emu.errors import STATUS_HALTED, STATUS_SHUTDOWN

from tests.harness import boot, source

PM1_EVT, PM1_CNT = 0x600, 0x604
WAKE_VECTOR = 0x9000
EXIT_CODE = 0x2A

# Real mode at the waking vector: mov al, EXIT_CODE; out 0xf4, al (isa-debug-exit).
STUB = bytes([0xB0, EXIT_CODE, 0xE6, 0xF4])


def _guest(tmp_path, *, enable: int, sleep_type: int = 1, vector: int = WAKE_VECTOR,
           rtc_b: int | None = None, in_l2: bool = False) -> str:
    """Sets the FACS waking vector (real mode there: exit with EXIT_CODE), enables `enable` in
    PM1 enable, optionally arms the RTC alarm, then sleeps: from L1, or from an L2 guest whose
    hypervisor intercepts no port."""
    stub = ", ".join(f"{b:#x}" for b in STUB)
    rtc = (f"""
    mov al, 0x01
    out 0x70, al
    mov al, 0xc0
    out 0x71, al
    mov al, 0x0b
    out 0x70, al
    mov al, {rtc_b:#x}
    out 0x71, al""" if rtc_b is not None else "")
    return source(tmp_path, f"""
.include "prelude.inc"
{'.include "svm.inc"' if in_l2 else ""}
main:
    mov rsi, 0xe0000
    mov rax, 0x2052545020445352
1:  cmp [rsi], rax
    je 2f
    add rsi, 16
    jmp 1b
2:  mov ebx, [rsi + 16]             # RSDT; its first entry is the FADT
    mov ebx, [rbx + 36]
    mov ebx, [rbx + 36]             # FIRMWARE_CTRL: the FACS
    mov dword ptr [rbx + 12], {vector:#x}
    lea rsi, [rip + stub]
    mov edi, {WAKE_VECTOR:#x}
    mov ecx, {len(STUB)}
    rep movsb
{"    call svm_enable" if in_l2 else ""}
{"    lea rdi, [rip + sleeper]" if in_l2 else ""}
{"    call vmcb_init" if in_l2 else ""}
{"    run_l2 1" if in_l2 else ""}
sleeper:
    mov dx, {PM1_EVT + 2:#x}
    mov ax, {enable:#x}
    out dx, ax{rtc}
    mov dx, {PM1_CNT:#x}
    mov ax, {sleep_type << 10 | 0x2000:#x}
    out dx, ax
    mov al, 0x7f                   # never reached: the machine sleeps at the OUT
    out 0xf4, al
3:  jmp 3b
stub:
    .byte {stub}
""")


def test_s3_with_no_wake_event_enabled_stops_clearly(tmp_path):
    b = boot(_guest(tmp_path, enable=0), nested=False)
    assert (b.result.reason, b.result.status) == ("halt", STATUS_HALTED)
    assert "no wake event" in b.result.message


def test_s3_with_rtc_en_but_no_alarm_armed_stops_clearly(tmp_path):
    b = boot(_guest(tmp_path, enable=RTC_STS), nested=False)       # RTC_EN, AIE clear
    assert (b.result.reason, b.result.status) == ("halt", STATUS_HALTED)


def test_rtc_alarm_without_rtc_en_does_not_wake(tmp_path):
    b = boot(_guest(tmp_path, enable=0, rtc_b=0x22), nested=False)   # AIE, RTC_EN clear
    assert (b.result.reason, b.result.status) == ("halt", STATUS_HALTED)


def test_pm_timer_wakes_s3_at_the_waking_vector(tmp_path):
    b = boot(_guest(tmp_path, enable=TMR_STS), nested=False)        # TMR_EN
    assert (b.result.reason, b.result.status) == ("exit", EXIT_CODE << 1 | 1), b.result.message
    status = b.machine.pc.pm.status()
    assert status & (WAK_STS | TMR_STS) == WAK_STS | TMR_STS
    assert not status & RTC_STS


def test_rtc_alarm_wakes_s3_with_rtc_sts(tmp_path):
    b = boot(_guest(tmp_path, enable=RTC_STS, rtc_b=0x22), nested=False)
    assert (b.result.reason, b.result.status) == ("exit", EXIT_CODE << 1 | 1), b.result.message
    assert b.machine.pc.pm.status() & (WAK_STS | RTC_STS) == WAK_STS | RTC_STS
    assert b.machine.pc.cmos.ram[0x0F] == 0          # 0xFE at the sleep, cleared by the firmware


def test_resume_with_the_nested_svm_extension(tmp_path):
    b = boot(_guest(tmp_path, enable=TMR_STS))
    assert (b.result.reason, b.result.status) == ("exit", EXIT_CODE << 1 | 1), b.result.message


def test_resume_without_a_waking_vector_reboots(tmp_path):
    b = boot(_guest(tmp_path, enable=TMR_STS, vector=0), nested=False)
    assert (b.result.reason, b.result.status) == ("reset", STATUS_SHUTDOWN)


def test_s4_powers_off_as_qemu(tmp_path):
    b = boot(_guest(tmp_path, enable=0, sleep_type=2), nested=False)
    assert (b.result.reason, b.result.status) == ("poweroff", STATUS_HALTED)


def test_dsdt_names_qemus_sleep_types():
    assert b"_S3_\x12\x06\x04\x01\x01\x00\x00" in DSDT_AML
    assert b"_S4_\x12\x08\x04\x0a\x02\x0a\x02\x00\x00" in DSDT_AML
    assert b"_S5_\x12\x06\x04\x00\x00\x00\x00" in DSDT_AML


def test_resume_with_several_cpus(tmp_path):
    b = boot(_guest(tmp_path, enable=RTC_STS, rtc_b=0x22), nested=False, cpus=2)
    assert (b.result.reason, b.result.status) == ("exit", EXIT_CODE << 1 | 1), b.result.message
    assert b.machine.cpu_list[1].apic.wait_for_sipi


def test_snapshot_before_the_sleep_resumes_alike(tmp_path):
    """A machine restored from a snapshot sleeps and resumes as the one it was taken from (the
    CPU's power-on state is the restoring machine's own)."""
    path = _guest(tmp_path, enable=RTC_STS, rtc_b=0x22)
    straight = boot(path, nested=False)
    b = boot(path, nested=False, max_insns=3000)
    assert b.result.reason == "max-insns"
    fresh = Machine(b.machine.ram_size, stdout=None)
    snapshot.restore(fresh, snapshot.decode(snapshot.encode(snapshot.take(b.machine))))
    res = fresh.run(timeout=20)
    assert (res.reason, res.status) == (straight.result.reason, straight.result.status)
    assert fresh.tsc == straight.machine.tsc
    assert fresh.pc.pm.status() == straight.machine.pc.pm.status()


def test_wake_reset_of_the_devices_qemu_resets():
    """What QEMU's reset on wake does to the devices that do not keep their state."""
    m = Machine(64 << 20, stdout=None)
    pc = m.pc
    pc.hpet.mmio_write(0x010, 8, 1)                  # HPET on
    pc.ioapic.redtbl[4] = 0x30                       # an unmasked entry
    pc.pit.write(0x43, 1, 0x30)                      # channel 0: mode 0
    m.serial.write(0x3F9, 1, 0x0F)                   # UART interrupts on
    pc.reset_devices()
    assert not pc.hpet.enabled
    assert all(e & 1 << 16 for e in pc.ioapic.redtbl)
    assert pc.pit.channels[0].mode == 3
    assert m.serial.ier == 0


def test_s3_from_a_nested_guest_resumes_the_cpu_as_reset(tmp_path):
    """L2 sleeps (its hypervisor lets the ports through): the wake-up resets the CPU, nested
    state included, and the firmware enters the waking vector in L1's real mode."""
    b = boot(_guest(tmp_path, enable=TMR_STS, in_l2=True))
    assert (b.result.reason, b.result.status) == ("exit", EXIT_CODE << 1 | 1), b.result.message
    assert not b.ext.state.in_l2
    assert b.machine.level() == "L1"
    assert b.ext.world_switches()[0] == 1        # the VMRUN into the sleeper still counts
