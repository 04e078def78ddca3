# mem_loop.S: benchmark workload, a memory loop in L1: one load and two stores per iteration
# (plus the loop's ALU work), on a data page of its own. bench/run.py substitutes @ITERS@.
# It measures what a guest store costs: on stock Unicorn 2.1.4 every store to a page that may
# hold code takes the slow path (see emu/engine/unicorn_build/0001-code-page-tracking.patch).
.include "prelude.inc"

.equ ITERS, @ITERS@
.equ DATA, 0x600000

main:
    mov rsi, DATA
    mov qword ptr [rsi], 1
    xor edx, edx
    mov rcx, ITERS
.Lloop:
    mov rax, [rsi]
    add rdx, rax
    mov [rsi + 8], rcx
    mov [rsi + 16], rdx
    dec rcx
    jnz .Lloop
    check_eq rdx, ITERS, "loads summed"
    check_eq "qword ptr [rsi + 8]", 1, "last store of the counter"
    check_eq "qword ptr [rsi + 16]", ITERS, "last store of the sum"
    ret
