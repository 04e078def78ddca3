"""Nested SVM: the guest-visible AMD SVM that lets an L1 hypervisor run L2 guests."""
