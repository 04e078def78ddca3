# svm_intercepts.S: an L1 hypervisor that intercepts one thing at a time (AMD APM vol. 2, 15.8-
# 15.11, 15.13) and checks each #VMEXIT: EXITCODE, the guest RIP (the intercepted instruction),
# NRIP (the next one, when CPUID 8000_000A EDX reports NRIP save), EXITINFO1/2.
# Covered: CR0/CR3/CR4 reads and writes (EXITINFO1 = bit 63 | GPR number when decode assists are
# reported, else 0), the selective CR0 write, DR reads and writes, the exception intercepts #DE,
# #BP, #UD, #PF (error code in EXITINFO1, the address in EXITINFO2), CPUID, HLT, INVLPG, RDTSC,
# RDTSCP, PAUSE, WBINVD, INVD, IRET, PUSHF, POPF, INTn, VMMCALL, and VMRUN/VMLOAD/VMSAVE/STGI/
# CLGI executed by L2, and MSR accesses through the MSRPM in each of its three ranges (read and
# write bits apart; EXITINFO1 0 = RDMSR, 1 = WRMSR) and outside them.
# Every step runs L2 at one labelled instruction followed by VMMCALL: an intercept that does not
# fire shows up as a VMMCALL exit.  A safety net (expect_fault) sends an exception L2's IDT
# would otherwise report as fatal to the VMMCALL too, so a wrong CPU still finishes.
.include "prelude.inc"
.include "svm.inc"

# prep: a fresh VMCB (intercepting VMRUN and VMMCALL only) and the safety net armed.
.macro prep
    push rdi
    lea rdi, [rip + l2_escape]
    call vmcb_init
    pop rdi
    mov rdi, VMCB
    expect_fault l2_escape
.endm

# step TAG, ENTRY, AFTER, CODE, NAME: run L2 at ENTRY; the exit must be CODE with the guest RIP
# at ENTRY and NRIP at AFTER.
.macro step tag, entry, after, code, name
    lea rax, [rip + \entry]
    mov [rdi + V_RIP], rax
    run_l2 "\tag"
    mov qword ptr [rip + fault_resume], 0
    check_exit "\code", "\name: EXITCODE"
    lea rax, [rip + \entry]
    check_eq "qword ptr [rdi + V_RIP]", rax, "\name: guest RIP is the instruction"
    check_nrip "\after", "\name: NRIP is the next instruction"
.endm

# step_exc: as step, for an exception intercept (no NRIP).
.macro step_exc tag, entry, code, name
    lea rax, [rip + \entry]
    mov [rdi + V_RIP], rax
    run_l2 "\tag"
    mov qword ptr [rip + fault_resume], 0
    check_exit "\code", "\name: EXITCODE"
    lea rax, [rip + \entry]
    check_eq "qword ptr [rdi + V_RIP]", rax, "\name: guest RIP is the instruction"
.endm

# step_none TAG, ENTRY, NAME: not intercepted: L2 executes ENTRY and exits on the VMMCALL.
.macro step_none tag, entry, name
    lea rax, [rip + \entry]
    mov [rdi + V_RIP], rax
    run_l2 "\tag"
    mov qword ptr [rip + fault_resume], 0
    check_exit EXIT_VMMCALL, "\name"
.endm

# da_info1 VALUE: what EXITINFO1 must hold: VALUE with decode assists, else 0.
.macro da_info1 value
    push rax
    mov qword ptr [rip + info1_want], 0
    test dword ptr [rip + svm_features], SVM_FEAT_DECODE_ASSISTS
    jz .Lda\@
    mov rax, \value
    mov [rip + info1_want], rax
.Lda\@:
    pop rax
.endm

.macro check_info1 name
    check_eq "qword ptr [rdi + V_EXITINFO1]", [info1_want], "\name"
.endm

