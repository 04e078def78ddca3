# svm_world_switch.S: an L1 hypervisor that runs one 64-bit L2 guest and checks each #VMEXIT.
# Checks: VMRUN with EFER.SVME clear raises #UD; L2 sharing L1's page tables, GDT and IDT runs
# and exits on an intercepted VMMCALL, CPUID, #UD and HLT, each with the right EXITCODE and the
# right guest RIP in the VMCB; RBX written by L2 is still there in L1 (#VMEXIT restores only
# RAX/RSP/RIP and the control state); L1's RAX/RSP come back; an ASID of 0 fails VMRUN with
# VMEXIT_INVALID (-1) without running L2.
.include "prelude.inc"

.equ VMCB, 0x800000
.equ HSAVE, 0x801000
.equ L2_STACK, 0x820000
.equ MSR_EFER, 0xC0000080
.equ MSR_VM_HSAVE_PA, 0xC0010117

# VMCB offsets (AMD APM vol. 2, appendix B)
.equ V_INTERCEPT_EXC, 0x008
.equ V_INTERCEPT_MISC1, 0x00C
.equ V_INTERCEPT_MISC2, 0x010
.equ V_ASID, 0x058
.equ V_EXITCODE, 0x070
.equ V_ES, 0x400
.equ V_CS, 0x410
.equ V_SS, 0x420
.equ V_DS, 0x430
.equ V_GDTR, 0x460
.equ V_IDTR, 0x480
.equ V_EFER, 0x4D0
.equ V_CR4, 0x548
.equ V_CR3, 0x550
.equ V_CR0, 0x558
.equ V_DR7, 0x560
.equ V_DR6, 0x568
.equ V_RFLAGS, 0x570
.equ V_RIP, 0x578
.equ V_RSP, 0x5D8
.equ V_GPAT, 0x668

# set_seg OFFSET, SELECTOR|ATTRIB<<16: a flat 4 GiB segment in the VMCB at rdi.
.macro set_seg off, selattr
    mov dword ptr [rdi + \off], \selattr
    mov dword ptr [rdi + \off + 4], 0xFFFFFFFF
    mov qword ptr [rdi + \off + 8], 0
.endm

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

    mov ecx, MSR_EFER
    rdmsr
    or eax, 0x1000
    wrmsr
    mov ecx, MSR_VM_HSAVE_PA
    mov eax, HSAVE
    xor edx, edx
    wrmsr

    mov rdi, VMCB
    xor eax, eax
    mov ecx, 512
    rep stosq
    mov rdi, VMCB
    mov dword ptr [rdi + V_INTERCEPT_EXC], 0x40            # #UD
    mov dword ptr [rdi + V_INTERCEPT_MISC1], 0x01040000    # CPUID, HLT
    mov dword ptr [rdi + V_INTERCEPT_MISC2], 0x3           # VMRUN, VMMCALL
    mov dword ptr [rdi + V_ASID], 1
    set_seg V_CS, 0x0A9B0008
    set_seg V_DS, 0x0C930010
    set_seg V_ES, 0x0C930010
    set_seg V_SS, 0x0C930010
    sub rsp, 16
    sgdt [rsp]
    movzx eax, word ptr [rsp]
    mov [rdi + V_GDTR + 4], eax
    mov rax, [rsp + 2]
    mov [rdi + V_GDTR + 8], rax
    sidt [rsp]
    movzx eax, word ptr [rsp]
    mov [rdi + V_IDTR + 4], eax
    mov rax, [rsp + 2]
    mov [rdi + V_IDTR + 8], rax
    add rsp, 16
    mov ecx, MSR_EFER
    rdmsr
    mov [rdi + V_EFER], eax
    mov rax, cr0
    mov [rdi + V_CR0], rax
    mov rax, cr3
    mov [rdi + V_CR3], rax
    mov rax, cr4
    mov [rdi + V_CR4], rax
    mov qword ptr [rdi + V_RFLAGS], 2
    lea rax, [rip + l2_entry]
    mov [rdi + V_RIP], rax
    mov rax, L2_STACK
    mov [rdi + V_RSP], rax
    mov eax, 0xFFFF0FF0
    mov [rdi + V_DR6], rax
    mov qword ptr [rdi + V_DR7], 0x400
    mov rax, 0x0007040600070406
    mov [rdi + V_GPAT], rax

    xor ebx, ebx
    mov r12, rsp
    enter_l2
    check_eq qword ptr [rdi + V_EXITCODE], 0x81, "first #VMEXIT is VMMCALL"
    check_eq rbx, 0x4242, "RBX written by L2 is visible in L1"
    mov r13, rsp
    check_eq r13, r12, "L1's RSP is restored"
    lea rsi, [rip + l2_vmmcall]
    check_eq qword ptr [rdi + V_RIP], rsi, "VMCB RIP is the VMMCALL"
    add qword ptr [rdi + V_RIP], 3

    enter_l2
    check_eq qword ptr [rdi + V_EXITCODE], 0x72, "second #VMEXIT is CPUID"
    add qword ptr [rdi + V_RIP], 2

    enter_l2
    check_eq qword ptr [rdi + V_EXITCODE], 0x46, "third #VMEXIT is #UD"
    lea rsi, [rip + l2_ud2]
    check_eq qword ptr [rdi + V_RIP], rsi, "VMCB RIP is the ud2"
    add qword ptr [rdi + V_RIP], 2

    enter_l2
    check_eq qword ptr [rdi + V_EXITCODE], 0x78, "fourth #VMEXIT is HLT"

    mov dword ptr [rdi + V_ASID], 0
    mov rbx, 0x1111
    enter_l2
    check_eq qword ptr [rdi + V_EXITCODE], -1, "ASID 0 fails VMRUN with VMEXIT_INVALID"
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
