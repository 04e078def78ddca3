"""svmemu's machine (L0): runs a multiboot guest on Unicorn and owns CPU identity, MSRs, devices
and exception delivery. It knows nothing of the guest-visible SVM; svm_ext plugs in through
emu.extension."""