main:
    call svm_enable

    # ---------------------------------------------------------------- CR reads and writes
    prep
    mov word ptr [rdi + V_CR_READ], 0x0001
    step 1, l2_cr0r, l2_cr0r_end, EXIT_CR0_READ, "MOV from CR0"
    da_info1 0x8000000000000003
    check_info1 "MOV from CR0: EXITINFO1"

    prep
    mov word ptr [rdi + V_CR_READ], 0x0008
    step 2, l2_cr3r, l2_cr3r_end, EXIT_CR0_READ + 3, "MOV from CR3"
    da_info1 0x8000000000000001
    check_info1 "MOV from CR3: EXITINFO1"

    prep
    mov word ptr [rdi + V_CR_READ], 0x0010
    step 3, l2_cr4r, l2_cr4r_end, EXIT_CR0_READ + 4, "MOV from CR4"
    da_info1 0x8000000000000002
    check_info1 "MOV from CR4: EXITINFO1"

    prep
    mov word ptr [rdi + V_CR_READ], 0x0019       # CR0, CR3, CR4 but not CR2
    step_none 4, l2_cr2r, "MOV from CR2 not intercepted"

    prep
    mov word ptr [rdi + V_CR_WRITE], 0x0001
    mov rbx, cr0
    step 5, l2_cr0w, l2_cr0w_end, EXIT_CR0_WRITE, "MOV to CR0"
    da_info1 0x8000000000000003
    check_info1 "MOV to CR0: EXITINFO1"

    prep
    mov word ptr [rdi + V_CR_WRITE], 0x0008
    mov rcx, cr3
    step 6, l2_cr3w, l2_cr3w_end, EXIT_CR0_WRITE + 3, "MOV to CR3"
    da_info1 0x8000000000000001
    check_info1 "MOV to CR3: EXITINFO1"

    prep
    mov word ptr [rdi + V_CR_WRITE], 0x0010
    mov rdx, cr4
    step 7, l2_cr4w, l2_cr4w_end, EXIT_CR0_WRITE + 4, "MOV to CR4"
    da_info1 0x8000000000000002
    check_info1 "MOV to CR4: EXITINFO1"

    # ---------------------------------------------------------------- selective CR0 write
    prep
    or dword ptr [rdi + V_INTERCEPT_MISC1], I1_CR0_SEL
    mov rbx, cr0
    xor rbx, 0xA                                # TS and MP only
    step_none 8, l2_cr0w, "selective CR0 write ignores a TS/MP-only change"
    check_eq "qword ptr [rdi + V_CR0]", rbx, "the TS/MP-only write reached L2's CR0"

    prep
    or dword ptr [rdi + V_INTERCEPT_MISC1], I1_CR0_SEL
    mov rbx, cr0
    xor rbx, 0x40000                            # AM
    step 9, l2_cr0w, l2_cr0w_end, EXIT_CR0_SEL_WRITE, "selective CR0 write of AM"

    prep
    or dword ptr [rdi + V_INTERCEPT_MISC1], I1_CR0_SEL
    mov word ptr [rdi + V_CR_WRITE], 0x0001
    mov rbx, cr0
    xor rbx, 0x40000
    step 10, l2_cr0w, l2_cr0w_end, EXIT_CR0_WRITE, "CR0 write intercept wins over selective"

    # ---------------------------------------------------------------- DR reads and writes
    prep
    mov word ptr [rdi + V_DR_READ], 0x0001
    step 11, l2_dr0r, l2_dr0r_end, EXIT_DR0_READ, "MOV from DR0"
    prep
    mov word ptr [rdi + V_DR_READ], 0x0080
    step 12, l2_dr7r, l2_dr7r_end, EXIT_DR0_READ + 7, "MOV from DR7"
    prep
    mov word ptr [rdi + V_DR_WRITE], 0x0002
    xor ebx, ebx
    step 13, l2_dr1w, l2_dr1w_end, EXIT_DR0_WRITE + 1, "MOV to DR1"
    prep
    mov word ptr [rdi + V_DR_WRITE], 0x0040
    mov ebx, 0xFFFF0FF0
    step 14, l2_dr6w, l2_dr6w_end, EXIT_DR0_WRITE + 6, "MOV to DR6"
    prep
    mov word ptr [rdi + V_DR_READ], 0x0040      # DR6 only
    step_none 15, l2_dr0r, "MOV from DR0 not intercepted"

    # ---------------------------------------------------------------- exceptions
    prep
    mov dword ptr [rdi + V_INTERCEPT_EXC], 0x40
    step_exc 16, l2_ud2, EXIT_EXCP0 + 6, "UD exception from ud2"
    check_eq "qword ptr [rdi + V_EXITINFO1]", 0, "UD exception: EXITINFO1 0"

    prep
    mov dword ptr [rdi + V_INTERCEPT_EXC], 0x08
    step_exc 17, l2_int3, EXIT_EXCP0 + 3, "BP exception from int3"

    prep
    mov dword ptr [rdi + V_INTERCEPT_EXC], 0x01
    xor ecx, ecx
    xor edx, edx
    step_exc 18, l2_div, EXIT_EXCP0 + 0, "DE exception from div by 0"

    prep
    mov dword ptr [rdi + V_INTERCEPT_EXC], 0x4000
    mov rbx, 0x100000000                        # beyond the prelude's 4 GiB map: not present
    step_exc 19, l2_pf_read, EXIT_EXCP0 + 14, "PF exception on a read"
    check_eq "qword ptr [rdi + V_EXITINFO1]", 0, "PF read: EXITINFO1 is the error code 0"
    mov rax, 0x100000000
    check_eq "qword ptr [rdi + V_EXITINFO2]", rax, "PF read: EXITINFO2 is the address"

    prep
    mov dword ptr [rdi + V_INTERCEPT_EXC], 0x4000
    mov rbx, 0x100000008
    step_exc 20, l2_pf_write, EXIT_EXCP0 + 14, "PF exception on a write"
    check_eq "qword ptr [rdi + V_EXITINFO1]", 2, "PF write: EXITINFO1 is the error code 2"
    mov rax, 0x100000008
    check_eq "qword ptr [rdi + V_EXITINFO2]", rax, "PF write: EXITINFO2 is the address"

    # ---------------------------------------------------------------- instructions
    prep
    or dword ptr [rdi + V_INTERCEPT_MISC1], I1_CPUID
    xor eax, eax
    step 21, l2_cpuid, l2_cpuid_end, EXIT_CPUID, CPUID
    prep
    or dword ptr [rdi + V_INTERCEPT_MISC1], I1_HLT
    step 22, l2_hlt, l2_hlt_end, EXIT_HLT, HLT
    prep
    or dword ptr [rdi + V_INTERCEPT_MISC1], I1_INVLPG
    mov rbx, 0x200000
    step 23, l2_invlpg, l2_invlpg_end, EXIT_INVLPG, INVLPG
    da_info1 0x200000
    check_info1 "INVLPG: EXITINFO1"
    prep
    or dword ptr [rdi + V_INTERCEPT_MISC1], I1_RDTSC
    step 24, l2_rdtsc, l2_rdtsc_end, EXIT_RDTSC, RDTSC

    # RDTSCP: #UD where CPUID 8000_0001 EDX[27] says it does not exist (then #UD is intercepted)
    mov eax, 0x80000001
    cpuid
    mov qword ptr [rip + rdtscp_exit], EXIT_RDTSCP
    bt edx, 27
    jc .Lhave_rdtscp
    mov qword ptr [rip + rdtscp_exit], EXIT_EXCP0 + 6
