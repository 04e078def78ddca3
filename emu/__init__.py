"""svmemu's machine (L0): runs a guest kernel (multiboot, Linux) on Unicorn and owns CPU
identity, MSRs, devices and exception delivery. It knows nothing of the guest-visible SVM;
svm_ext plugs in through emu.core.extension.

The folders are layers, each importing only from the ones below it:
- ``emu.arch``: pure architecture (bit names, page walks, memory types, instruction decoding); no
  Unicorn, no machine.
- ``emu.engine``: everything pinned to unicorn 2.1.4's internals (the saved-context layout, the
  L0-private VMCB, the I/O trap, the interrupt window, the C replay engine), and svmemu's own
  build of that Unicorn (``emu.engine.unicorn_build``: patches, build, loader).
- ``emu.core``: the machine (run loop, exit table, memory, interrupts, MSRs, CPUID, devices,
  snapshots).
- ``emu.loader``: what turns a user's file into bytes in guest RAM (Linux bzImage, multiboot,
  ELF, assembly).
- ``emu.tools``: what a user attaches to a machine (gdb, traces of memory, memory-type queries,
  coverage, fuzzing).
- ``emu.cli``: the ``svmemu`` command, the one place that composes emu with svm_ext.
"""

# Before any module imports unicorn: point the binding at svmemu's engine when it is built
# (emu/engine/unicorn_build/loader.py; SVMEMU_ENGINE=stock keeps the wheel's library).
from .engine.unicorn_build import loader as _engine_loader

_engine_loader.select()
