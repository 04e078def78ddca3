"""svmemu's machine (L0): runs a multiboot guest on Unicorn and owns CPU identity, MSRs, devices
and exception delivery. It knows nothing of the guest-visible SVM; svm_ext plugs in through
emu.extension."""

# Before any module imports unicorn: point the binding at svmemu's engine when it is built
# (emu/engine/unicorn_build/loader.py; SVMEMU_ENGINE=stock keeps the wheel's library).
from .engine.unicorn_build import loader as _engine_loader

_engine_loader.select()
