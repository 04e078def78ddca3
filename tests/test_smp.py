"""Several CPUs (`-smp N`, emu/core/smp.py): guests/smp.S starts the application processors with
INIT/SIPI and exercises IPIs, LOCKed updates and cross-CPU code modification; runs are the same
every time; what cannot be done yet stops clearly."""
from __future__ import annotations

import hashlib
import subprocess
import sys

import pytest

from emu.core.devices.apic import (APIC_BASE_BSP, ApicBus, ICR_DELIVERY_FIXED, ICR_DELIVERY_INIT,
                                   ICR_DELIVERY_NMI, ICR_DELIVERY_STARTUP, LocalApic)
from emu.core.machine import Machine
from emu.errors import OptionError
from emu.loader.asm import GUESTS_DIR
from tests import harness
from tests.conftest import parse_tap

SMP_GUEST = str(GUESTS_DIR / "smp.S")


def boot_smp(cpus: int = 4, **kw) -> harness.Booted:
    return harness.boot(SMP_GUEST, cpus=cpus, timeout=60, **kw)


def assert_passed(b: harness.Booted) -> None:
    checks = parse_tap(b.serial)
    assert len(checks) == 16 and all(c.ok for c in checks.values()), b.serial
    assert b.result.reason == "exit" and b.result.status == 1, (b.result, b.serial)


@pytest.mark.parametrize("cpus", [4, 8])
def test_kernel_starts_every_ap_and_uses_it(cpus):
    b = boot_smp(cpus)
    assert_passed(b)
    for i in range(1, cpus):
        assert f"# AP {i} up" in b.serial
    m = b.machine
    assert [c.apic.apic_id for c in m.cpu_list] == list(range(cpus))
    assert all(c.started for c in m.cpu_list)
    # The boot CPU alone holds IA32_APIC_BASE.BSP.
    assert [bool(c.apic.base_msr & APIC_BASE_BSP) for c in m.cpu_list] == [True] + [False] * (cpus - 1)


def _fingerprint(b: harness.Booted) -> tuple:
    m = b.machine
    return (b.serial, b.result.rip, hashlib.sha256(bytes(m.ram[:16 << 20])).hexdigest(),
            tuple((c.tsc, c._start, c.irq.halted) for c in m.cpu_list))


def test_each_cpu_keeps_its_own_nested_state():
    """The boot CPU and CPU 1 each ran an L1 whose L2 exited to it 200 times, interleaved by a
    small quantum: each CPU's extension counted its own world switches, none of the other's."""
    b = boot_smp(quantum=300)
    assert_passed(b)
    stats = [c.extensions[0].state.stats for c in b.machine.cpu_list]
    assert stats[0] == stats[1] == {"vmrun": 200, "vmexit": 200}, stats
    assert stats[2] == stats[3] == {"vmrun": 0, "vmexit": 0}, stats
    assert [c.level() for c in b.machine.cpu_list] == ["L1"] * 4


def test_runs_are_identical():
    """Interleaving depends only on the guest: two runs leave the same RAM, clocks and RIPs."""
    assert _fingerprint(boot_smp()) == _fingerprint(boot_smp())


@pytest.mark.parametrize("quantum", [500, 100_000])
def test_other_quanta_interleave_differently_and_still_pass(quantum):
    b = boot_smp(quantum=quantum)
    assert_passed(b)


def test_quantum_decides_the_interleaving():
    """The same guest with another quantum ends with other virtual clocks (the turns fell
    elsewhere), which shows the quantum is what bounds a turn."""
    a, b = boot_smp(quantum=500), boot_smp(quantum=100_000)
    assert [c.tsc for c in a.machine.cpu_list] != [c.tsc for c in b.machine.cpu_list]


def test_aps_wait_for_sipi_until_started():
    """Before the boot CPU sends anything, the APs have not run: -smp 4 with a guest that
    never starts them behaves as one CPU."""
    b = harness.boot(str(GUESTS_DIR / "hello.S"), cpus=4, timeout=30)
    assert b.result.reason == "exit" and b.result.status == 1
    assert [c.started for c in b.machine.cpu_list] == [True, False, False, False]
    assert all(c.apic.wait_for_sipi for c in b.machine.cpu_list[1:])


