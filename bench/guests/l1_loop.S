# l1_loop.S: benchmark workload 1, an ALU loop in L1 (4 instructions per iteration).
# bench/run.py substitutes @ITERS@, @SUM@ (1 + 2 + ... + ITERS, mod 2^64) and @X3@ (3 * ITERS).
.include "prelude.inc"

.equ ITERS, @ITERS@

main:
    xor edx, edx
    xor ebx, ebx
    mov rcx, ITERS
.Lloop:
    add rdx, rcx
    add rbx, 3
    dec rcx
    jnz .Lloop
    check_eq rdx, @SUM@, "loop sum"
    check_eq rbx, @X3@, "loop count"
    ret