.Lhave_rdtscp:
    prep
    or dword ptr [rdi + V_INTERCEPT_MISC2], I2_RDTSCP
    mov dword ptr [rdi + V_INTERCEPT_EXC], 0x40
    lea rax, [rip + l2_rdtscp]
    mov [rdi + V_RIP], rax
    run_l2 25
    mov qword ptr [rip + fault_resume], 0
    check_exit [rdtscp_exit], "RDTSCP: EXITCODE (or UD exception without RDTSCP)"

    prep
    or dword ptr [rdi + V_INTERCEPT_MISC1], I1_PAUSE
    step 26, l2_pause, l2_pause_end, EXIT_PAUSE, PAUSE
    prep
    or dword ptr [rdi + V_INTERCEPT_MISC2], I2_WBINVD
    step 27, l2_wbinvd, l2_wbinvd_end, EXIT_WBINVD, WBINVD
    prep
    or dword ptr [rdi + V_INTERCEPT_MISC1], I1_INVD
    step 28, l2_invd, l2_invd_end, EXIT_INVD, INVD

    prep
    or dword ptr [rdi + V_INTERCEPT_MISC1], I1_IRET
    mov rax, L2_STACK - 40                      # an IRET frame back to l2_iret_end
    mov [rdi + V_RSP], rax
    lea rcx, [rip + l2_iret_end]
    mov [rax], rcx
    mov qword ptr [rax + 8], SEL_CODE64
    mov qword ptr [rax + 16], 2
    mov qword ptr [rax + 24], L2_STACK
    mov qword ptr [rax + 32], SEL_DATA
    step 29, l2_iret, l2_iret_end, EXIT_IRET, IRET

    prep
    or dword ptr [rdi + V_INTERCEPT_MISC1], I1_PUSHF
    step 30, l2_pushf, l2_pushf_end, EXIT_PUSHF, PUSHF
    prep
    or dword ptr [rdi + V_INTERCEPT_MISC1], I1_POPF
    mov rax, L2_STACK - 8
    mov qword ptr [rax], 2
    mov [rdi + V_RSP], rax
    step 31, l2_popf, l2_popf_end, EXIT_POPF, POPF
    prep
    or dword ptr [rdi + V_INTERCEPT_MISC1], I1_INTN
    step 32, l2_intn, l2_intn_end, EXIT_SWINT, "INT 0x30"
    da_info1 0x30
    check_info1 "INT 0x30: EXITINFO1"

    prep
    step 33, l2_vmmcall, l2_vmmcall_end, EXIT_VMMCALL, VMMCALL
    prep
    mov qword ptr [rdi + V_RAX], VMCB_B
    step 34, l2_vmrun, l2_vmrun_end, EXIT_VMRUN, "VMRUN in L2"
    prep
    mov qword ptr [rdi + V_RAX], VMCB_B
    or dword ptr [rdi + V_INTERCEPT_MISC2], I2_VMLOAD
    step 35, l2_vmload, l2_vmload_end, EXIT_VMLOAD, "VMLOAD in L2"
    prep
    mov qword ptr [rdi + V_RAX], VMCB_B
    or dword ptr [rdi + V_INTERCEPT_MISC2], I2_VMSAVE
    step 36, l2_vmsave, l2_vmsave_end, EXIT_VMSAVE, "VMSAVE in L2"
    prep
    or dword ptr [rdi + V_INTERCEPT_MISC2], I2_STGI
    step 37, l2_stgi, l2_stgi_end, EXIT_STGI, "STGI in L2"
    prep
    or dword ptr [rdi + V_INTERCEPT_MISC2], I2_CLGI
    step 38, l2_clgi, l2_clgi_end, EXIT_CLGI, "CLGI in L2"

    # ---------------------------------------------------------------- MSRs through the MSRPM
    mov rdi, MSRPM
    xor eax, eax
    mov ecx, 1024
    rep stosq
    mov rdi, MSRPM
    or byte ptr [rdi + 0x5D], 0x01              # 0x174 SYSENTER_CS: read
    or byte ptr [rdi + 0x820], 0x08             # 0xC0000081 STAR: write
    or byte ptr [rdi + 0x1045], 0x01            # 0xC0010114 VM_CR: read

    prep
    or dword ptr [rdi + V_INTERCEPT_MISC1], I1_MSR_PROT
    mov ecx, 0x174
    step 39, l2_rdmsr, l2_rdmsr_end, EXIT_MSR, "RDMSR 0x174 (read bit)"
    check_eq "qword ptr [rdi + V_EXITINFO1]", 0, "RDMSR 0x174: EXITINFO1 0"

    prep
    or dword ptr [rdi + V_INTERCEPT_MISC1], I1_MSR_PROT
    mov ecx, 0x174
    mov qword ptr [rdi + V_RAX], 0
    xor edx, edx
    step_none 40, l2_wrmsr, "WRMSR 0x174 not intercepted by its read bit"

    prep
    or dword ptr [rdi + V_INTERCEPT_MISC1], I1_MSR_PROT
    mov ecx, 0xC0000081
    step 41, l2_wrmsr, l2_wrmsr_end, EXIT_MSR, "WRMSR 0xC0000081 (write bit)"
    check_eq "qword ptr [rdi + V_EXITINFO1]", 1, "WRMSR 0xC0000081: EXITINFO1 1"

    prep
    or dword ptr [rdi + V_INTERCEPT_MISC1], I1_MSR_PROT
    mov ecx, 0xC0000081
    step_none 42, l2_rdmsr, "RDMSR 0xC0000081 not intercepted by its write bit"

    prep
    or dword ptr [rdi + V_INTERCEPT_MISC1], I1_MSR_PROT
    mov ecx, 0xC0010114
    step 43, l2_rdmsr, l2_rdmsr_end, EXIT_MSR, "RDMSR 0xC0010114 (read bit)"
    check_eq "qword ptr [rdi + V_EXITINFO1]", 0, "RDMSR 0xC0010114: EXITINFO1 0"

    prep
    or dword ptr [rdi + V_INTERCEPT_MISC1], I1_MSR_PROT
    mov ecx, 0x40000000
    step 44, l2_rdmsr, l2_rdmsr_end, EXIT_MSR, "RDMSR 0x40000000 (outside the map)"
    check_eq "qword ptr [rdi + V_EXITINFO1]", 0, "RDMSR 0x40000000: EXITINFO1 0"

    prep
    mov ecx, 0x174                              # the bit is set but MSR_PROT is not
    step_none 45, l2_rdmsr, "RDMSR 0x174 without MSR_PROT not intercepted"

    # ---------------------------------------------------------------- more CRs and DR7
    prep
    mov word ptr [rdi + V_CR_READ], 0x0004
    step 46, l2_cr2r, l2_cr2r_end, EXIT_CR0_READ + 2, "MOV from CR2"
    prep
    mov word ptr [rdi + V_CR_WRITE], 0x0100
    mov rbx, cr8
    step 47, l2_cr8w, l2_cr8w_end, EXIT_CR0_WRITE + 8, "MOV to CR8"
    prep
    mov word ptr [rdi + V_DR_WRITE], 0x0080
    mov ebx, 0x700
    step 48, l2_dr7w, l2_dr7w_end, EXIT_DR0_WRITE + 7, "MOV to DR7"
    check_eq "qword ptr [rdi + V_DR7]", 0x400, "MOV to DR7 intercepted: DR7 unchanged"
    prep
    mov ebx, 0x700
    step_none 49, l2_dr7w, "MOV to DR7 not intercepted"
    check_eq "qword ptr [rdi + V_DR7]", 0x700, "MOV to DR7 not intercepted: L2's DR7 written"

    # ---------------------------------------------------------------- RDPMC, INVLPGA, SHUTDOWN
    prep
    or dword ptr [rdi + V_INTERCEPT_MISC1], I1_RDPMC
    xor ecx, ecx
    step 50, l2_rdpmc, l2_rdpmc_end, EXIT_RDPMC, RDPMC
    prep
    or dword ptr [rdi + V_INTERCEPT_MISC1], I1_INVLPGA
    mov qword ptr [rdi + V_RAX], 0x200000
    mov ecx, 1
    step 51, l2_invlpga, l2_invlpga_end, EXIT_INVLPGA, INVLPGA

    prep
    mov qword ptr [rip + fault_resume], 0       # no safety net: L2's IDT is empty
    or dword ptr [rdi + V_INTERCEPT_MISC1], I1_SHUTDOWN
    mov dword ptr [rdi + V_IDTR + 4], 0
    lea rax, [rip + l2_ud2]
    mov [rdi + V_RIP], rax
    run_l2 52
    check_exit EXIT_SHUTDOWN, "triple fault in L2 (empty IDT): SHUTDOWN exit"
    ret