def test_init_restarts_a_running_ap_from_wait_for_sipi():
    """INIT to a running AP: it starts over (a new CPU in its place, waiting for SIPI, same
    APIC ID, MTRRs kept); a SIPI then runs the start-up trampoline again."""
    m = Machine(cpus=2, extensions=[])
    m.load_multiboot(harness.image_of(SMP_GUEST), "smp")
    res = m.run(max_insns=400_000)
    old = m.cpu_list[1]
    assert res.reason == "max-insns" and old.started, res
    mtrr_default = old.msrs.rdmsr(0x2FF)
    m.apic.send_ipi((1 << 56) | (1 << 14) | (ICR_DELIVERY_INIT << 8))   # INIT to APIC 1
    m.run(max_insns=50_000)
    ap = m.cpu_list[1]
    assert ap is not old and not ap.started and ap.apic.wait_for_sipi
    assert ap.apic.apic_id == 1 and m.apic.bus.apics == [m.apic, ap.apic]
    assert ap.msrs.rdmsr(0x2FF) == mtrr_default
    m.apic.send_ipi((1 << 56) | (1 << 14) | (ICR_DELIVERY_STARTUP << 8) | 0x07)
    m.run(max_insns=400_000)
    assert ap.started and bytes(m.serial.output).decode().count("# AP 1 up") == 2


def test_wait_for_sipi_takes_only_start_up_and_holds_fixed_interrupts():
    bus = ApicBus()
    started = []
    ap = LocalApic(lambda: 0, lambda t: None, lambda: None, initial_id=1, bsp=False)
    bus.attach(ap)
    ap.on_startup = started.append
    assert not ap.base_msr & APIC_BASE_BSP and ap.apic_id == 1 and ap.wait_for_sipi
    ap.receive(ICR_DELIVERY_INIT, 0)
    ap.receive(ICR_DELIVERY_NMI, 0)
    ap.receive(ICR_DELIVERY_FIXED, 0x40)
    assert not ap.init_pending and not ap.nmi_pending and ap.irr == 1 << 0x40 and not started
    ap.receive(ICR_DELIVERY_STARTUP, 0x07)
    ap.receive(ICR_DELIVERY_STARTUP, 0x09)           # the second SIPI finds it running
    assert started == [0x07] and not ap.wait_for_sipi
    ap.reset()
    assert ap.apic_id == 1                            # the hardware-assigned ID survives


def test_trace_tags_each_line_with_its_cpu(tmp_path):
    trace = tmp_path / "t.txt"
    proc = subprocess.run([sys.executable, "-m", "emu.cli", "run", SMP_GUEST, "-smp", "4",
                           "--trace", "exc", "--trace-file", str(trace), "-q"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    text = trace.read_text()
    for i in range(4):
        assert f"[cpu{i} L1" in text
    nmis = [line for line in text.splitlines() if "delivered NMI" in line]
    assert len(nmis) == 1 and "[cpu2 " in nmis[0], nmis          # the NMI IPI, on CPU 2


@pytest.mark.parametrize("args,message", [
    (["-smp", "0"], "must be positive"),
    (["-smp", "300"], "-smp takes 1 to 255 CPUs"),
    (["-smp", "2,sockets=2"], "only N or cpus=N"),
    (["--quantum", "100"], "--quantum needs -smp"),
    (["-smp", "2", "--coverage", "drcov:x.cov"], "unsupported: --coverage with -smp 2"),
])
def test_bad_or_unsupported_smp_options_end_with_one_line(args, message, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "emu.cli", "run", SMP_GUEST, *args],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_cli_runs_the_smp_guest_with_cpus_spelled_as_qemu():
    proc = subprocess.run([sys.executable, "-m", "emu.cli", "run", SMP_GUEST, "-smp", "cpus=4",
                           "-q"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "# pass 16 fail 0" in proc.stdout


def test_machine_refuses_a_cpu_count_the_tables_cannot_describe():
    with pytest.raises(OptionError):
        Machine(cpus=256)
