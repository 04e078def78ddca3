"""Everything pinned to unicorn 2.1.4's internals: the layout of its saved CPU context, the
L0-private VMCB under which L1 runs, the I/O-breakpoint trick for precise port stops, the interrupt
window, and the C replay engine. A different Unicorn means revisiting this folder and nothing else."""
