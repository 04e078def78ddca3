"""Every bundled guest on svmemu: all its checks pass, it exits through isa-debug-exit with the
pass status, and the machine's own state agrees with what the guest concluded."""
from __future__ import annotations

import struct

from tests import harness
import pytest

from emu.loader.asm import GUESTS_DIR
from emu.core.machine import STATUS_SHUTDOWN
from emu.arch.vmcb import VMEXIT_INVALID, Vmcb
from tests.conftest import parse_tap

TAP_GUESTS = sorted(p.stem for p in GUESTS_DIR.glob("*.S") if p.stem != "triplefault")
# Guests written for several CPUs (tests/test_guests_qemu.py gives QEMU the same -smp).
GUEST_CPUS = {"smp": 4}


def boot(name: str, pat_model: str = "architectural"):
    path = str(GUESTS_DIR / f"{name}.S")
    b = harness.boot(path, pat_model=pat_model, cmdline=f"{path} ", timeout=60,
                     cpus=GUEST_CPUS.get(name, 1))
    return b.machine, b.ext, b.result, b.serial


@pytest.mark.parametrize("guest", TAP_GUESTS)
def test_guest_passes_on_svmemu(guest):
    m, ext, res, out = boot(guest)
    assert "Bail out!" not in out, out
    checks = parse_tap(out)
    assert checks, out
    failed = {name: line.detail for name, line in checks.items() if not line.ok}
    assert not failed, out
    assert res.reason == "exit" and res.status == 1, (res, out)
    assert f"# pass {len(checks)} fail 0" in out


def test_triplefault_guest_shuts_down():
    m, ext, res, out = boot("triplefault")
    assert res.reason == "shutdown" and res.status == STATUS_SHUTDOWN
    assert "triple fault" in res.message
    assert out.startswith("triplefault:")


def test_world_switch_guest_leaves_the_vmcb_as_the_apm_says():
    m, ext, res, out = boot("svm_world_switch")
    vm = Vmcb(m.mem.view, 0x800000)
    assert vm.exitcode == VMEXIT_INVALID          # the last VMRUN (ASID 0) failed its checks
    assert vm.guest_asid == 0
    assert ext.state.stats == {"vmrun": 4, "vmexit": 5}
    assert not ext.state.in_l2 and not ext.state.gif
    assert "ASID" in ext.last_invalid_reason


def test_msr_guest_leaves_pat_at_reset_value():
    m, ext, res, out = boot("msr")
    assert m.msrs.rdmsr(0x277) == 0x0007040600070406


def test_mbinfo_guest_sees_our_information_block():
    m, ext, res, out = boot("mbinfo")
    flags, mem_lower, mem_upper = struct.unpack_from("<III", m.ram, 0x9500)
    assert f"# flags {flags:#018x}" in out
    assert mem_lower == 639 and (mem_upper + 1024) * 1024 == (128 << 20) - (128 << 10)


def test_trace_exits_names_worlds_and_the_broken_rule(tmp_path, capsys):
    from emu.cli.main import main
    trace = tmp_path / "exits.txt"
    status = main(["run", "-q", "--trace", "exits", "--trace-file", str(trace),
                   str(GUESTS_DIR / "svm_world_switch.S")])
    capsys.readouterr()
    assert status == 1
    lines = trace.read_text().splitlines()
    assert lines[0].startswith("exits [L1 64 cpl0]") and "vmrun vmcb12 0x800000" in lines[0]
    assert lines[1].startswith("exits [L2 64 cpl0]") and "#VMEXIT VMMCALL" in lines[1]
    assert "VMEXIT_INVALID" in lines[-1] and "ASID is zero" in lines[-1]
