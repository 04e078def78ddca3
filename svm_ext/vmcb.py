"""The VMCB layout is architecture and lives in emu/arch/vmcb.py; this name is the same module,
kept so ``svm_ext.vmcb`` imports written before the move keep working."""
import sys

from emu.arch import vmcb

sys.modules[__name__] = vmcb
