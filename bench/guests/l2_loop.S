# l2_loop.S: benchmark workload 2, the l1_loop.S loop run by L2 under nested paging.  L1 builds
# identity nested page tables, VMRUNs L2 once; L2 runs the loop and leaves with VMMCALL; L1
# checks the exit and L2's results (RBX/RDX are not touched by #VMEXIT).
.include "prelude.inc"
.include "svm.inc"

.equ ITERS, @ITERS@

main:
    call svm_enable
    lea rdi, [rip + l2_entry]
    call vmcb_init
    call npt_init
    xor edx, edx
    xor ebx, ebx
    mov rcx, ITERS
    mov eax, VMCB
    vmrun
    mov edi, VMCB
    check_eq "qword ptr [rdi + V_EXITCODE]", EXIT_VMMCALL, "L2 left with VMMCALL"
    check_eq "qword ptr [rdi + V_NESTED_CTL]", 1, "nested paging was on"
    check_eq rdx, @SUM@, "L2 loop sum"
    check_eq rbx, @X3@, "L2 loop count"
    ret

l2_entry:
.Ll2_loop:
    add rdx, rcx
    add rbx, 3
    dec rcx
    jnz .Ll2_loop
    vmmcall
    hlt
