"""The ``svmemu`` command: the one place that composes the machine (emu) with nested SVM
(svm_ext). `emu.cli.main` holds it; this package imports nothing, so that the process's start
(emu/cli/command.py) acts before main's imports."""
