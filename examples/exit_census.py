"""Count the #VMEXITs a hypervisor takes, by exit code, and stop at the first one of a kind.

    python examples/exit_census.py guests/svm_world_switch.S EXCP6

Shows: loading a guest, a world-switch hook, vmcb12 fields by name, stopping from a hook, and
continuing to the end.
"""
from __future__ import annotations

import sys
from collections import Counter

import svmemu
from emu.arch.vmcb import exit_name


def main(image: str, stop_at: str) -> int:
    vm = svmemu.load(image)
    census: Counter[str] = Counter()

    def on_switch(vm: svmemu.VM, old: str, new: str) -> None:
        if new == "L1":                                    # a #VMEXIT to L1
            name = exit_name(vm.vmcb.exitcode)
            census[name] += 1
            if name == stop_at:
                vm.stop()

    vm.on_world_switch(on_switch)
    stop = vm.run()
    if stop.reason == "stopped":
        print(f"first {stop_at}: L2 was at {vm.vmcb.rip:#x}, exitinfo1 {vm.vmcb.exitinfo1:#x}; "
              f"L1 resumes at {vm.regs.rip:#x}")
        stop = vm.run()
    print(f"guest ended: {stop.reason} (status {stop.status})")
    for name, n in census.most_common():
        print(f"{name:10} {n}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else ""))
