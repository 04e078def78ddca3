"""Ask "what if" at a #VMEXIT: snapshot there, change L2's register, and see what L1 makes of it.

    python examples/what_if.py guests/svm_world_switch.S

Shows: running to an event, reading registers and guest memory, writing a register, snapshot
and restore, reading the guest's serial output.
"""
from __future__ import annotations

import sys

import svmemu


def main(image: str) -> int:
    vm = svmemu.load(image)
    vm.run(until="vmexit:1")                 # L2's VMMCALL has just exited to L1
    code = vm.read(vm.vmcb.rip, 3, world="L2")
    print(f"#VMEXIT {vm.vmcb.exitcode:#x} at L2 rip {vm.vmcb.rip:#x} ({code.hex()}), "
          f"RBX {vm.regs.rbx:#x}")
    here = vm.snapshot()
    for rbx in (vm.regs.rbx, 0x777):
        vm.restore(here)
        vm.regs.rbx = rbx
        before = len(vm.serial)
        stop = vm.run()
        verdicts = [line for line in vm.serial[before:].decode().splitlines()
                    if line.startswith(("ok", "not ok")) and "RBX" in line]
        print(f"with RBX = {rbx:#x}: {verdicts[0]} ({stop.reason}, status {stop.status})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
