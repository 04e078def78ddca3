"""The ``svmemu`` command: the one place that composes the machine (emu) with nested SVM
(svm_ext)."""
from emu.cli.main import main

__all__ = ["main"]
