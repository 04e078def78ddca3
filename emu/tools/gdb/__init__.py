"""The gdb remote stub: packet framing, the register file gdb sees, `monitor` commands and reverse
execution."""