# ---------------------------------------------------------------- L2
# Each block: the instruction under test, then VMMCALL (reached only if it was not intercepted).
l2_escape:
    vmmcall
    hlt
l2_cr0r: mov rbx, cr0
l2_cr0r_end: vmmcall
l2_cr3r: mov rcx, cr3
l2_cr3r_end: vmmcall
l2_cr4r: mov rdx, cr4
l2_cr4r_end: vmmcall
l2_cr2r: mov rbx, cr2
l2_cr2r_end: vmmcall
l2_cr0w: mov cr0, rbx
l2_cr0w_end: vmmcall
l2_cr3w: mov cr3, rcx
l2_cr3w_end: vmmcall
l2_cr4w: mov cr4, rdx
l2_cr4w_end: vmmcall
l2_dr0r: mov rbx, dr0
l2_dr0r_end: vmmcall
l2_dr7r: mov rbx, dr7
l2_dr7r_end: vmmcall
l2_dr1w: mov dr1, rbx
l2_dr1w_end: vmmcall
l2_dr6w: mov dr6, rbx
l2_dr6w_end: vmmcall
l2_ud2: ud2
    vmmcall
l2_int3: int3
    vmmcall
l2_div: div ecx
    vmmcall
l2_pf_read: mov rax, [rbx]
    vmmcall
