"""Conformance runner: kvm-unit-tests (the public suite KVM and QEMU developers run) on svmemu and
on QEMU TCG, compared test by test.  `python -m tests.conformance.runner --help`."""
