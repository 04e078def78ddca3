# svm_vmload_vmsave.S: the state VMLOAD and VMSAVE move (AMD APM vol. 2, 15.5.2): FS, GS, TR
# and LDTR with their hidden parts, KernelGsBase, STAR, LSTAR, CSTAR, SFMASK and SYSENTER_CS/
# ESP/EIP.  Checks: VMLOAD puts each value where the CPU uses it (RDMSR, the selectors); VMSAVE
# of that state writes back exactly what VMLOAD read (selector, attributes, limit, base); VMRUN
# does not load any of it from the VMCB and #VMEXIT neither restores nor saves it (L2 sees L1's
# values, L1 afterwards sees L2's, the VMCB keeps what L1 put there); a VMSAVE that L1 does not
# intercept runs inside L2 and saves L2's values.
.include "prelude.inc"
.include "svm.inc"

.equ VMCB_C, 0x809000                       # VMSAVE target
.equ VMCB_ORIG, 0x80A000                    # L1's own values, put back at the end
.equ MSR_FS_BASE, 0xC0000100
.equ MSR_GS_BASE, 0xC0000101
.equ MSR_KERNEL_GS_BASE, 0xC0000102
.equ MSR_STAR, 0xC0000081
.equ MSR_LSTAR, 0xC0000082
.equ MSR_CSTAR, 0xC0000083
.equ MSR_SFMASK, 0xC0000084
.equ MSR_SYSENTER_CS, 0x174
.equ MSR_SYSENTER_ESP, 0x175
.equ MSR_SYSENTER_EIP, 0x176

.equ T_FS_BASE, 0x0000123456789000
.equ T_GS_BASE, 0x00007F0000001000
.equ T_LDTR_BASE, 0x0000000000003000
.equ T_KGS, 0xFFFF800000002000
.equ T_STAR, 0x0023001000000000
.equ T_LSTAR, 0xFFFFFFFF81000000
.equ T_CSTAR, 0xFFFFFFFF81000100
.equ T_SFMASK, 0x47700
.equ T_SYSENTER_CS, 0x10
.equ T_SYSENTER_ESP, 0x201000
.equ T_SYSENTER_EIP, 0x301000

# same OFF, "name": the qword at OFF is equal in VMCB_B (loaded) and VMCB_C (saved)
.macro same off, name
    mov rsi, VMCB_B
    mov rdi, VMCB_C
    check_eq "qword ptr [rdi + \off]", "qword ptr [rsi + \off]", "\name"
.endm

