"""Snapshots of several CPUs: a snapshot taken in the middle of guests/smp.S -- with two CPUs
each in its own L2, two in L1, the scheduler in the middle of a turn -- continues to exactly the
end an uninterrupted run reaches (same output, same instruction and world-switch counts, same RAM
and clocks), from the command line and from Python; a snapshot that does not fit the machine is
refused with one clear error."""
from __future__ import annotations

import hashlib
import re
import subprocess
import sys
from pathlib import Path

import pytest
from unicorn.x86_const import UC_X86_REG_RIP

import svmemu
from emu.core import snapshot
from emu.core.machine import Machine
from emu.errors import SnapshotError
from emu.loader.asm import GUESTS_DIR
from svm_ext.extension import SvmExtension
from tests import harness

SMP_GUEST = str(GUESTS_DIR / "smp.S")
QUANTUM = 300            # small: the two L1s' world switches interleave
L2_EVENT = "l2_entry:3"   # CPU 0's third arrival in its L2 code, in the middle of a turn


def _insns_to_l2() -> int:
    """The instruction count at L2_EVENT. How many instructions run before a CPU is in L2
    depends on the time model (how far timers and exits move the clock), so it is measured
    here rather than written down."""
    vm = svmemu.load(SMP_GUEST, cpus=4, quantum=QUANTUM, memory=harness.RAM)
    vm.machine.count_insns = True
    vm.run(L2_EVENT)
    assert vm.machine.cpu_list[0].level() == "L2"
    return vm.machine.insns


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "emu.cli", *args], capture_output=True,
                          text=True, timeout=300, cwd=cwd)


def _counts(stderr: str) -> tuple[int, int]:
    """Instructions and world switches from a summary line."""
    m = re.search(r"; (\d+) instructions; (\d+) world switches", stderr)
    assert m, stderr
    return int(m.group(1)), int(m.group(2))


