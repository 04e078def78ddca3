"""Nested SVM: the guest-visible AMD SVM that lets an L1 hypervisor run L2 guests."""

import emu as _emu  # noqa: F401  (chooses the Unicorn engine before anything here imports unicorn)
