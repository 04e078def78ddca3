# .org in code and data sections: GNU as must give the same bytes (tests/test_gas_dialect.py).
.intel_syntax noprefix
start: jmp later
.org 0x10
.byte 1
.org 0x20
later: nop
.data
.byte 5
.org 8
.byte 6
