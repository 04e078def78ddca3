# world_switch.S: benchmark workload 3, ITERS VMRUN/#VMEXIT round trips.  L2 counts in R12 and
# does VMMCALL; L1 checks each EXITCODE, steps the VMCB RIP over the 3-byte VMMCALL (onto the
# jmp back) and re-enters.  No nested paging.
.include "prelude.inc"
.include "svm.inc"

.equ ITERS, @ITERS@

main:
    call svm_enable
    lea rdi, [rip + l2_entry]
    call vmcb_init
    xor r12d, r12d
    mov r15, ITERS
    mov edi, VMCB
.Lround_trip:
    mov rax, rdi
    vmrun
    cmp qword ptr [rdi + V_EXITCODE], EXIT_VMMCALL
    jne .Ldone
    add qword ptr [rdi + V_RIP], 3
    dec r15
    jnz .Lround_trip
.Ldone:
    check_eq "qword ptr [rdi + V_EXITCODE]", EXIT_VMMCALL, "every #VMEXIT is VMMCALL"
    check_eq r12, ITERS, "L2 entered ITERS times"
    ret

l2_entry:
    inc r12
    vmmcall
    jmp l2_entry
