"""Everything pinned to unicorn 2.1.4's internals: the layout of its saved CPU context, the
L0-private VMCB under which L1 runs, the I/O-breakpoint trick for precise port stops, the interrupt
window, and the C replay engine. A different Unicorn means revisiting this folder and nothing else.
unicorn_build/ builds svmemu's own Unicorn (2.1.4 + patches) and chooses it at start-up.

Must not import unicorn at package level: emu/__init__.py imports unicorn_build.loader through
here before anything loads the binding."""
