"""svmemu from Python: load a guest, run it to an event, look at and change its state.

    import svmemu
    vm = svmemu.load("guests/svm_world_switch.S")
    stop = vm.run(until="vmexit:1")          # the first #VMEXIT to L1
    print(stop, vm.world, vm.vmcb.exitcode)  # ... L1 129 (VMMCALL)
    vm.vmcb.rip += 3                         # vmcb12 fields by name, read and written
    snap = vm.snapshot()                     # in memory; vm.restore(snap) goes back

The machine is the one `svmemu run` builds (the PC platform, the CPU model, nested SVM), and
a `VM` never runs on its own: each `run` or `step` returns a `Stop` saying why it stopped. Hooks
(`on_code`, `on_world_switch`) call `vm.stop()` to end the current run cleanly, before the next
instruction (calling Unicorn's `emu_stop` yourself is not enough: the run loop would go on).
"""
from __future__ import annotations

from svmemu.vm import VM, Stop, load, resume

__all__ = ["VM", "Stop", "load", "resume"]