@pytest.mark.parametrize("at", ["insns", L2_EVENT])
def test_cli_snapshot_with_cpus_in_l2_resumes_to_the_same_end(tmp_path, at):
    """At an instruction count, and at an event (CPU 0's third arrival in its L2 code, in the
    middle of a turn: the CLI counts instructions so that the turn can be finished)."""
    in_l2 = _insns_to_l2()
    if at == "insns":
        at = str(in_l2)
    straight = _cli("run", SMP_GUEST, "-smp", "4", "--quantum", str(QUANTUM), "--count-insns",
                    cwd=tmp_path)
    assert straight.returncode == 1 and "# pass 16 fail 0" in straight.stdout, straight.stderr
    snap = str(tmp_path / "smp.snap")
    first = _cli("run", SMP_GUEST, "-smp", "4", "--quantum", str(QUANTUM),
                 "--snapshot-at", at, "--snapshot", snap, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert re.search(r"snapshot .* written to .* L2\)", first.stderr), first.stderr
    # No -smp: the snapshot's four CPUs and quantum.
    rest = _cli("resume", snap, "--count-insns", cwd=tmp_path)
    assert rest.returncode == 1, rest.stderr
    assert first.stdout + rest.stdout == straight.stdout
    (n1, w1), (n2, w2), (n, w) = _counts(first.stderr), _counts(rest.stderr), _counts(straight.stderr)
    assert (n1 + n2, w1 + w2) == (n, w)
    if at.isdigit():
        assert n1 == in_l2
    # The CPU count must be the snapshot's.
    wrong = _cli("resume", snap, "-smp", "2", cwd=tmp_path)
    assert wrong.returncode == 2
    assert wrong.stderr.strip().splitlines() == [
        "svmemu: error: the snapshot holds 4 CPUs but this machine has 2 (-smp 2); "
        "restore it with -smp 4"]


def _fingerprint(vm: svmemu.VM) -> tuple:
    m = vm.machine
    return (vm.serial, hashlib.sha256(bytes(m.ram[:16 << 20])).hexdigest(),
            tuple((c.tsc, c.uc.reg_read(UC_X86_REG_RIP), c.level(), c.irq.halted)
                  for c in m.cpu_list))


def test_python_snapshot_restores_each_cpus_nested_state_and_the_scheduler(tmp_path):
    vm = svmemu.load(SMP_GUEST, cpus=4, quantum=QUANTUM, memory=harness.RAM)
    vm.machine.count_insns = True
    stop = vm.run(max_insns=_insns_to_l2())
    assert stop.reason == "max-insns"
    m = vm.machine
    levels = [c.level() for c in m.cpu_list]
    assert levels[0] == "L2"
    assert m.smp_position.left is not None       # cut in the middle of a turn
    snap = vm.snapshot()
    path = str(tmp_path / "l2.snap")
    vm.save(path)
    assert snap.cpus == 4 and snap.format_version == snapshot.SMP_FORMAT_VERSION
    # Each CPU's section is its own: GIF, the world, its APIC ID.
    assert [s.extensions["svm"]["nested"] == c.extensions[0].state.to_dict()
            for s, c in zip(snap.aps, m.cpu_list[1:])] == [True] * 3
    assert [s.apic["apic_id"] for s in snap.aps] == [1, 2, 3]
    m.insns = 0
    end = vm.run(timeout=120)
    assert end.reason == "exit"
    want, insns = _fingerprint(vm), m.insns

    vm.restore(snap)                 # back in the same VM
    m.insns = 0
    assert vm.run(timeout=120).reason == "exit"
    assert (_fingerprint(vm), m.insns) == (want, insns)

    other = svmemu.resume(path)      # and in a new one, from the file
    other.machine.count_insns = True
    assert [c.level() for c in other.machine.cpu_list] == levels
    assert other.run(timeout=120).reason == "exit"
    assert _fingerprint(other) == want      # the serial output so far is in the snapshot
    assert other.machine.insns == insns
    assert b"# pass 16 fail 0" in other.serial


def test_snapshot_of_aps_waiting_for_sipi_starts_them_after_restore(tmp_path):
    """Taken before the boot CPU's INIT/SIPI: the APs wait for SIPI in the snapshot, and the
    restored machine starts them and passes as a straight run does."""
    vm = svmemu.load(SMP_GUEST, cpus=4, memory=harness.RAM)
    vm.run(max_insns=50)
    assert [c.started for c in vm.machine.cpu_list] == [True, False, False, False]
    path = str(tmp_path / "early.snap")
    vm.save(path)
    other = svmemu.resume(path)
    assert [c.started for c in other.machine.cpu_list] == [True, False, False, False]
    assert other.machine.cpu_list[1].apic.wait_for_sipi
    assert other.run(timeout=120).reason == "exit"
    straight = svmemu.load(SMP_GUEST, cpus=4, memory=harness.RAM)
    straight.run(timeout=120)
    assert other.serial == straight.serial
    assert b"# AP 1 up" in other.serial


def _booted(cpus: int) -> Machine:
    m = Machine(harness.RAM, stdout=None, extensions=[SvmExtension()], cpus=cpus)
    m.load_multiboot(harness.image_of(SMP_GUEST), "smp")
    return m


def test_snapshots_that_do_not_fit_the_machine_are_refused():
    four = snapshot.take(_booted(4))
    with pytest.raises(SnapshotError, match=r"^the snapshot holds 4 CPUs but this machine has 2 "):
        snapshot.restore(_booted(2), four)
    one = snapshot.take(_booted(1))
    assert one.format_version == snapshot.FORMAT_VERSION and not one.aps
    with pytest.raises(SnapshotError, match=r"^the snapshot holds 1 CPU but this machine has 4 "):
        snapshot.restore(_booted(4), one)


def _damaged(snap: snapshot.Snapshot, change) -> bytes:
    change(snap)
    return snapshot.encode(snap)


@pytest.mark.parametrize("change, message", [
    (lambda s: s.aps.pop(), "SMP state|do not hold|holds 3 CPUs"),
    (lambda s: setattr(s.aps[0], "cpu", s.aps[0].cpu[:-8]), "do not hold 3 CPUs"),
    (lambda s: s.aps[1].smp.update(started="yes"), "SMP state of CPU 2 section is malformed"),
    (lambda s: s.smp["position"].update(index=9), "scheduler section is malformed"),
    (lambda s: s.aps[2].apic.pop("lvt"), "local APIC of CPU 3 section is malformed"),
])
def test_damaged_smp_sections_give_one_snapshot_error(change, message):
    data = _damaged(snapshot.take(_booted(4)), change)
    with pytest.raises(SnapshotError, match=message):
        snapshot.restore(_booted(4), snapshot.decode(data, "bad.snap"))


def test_a_one_cpu_format_carrying_several_cpus_is_refused():
    snap = snapshot.take(_booted(2))
    data = snapshot.encode(snap, format_version=2)
    with pytest.raises(SnapshotError, match="bad.snap"):
        snapshot.decode(data, "bad.snap")