l2_pf_write: mov [rbx], eax
    vmmcall
l2_cpuid: cpuid
l2_cpuid_end: vmmcall
l2_hlt: hlt
l2_hlt_end: vmmcall
l2_invlpg: invlpg [rbx]
l2_invlpg_end: vmmcall
l2_rdtsc: rdtsc
l2_rdtsc_end: vmmcall
l2_rdtscp: rdtscp
    vmmcall
l2_pause: pause
l2_pause_end: vmmcall
l2_wbinvd: wbinvd
l2_wbinvd_end: vmmcall
l2_invd: invd
l2_invd_end: vmmcall
l2_iret: iretq
l2_iret_end: vmmcall
l2_pushf: pushfq
l2_pushf_end: vmmcall
l2_popf: popfq
l2_popf_end: vmmcall
l2_intn: int 0x30
l2_intn_end: vmmcall
l2_vmmcall: vmmcall
l2_vmmcall_end: hlt
l2_vmrun: vmrun
l2_vmrun_end: vmmcall
l2_vmload: vmload
l2_vmload_end: vmmcall
l2_vmsave: vmsave
l2_vmsave_end: vmmcall
l2_stgi: stgi
l2_stgi_end: vmmcall
l2_clgi: clgi
l2_clgi_end: vmmcall
l2_rdmsr: rdmsr
l2_rdmsr_end: vmmcall
l2_wrmsr: wrmsr
l2_wrmsr_end: vmmcall
l2_cr8w: mov cr8, rbx
l2_cr8w_end: vmmcall
l2_dr7w: mov dr7, rbx
l2_dr7w_end: vmmcall
l2_rdpmc: rdpmc
l2_rdpmc_end: vmmcall
l2_invlpga: invlpga
l2_invlpga_end: vmmcall

.bss
.align 8
info1_want:     .space 8
rdtscp_exit:    .space 8
.text
