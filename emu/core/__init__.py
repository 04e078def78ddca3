"""The machine: the run loop and its exit table, guest memory, exception and interrupt delivery,
the MSR file, CPUID, devices and snapshots. It drives the engine below and knows nothing of the
guest-visible SVM, which plugs in through ``extension.Extension``."""
