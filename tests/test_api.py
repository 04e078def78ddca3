"""The Python API (`import svmemu`) and the examples that use it, run as a user would run them.

Expected values come from the guest's source (svm_world_switch.S: its labels, the exits its L1
checks, RBX = 0x4242 written by L2) and from its own TAP output."""
from __future__ import annotations

import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

import svmemu
from emu.arch.vmcb import VMEXIT_VMMCALL
from emu.errors import SvmemuError
from emu.loader.asm import assemble

ROOT = Path(__file__).resolve().parent.parent
GUEST = str(ROOT / "guests" / "svm_world_switch.S")
SYM = assemble(GUEST).symbols
VMMCALL_LEN = 3


def quiet_vm() -> svmemu.VM:
    return svmemu.load(GUEST, explain=False)


def test_run_to_events_and_read_the_vmcb_by_name():
    vm = quiet_vm()
    stop = vm.run(until="vmrun")
    assert (stop.reason, stop.world, stop.rip) == ("event", "L2", SYM["l2_entry"])
    stop = vm.run(until="vmexit")
    assert stop.world == "L1" and vm.vmcb.exitcode == VMEXIT_VMMCALL
    assert vm.vmcb["rip"] == SYM["l2_vmmcall"] and vm.regs.rbx == 0x4242
    assert vm.read(vm.vmcb.rip, VMMCALL_LEN) == bytes.fromhex("0f01d9")     # VMMCALL
    stop = vm.run(until="l2_ud2")
    assert (stop.reason, stop.world, vm.regs.rip) == ("event", "L2", SYM["l2_ud2"])
    stop = vm.run()
    assert stop.ended and stop.reason == "exit" and stop.status == 1
    assert b"# pass 11 fail 0" in vm.serial


def test_step_and_a_code_hook_that_stops_the_run():
    vm = quiet_vm()
    vm.run(until="vmrun")
    stop = vm.step()
    assert stop.reason == "step" and vm.regs.rip == SYM["l2_vmmcall"]
    stop = vm.step()                      # the VMMCALL exits: the step ends in L1
    assert stop.world == "L1"
    seen = []

    def at_ud2(vm: svmemu.VM, address: int) -> None:
        seen.append((address, vm.world))
        vm.stop()
    vm.on_code(at_ud2, "l2_ud2")
    stop = vm.run()
    assert stop.reason == "stopped" and seen == [(SYM["l2_ud2"], "L2")]
    assert vm.regs.rip == SYM["l2_ud2"]


def test_snapshot_restore_and_writes_change_what_l1_sees():
    vm = quiet_vm()
    vm.run(until="vmexit:1")
    here = vm.snapshot()
    vm.regs.rbx = 0x777
    assert vm.run().status == 3                           # a check failed
    assert re.search(rb"not ok 3 - RBX written by L2 is visible in L1", vm.serial)
    vm.restore(here)
    assert vm.regs.rbx == 0x4242 and vm.world == "L1"
    assert vm.run().status == 1


def test_memory_by_va_gpa_and_spa_agree_without_nested_paging(tmp_path):
    vm = quiet_vm()
    vm.run(until="vmrun")
    va = SYM["l2_entry"]
    assert vm.read(va, 4) == vm.read(va, 4, world="L1") == vm.read_gpa(va, 4) == \
        vm.read_phys(va, 4)
    vm.write_phys(0x900100, b"\x11\x22")
    assert vm.read(0x900100, 2) == b"\x11\x22"
    path = tmp_path / "at_l2.snap"
    vm.save(str(path))
    again = svmemu.resume(str(path))
    assert again.world == "L2" and again.regs.rip == SYM["l2_entry"]
    assert again.run().status == 1


def test_mistakes_are_clear_errors():
    vm = quiet_vm()
    with pytest.raises(SvmemuError, match="no VMRUN yet"):
        vm.vmcb
    with pytest.raises(SvmemuError, match="not N"):
        vm.run(until="nonsense")
    with pytest.raises(AttributeError, match="no register"):
        vm.regs.xyz
    vm.run(until="vmrun")
    with pytest.raises(AttributeError, match="no VMCB field"):
        vm.vmcb.not_a_field = 1


def test_every_public_name_is_documented():
    import svmemu.vm as mod
    missing = []
    for name, obj in vars(mod).items():
        if name.startswith("_") or getattr(obj, "__module__", None) != mod.__name__:
            continue
        if not inspect.getdoc(obj):
            missing.append(name)
        if inspect.isclass(obj):
            for attr, member in vars(obj).items():
                if not attr.startswith("_") and callable(getattr(member, "fget", member)) \
                        and not inspect.getdoc(member):
                    missing.append(f"{name}.{attr}")
    assert missing == []


def _example(*argv: str) -> str:
    p = subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr
    return p.stdout


def test_example_exit_census():
    out = _example("examples/exit_census.py", GUEST, "EXCP6")
    # svm_world_switch.S's L2 exits once each on VMMCALL, CPUID, #UD (exception 6) and HLT.
    assert re.search(rf"first EXCP6: L2 was at {SYM['l2_ud2']:#x}", out), out
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", out, re.M))
    assert counts == {"VMMCALL": "1", "CPUID": "1", "EXCP6": "1", "HLT": "1"}
    assert "guest ended: exit (status 1)" in out


def test_example_what_if():
    out = _example("examples/what_if.py", GUEST)
    assert f"at L2 rip {SYM['l2_vmmcall']:#x} (0f01d9), RBX 0x4242" in out
    assert "with RBX = 0x4242: ok 3 - RBX written by L2 is visible in L1 (exit, status 1)" in out
    assert "with RBX = 0x777: not ok 3" in out and "(exit, status 3)" in out
