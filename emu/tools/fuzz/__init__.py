"""Fuzzing guest code: a harness that runs one input from an in-memory reset point (harness.py),
and the AFL++ driver around it through unicornafl (afl.py). The nested-SVM input placements and
crash rules live in svm_ext/fuzz.py and plug in through the same small interfaces."""