main:
    call svm_enable
    # L1's own state, to put back at the end.
    mov rax, VMCB_ORIG
    vmsave

    # ---- a VMCB full of test values
    mov rdi, VMCB_B
    xor eax, eax
    mov ecx, 512
    rep stosq
    mov rdi, VMCB_C
    mov ecx, 512
    rep stosq
    lea rsi, [rip + tss]                    # TR: a copy of the prelude's TSS, so exceptions work
    lea rdi, [rip + tss2]
    mov ecx, 13
    rep movsq
    mov rdi, VMCB_B
    mov dword ptr [rdi + V_FS], 0x0C930010
    mov dword ptr [rdi + V_FS + 4], 0xFFFFF
    mov rax, T_FS_BASE
    mov [rdi + V_FS + 8], rax
    mov dword ptr [rdi + V_GS], 0x0C930010
    mov dword ptr [rdi + V_GS + 4], 0xFFFFFFFF
    mov rax, T_GS_BASE
    mov [rdi + V_GS + 8], rax
    mov dword ptr [rdi + V_TR], 0x008B0020
    mov dword ptr [rdi + V_TR + 4], 0x80
    lea rax, [rip + tss2]
    mov [rdi + V_TR + 8], rax
    mov dword ptr [rdi + V_LDTR], 0x00820028
    mov dword ptr [rdi + V_LDTR + 4], 0x1F
    mov rax, T_LDTR_BASE
    mov [rdi + V_LDTR + 8], rax
    mov rax, T_KGS
    mov [rdi + V_KERNEL_GS_BASE], rax
    mov rax, T_STAR
    mov [rdi + V_STAR], rax
    mov rax, T_LSTAR
    mov [rdi + V_LSTAR], rax
    mov rax, T_CSTAR
    mov [rdi + V_CSTAR], rax
    mov qword ptr [rdi + V_SFMASK], T_SFMASK
    mov qword ptr [rdi + V_SYSENTER_CS], T_SYSENTER_CS
    mov qword ptr [rdi + V_SYSENTER_ESP], T_SYSENTER_ESP
    mov qword ptr [rdi + V_SYSENTER_EIP], T_SYSENTER_EIP

    # ---- VMLOAD: every value reaches the CPU
    mov rax, VMCB_B
    vmload
    rdmsr64 MSR_FS_BASE
    mov rbx, T_FS_BASE
    check_eq rax, rbx, "VMLOAD: FS.base"
    mov ax, fs
    movzx eax, ax
    check_eq rax, 0x10, "VMLOAD: FS selector"
    rdmsr64 MSR_GS_BASE
    mov rbx, T_GS_BASE
    check_eq rax, rbx, "VMLOAD: GS.base"
    rdmsr64 MSR_KERNEL_GS_BASE
    mov rbx, T_KGS
    check_eq rax, rbx, "VMLOAD: KernelGsBase"
    rdmsr64 MSR_STAR
    mov rbx, T_STAR
    check_eq rax, rbx, "VMLOAD: STAR"
    rdmsr64 MSR_LSTAR
    mov rbx, T_LSTAR
    check_eq rax, rbx, "VMLOAD: LSTAR"
    rdmsr64 MSR_CSTAR
    mov rbx, T_CSTAR
    check_eq rax, rbx, "VMLOAD: CSTAR"
    rdmsr64 MSR_SFMASK
    check_eq rax, T_SFMASK, "VMLOAD: SFMASK"
    rdmsr64 MSR_SYSENTER_CS
    check_eq rax, T_SYSENTER_CS, "VMLOAD: SYSENTER_CS"
    rdmsr64 MSR_SYSENTER_ESP
    check_eq rax, T_SYSENTER_ESP, "VMLOAD: SYSENTER_ESP"
    rdmsr64 MSR_SYSENTER_EIP
    check_eq rax, T_SYSENTER_EIP, "VMLOAD: SYSENTER_EIP"
    xor eax, eax
    str ax
    check_eq rax, 0x20, "VMLOAD: TR selector"
    xor eax, eax
    sldt ax
    check_eq rax, 0x28, "VMLOAD: LDTR selector"

    # ---- VMSAVE writes back exactly what VMLOAD read
    mov rax, VMCB_C
    vmsave
    same V_FS, "round trip: FS selector, attributes, limit"
    same V_FS + 8, "round trip: FS base"
    same V_GS, "round trip: GS selector, attributes, limit"
    same V_GS + 8, "round trip: GS base"
    same V_TR, "round trip: TR selector, attributes, limit"
    same V_TR + 8, "round trip: TR base"
    same V_LDTR, "round trip: LDTR selector, attributes, limit"
    same V_LDTR + 8, "round trip: LDTR base"
    same V_KERNEL_GS_BASE, "round trip: KernelGsBase"
    same V_STAR, "round trip: STAR"
    same V_LSTAR, "round trip: LSTAR"
    same V_CSTAR, "round trip: CSTAR"
    same V_SFMASK, "round trip: SFMASK"
    same V_SYSENTER_CS, "round trip: SYSENTER_CS"
    same V_SYSENTER_ESP, "round trip: SYSENTER_ESP"
    same V_SYSENTER_EIP, "round trip: SYSENTER_EIP"
    mov rdi, VMCB_C
    check_eq "qword ptr [rdi + V_CS]", 0, "VMSAVE leaves CS in the save area alone"
    check_eq "qword ptr [rdi + V_RIP]", 0, "VMSAVE leaves RIP in the save area alone"

    # ---- VMRUN and #VMEXIT do not switch this state
    wrmsr64 MSR_FS_BASE, 0x5000
    wrmsr64 MSR_KERNEL_GS_BASE, 0x6000
    wrmsr64 MSR_LSTAR, 0x7000
    lea rdi, [rip + l2_switch]
    call vmcb_init
    mov rdi, VMCB
    mov dword ptr [rdi + V_FS], 0x0C930010
    mov qword ptr [rdi + V_FS + 8], 0x9000  # VMRUN must not load this
    mov qword ptr [rdi + V_KERNEL_GS_BASE], 0x9100
    mov qword ptr [rdi + V_LSTAR], 0x9200
    run_l2 1
    check_exit EXIT_VMMCALL, "L2 ran to its VMMCALL"
    check_eq [l2_fs], 0x5000, "L2 sees L1's FS.base (VMRUN does not load FS)"
    check_eq [l2_kgs], 0x6000, "L2 sees L1's KernelGsBase"
    check_eq [l2_lstar], 0x7000, "L2 sees L1's LSTAR"
    rdmsr64 MSR_FS_BASE
    check_eq rax, 0xA000, "L1 sees L2's FS.base after #VMEXIT"
    rdmsr64 MSR_KERNEL_GS_BASE
    check_eq rax, 0xA100, "L1 sees L2's KernelGsBase after #VMEXIT"
    rdmsr64 MSR_LSTAR
    check_eq rax, 0xA200, "L1 sees L2's LSTAR after #VMEXIT"
    mov rdi, VMCB
    check_eq "qword ptr [rdi + V_FS + 8]", 0x9000, "#VMEXIT does not save FS.base"
    check_eq "qword ptr [rdi + V_KERNEL_GS_BASE]", 0x9100, "#VMEXIT does not save KernelGsBase"
    check_eq "qword ptr [rdi + V_LSTAR]", 0x9200, "#VMEXIT does not save LSTAR"

    # ---- VMSAVE inside L2, not intercepted: L2's values
    mov rdi, VMCB_C
    xor eax, eax
    mov ecx, 512
    rep stosq
    lea rdi, [rip + l2_vmsave]
    call vmcb_init
    mov rdi, VMCB
    mov qword ptr [rdi + V_RAX], VMCB_C
    run_l2 2
    check_exit EXIT_VMMCALL, "VMSAVE in L2 without the intercept runs in L2"
    mov rdi, VMCB_C
    check_eq "qword ptr [rdi + V_FS + 8]", 0xB000, "L2's VMSAVE stored L2's FS.base"
    check_eq "qword ptr [rdi + V_LSTAR]", 0xA200, "L2's VMSAVE stored the LSTAR L2 left"

    # ---- put L1's own state back
    mov rax, VMCB_ORIG
    vmload
    ret

# L2 (shares L1's memory): record what it sees, then change FS.base, KernelGsBase and LSTAR.
l2_switch:
    rdmsr64 MSR_FS_BASE
    mov [rip + l2_fs], rax
    rdmsr64 MSR_KERNEL_GS_BASE
    mov [rip + l2_kgs], rax
    rdmsr64 MSR_LSTAR
    mov [rip + l2_lstar], rax
    wrmsr64 MSR_FS_BASE, 0xA000
    wrmsr64 MSR_KERNEL_GS_BASE, 0xA100
    wrmsr64 MSR_LSTAR, 0xA200
    vmmcall
    hlt

l2_vmsave:
    wrmsr64 MSR_FS_BASE, 0xB000
    mov rax, VMCB_C
    vmsave
    vmmcall
    hlt

.bss
.align 16
tss2:           .space 104
l2_fs:          .space 8
l2_kgs:         .space 8
l2_lstar:       .space 8
.text
