"""Debian's Linux 6.1 (a kernel none of us wrote, unpacked into build/linux by .ci/run) boots
on svmemu as `qemu-system-x86_64 -kernel vmlinuz -append ... -initrd ...` boots it: the banner
and the BIOS-e820 map, the root-fs panic without an initrd, and with a busybox initramfs its
/init's line and an ACPI power-off. Each milestone is a line Linux prints on QEMU 7.2 too;
key lines are compared with QEMU's own run of the same kernel when QEMU is installed."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
import threading

import pytest

from tests.linux_kernel import BUSYBOX, INIT_LINE, KERNEL, REPO, available, initramfs

CMDLINE = "console=ttyS0 panic=-1"
RAM = "256M"
skip = pytest.mark.skipif(available() is not None, reason=available() or "")

PANIC_MILESTONES = [
    "Linux version 6.1",
    "Command line: " + CMDLINE,
    "BIOS-e820: [mem 0x0000000000000000-0x000000000009fbff] usable",
    "BIOS-e820: [mem 0x000000fd00000000-0x000000ffffffffff] reserved",
    "smpboot: CPU0: AMD EPYC Processor (family: 0x17, model: 0x1, stepping: 0x2)",
    "clocksource: Switched to clocksource tsc-early",
    "Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(0,0)",
]
INITRD_MILESTONES = [
    "Linux version 6.1",
    "RAMDISK: [mem ",
    "Trying to unpack rootfs image as initramfs...",
    "Run /init as init process",
    INIT_LINE,
    "reboot: Power down",
]
# Lines that say what the machine is, which must read the same as on QEMU (timestamps cut).
SAME_AS_QEMU = ("BIOS-e820:", "SMBIOS ", "DMI:", "x86/PAT:", "smpboot: CPU0:", "ACPI: RSDP",
                "IOAPIC[0]:", "ACPI: INT_SRC_OVR", "ACPI: HPET id:", "RAMDISK:", "hpet0:")
# The first clock source Linux switches to (QEMU's slower virtual clock lets it refine the TSC
# and switch again before the panic; svmemu's boot is over in fewer virtual seconds).
FIRST_SWITCH = "clocksource: Switched to"


def _svmemu(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "emu.cli", "run", str(KERNEL), "-m", RAM,
                             "--append", CMDLINE, "--timeout", "600", *args], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            errors="replace")


def _qemu(*args: str) -> _QemuLines | None:
    if shutil.which("qemu-system-x86_64") is None:
        return None
    return _QemuLines(subprocess.Popen(["qemu-system-x86_64", "-kernel", str(KERNEL), "-append", CMDLINE,
                             "-m", RAM, "-cpu", "EPYC", "-accel", "tcg", "-nographic",
                             "-no-reboot", "-monitor", "none", *args], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            errors="replace"))


def _in_order(out: str, lines: list[str]) -> None:
    at = 0
    for line in lines:
        found = out.find(line, at)
        assert found >= 0, f"missing or out of order: {line!r}\n{out[-3000:]}"
        at = found


def _key_lines(out: str) -> list[str]:
    text = [re.sub(r"^\[\s*[\d.]+\] ", "", ln.strip("\r")) for ln in out.splitlines()]
    switch = [ln for ln in text if ln.startswith(FIRST_SWITCH)][:1]
    return [ln for ln in text if ln.startswith(SAME_AS_QEMU)] + switch


class _QemuLines(threading.Thread):
    """QEMU's serial output up to the first clock-source switch, the last key line; QEMU is
    stopped there, so that it leaves the CPU to svmemu's run for the rest."""

    def __init__(self, proc: subprocess.Popen) -> None:
        super().__init__(daemon=True)
        self.proc, self.text = proc, ""
        self.start()

    def run(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.text += line
            if FIRST_SWITCH in line:
                self.proc.kill()
                break
        self.proc.wait()


def _compare(ours: str, qemu: _QemuLines | None) -> None:
    if qemu is None:
        return
    qemu.join(timeout=900)
    ours = ours[:ours.index("\n", ours.index(FIRST_SWITCH)) + 1]     # as far as QEMU ran
    assert _key_lines(ours) == _key_lines(qemu.text)


@skip
def test_linux_reaches_the_root_fs_panic_as_on_qemu():
    qemu = _qemu()
    p = _svmemu()
    out, err = p.communicate(timeout=900)
    _in_order(out, PANIC_MILESTONES)
    # panic=-1 reboots at once; svmemu ends a reset as QEMU's -no-reboot does (status 4).
    assert p.returncode == 4 and "reset" in err, err[-2000:]
    # Nothing the kernel probed was missing or refused.
    assert "unchecked MSR access" not in out and "WARNING:" not in out.replace(
        "Speculative Return Stack Overflow: WARNING", "")
    _compare(out, qemu)


@skip
@pytest.mark.skipif(not BUSYBOX.is_file(), reason=f"no busybox at {BUSYBOX} (.ci/run unpacks "
                    "Debian's busybox-static there)")
def test_linux_runs_a_busybox_init_and_powers_off(tmp_path):
    rd = tmp_path / "initrd.gz"
    rd.write_bytes(initramfs(BUSYBOX.read_bytes()))
    p = _svmemu("--initrd", str(rd))
    out, err = p.communicate(timeout=900)
    _in_order(out, INITRD_MILESTONES)
    # poweroff -f: ACPI S5 through the FADT's PM1a control block, status 0 (README, "Exit
    # status").
    assert p.returncode == 0 and "ACPI power-off" in err, err[-2000:]
    # The initramfs where QEMU 7.2 puts it with -m 256M: page-aligned down from below the
    # firmware's top 128 KiB (measured: 1027789 bytes at [mem 0x0fee5000-0x0ffdffff]). The
    # other key lines are the first test's; a second QEMU boot would double the time.
    size = rd.stat().st_size
    start = (0x10000000 - 0x20000 - 1 - size) & ~0xFFF
    end = ((start + size + 0xFFF) & ~0xFFF) - 1
    assert f"RAMDISK: [mem {start:#010x}-{end:#010x}]" in out
