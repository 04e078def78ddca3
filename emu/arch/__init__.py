"""Pure x86-64 architecture as the AMD APM defines it: named bits, the page walker, memory types,
instruction prefixes. Nothing here knows Unicorn or the machine, so every rule can be tested on
plain bytes."""
