# world_switch_msr.S: benchmark workload 4, ITERS round trips each caused by an L2 RDMSR(PAT)
# that L1 intercepts (MSR_PROT and the PAT read bit of its MSR permission map), with nested
# paging on so the PAT model's VMRUN/#VMEXIT work (gPAT) is part of every trip.  L1 checks
# EXITCODE and EXITINFO1 (0 = read) and steps the VMCB RIP over the 2-byte RDMSR.
.include "prelude.inc"
.include "svm.inc"

.equ ITERS, @ITERS@

main:
    call svm_enable
    lea rdi, [rip + l2_entry]
    call vmcb_init
    call npt_init
    mov edi, VMCB
    or dword ptr [rdi + V_INTERCEPT_MISC1], I1_MSR_PROT
    mov edi, MSRPM                          # zero in RAM; mark what L1 wants to see
    or byte ptr [rdi + 0x9D], 0x40          # MSR 0x277 read: bit 2 * 0x277 of the map
    xor r12d, r12d
    mov r15, ITERS
    mov edi, VMCB
.Lround_trip:
    mov rax, rdi
    vmrun
    cmp qword ptr [rdi + V_EXITCODE], EXIT_MSR
    jne .Ldone
    cmp qword ptr [rdi + V_EXITINFO1], 0
    jne .Ldone
    add qword ptr [rdi + V_RIP], 2
    dec r15
    jnz .Lround_trip
.Ldone:
    check_eq "qword ptr [rdi + V_EXITCODE]", EXIT_MSR, "every #VMEXIT is an MSR intercept"
    check_eq "qword ptr [rdi + V_EXITINFO1]", 0, "every intercepted MSR access is a read"
    check_eq r12, ITERS, "L2 entered ITERS times"
    ret

l2_entry:
    inc r12
    mov ecx, 0x277                          # RDMSR(PAT)
    rdmsr
    jmp l2_entry
