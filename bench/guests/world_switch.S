# world_switch.S: benchmark workload 3, ITERS VMRUN/#VMEXIT round trips.  L2 counts in R12 and
# does VMMCALL; L1 checks each EXITCODE, steps the VMCB RIP over the 3-byte VMMCALL (onto the
# jmp back) and re-enters.  No nested paging.
.include "prelude.inc"
.include "svm.inc"

.equ ITERS, @ITERS@

main:
    lea rsi, [rip + l2_entry]
    xor r8d, r8d
    call svm_init
    xor r12d, r12d
    mov r15, ITERS
    lea rdi, [rip + vmcb]
.Lround_trip:
    mov rax, rdi
    vmrun
    cmp qword ptr [rdi + V_EXITCODE], VMEXIT_VMMCALL
    jne .Ldone
    add qword ptr [rdi + V_RIP], 3
    dec r15
    jnz .Lround_trip
.Ldone:
    check_eq qword ptr [rdi + V_EXITCODE], VMEXIT_VMMCALL, "every #VMEXIT is VMMCALL"
    check_eq r12, ITERS, "L2 entered ITERS times"
    ret

l2_entry:
    inc r12
    vmmcall
    jmp l2_entry
