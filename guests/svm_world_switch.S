# svm_world_switch.S: an L1 hypervisor that runs one 64-bit L2 guest and checks each #VMEXIT.
# Checks: VMRUN with EFER.SVME clear raises #UD; L2 sharing L1's page tables, GDT and IDT runs
# and exits on an intercepted VMMCALL, CPUID, #UD and HLT, each with the right EXITCODE and the
# right guest RIP in the VMCB; RBX written by L2 is still there in L1 (#VMEXIT restores only
# RAX/RSP/RIP and the control state); L1's RAX/RSP come back; an ASID of 0 fails VMRUN with
# VMEXIT_INVALID (-1) without running L2.
.include "prelude.inc"
.include "svm.inc"

# enter_l2: VMRUN the VMCB; afterwards rdi = VMCB again.
.macro enter_l2
    mov rax, VMCB
    vmrun
    mov rdi, VMCB
.endm

main:
    expect_fault .Lno_svme
    mov rax, VMCB
    vmrun
.Lno_svme:
    check_eq [fault_vector], 6, "VMRUN with EFER.SVME=0 raises #UD"

    call svm_enable
    lea rdi, [rip + l2_entry]
    call vmcb_init                                          # VMRUN and VMMCALL intercepted
    mov rdi, VMCB
    mov dword ptr [rdi + V_INTERCEPT_EXC], 0x40            # #UD
    mov dword ptr [rdi + V_INTERCEPT_MISC1], I1_CPUID | I1_HLT

    xor ebx, ebx
    mov r12, rsp
    enter_l2
    check_eq "qword ptr [rdi + V_EXITCODE]", 0x81, "first #VMEXIT is VMMCALL"
    check_eq rbx, 0x4242, "RBX written by L2 is visible in L1"
    mov r13, rsp
    check_eq r13, r12, "L1's RSP is restored"
    lea rsi, [rip + l2_vmmcall]
    check_eq "qword ptr [rdi + V_RIP]", rsi, "VMCB RIP is the VMMCALL"
    add qword ptr [rdi + V_RIP], 3

    enter_l2
    check_eq "qword ptr [rdi + V_EXITCODE]", 0x72, "second #VMEXIT is CPUID"
    add qword ptr [rdi + V_RIP], 2

    enter_l2
    check_eq "qword ptr [rdi + V_EXITCODE]", 0x46, "third #VMEXIT is #UD"
    lea rsi, [rip + l2_ud2]
    check_eq "qword ptr [rdi + V_RIP]", rsi, "VMCB RIP is the ud2"
    add qword ptr [rdi + V_RIP], 2

    enter_l2
    check_eq "qword ptr [rdi + V_EXITCODE]", 0x78, "fourth #VMEXIT is HLT"

    mov dword ptr [rdi + V_ASID], 0
    mov rbx, 0x1111
    enter_l2
    check_eq "qword ptr [rdi + V_EXITCODE]", -1, "ASID 0 fails VMRUN with VMEXIT_INVALID"
    check_eq rbx, 0x1111, "L2 did not run after VMEXIT_INVALID"
    ret

l2_entry:
    mov rbx, 0x4242
l2_vmmcall:
    vmmcall
    cpuid
l2_ud2:
    ud2
    hlt
