# svm_pat.S: an L1 hypervisor that checks L1/L2 PAT independence under nested paging
# (AMD APM vol. 2, 15.25.8 "Nested Paging and PAT"; the seed series in ../shared/seed/).
#
# L2 shares L1's GDT, IDT and page tables; with nested paging on, the nested tables map the
# first 4 GiB one-to-one (2 MiB pages). L2 reports what it saw through memory (l2_pat1 ...);
# only L1 prints. Checks, in order:
#   - with nested paging, L2's RDMSR(PAT) reads vmcb12.g_pat; L2's WRMSR(PAT) is read back;
#     #VMEXIT stores L2's PAT in vmcb12.g_pat; L1's PAT is unchanged across the round trip;
#   - re-entry loads g_pat again, as #VMEXIT left it and as L1 then edited it;
#   - a reserved type in g_pat (2 in PA0, 8 in PA7) fails VMRUN with VMEXIT_INVALID, L2 not run;
#   - a reserved WRMSR(PAT) in L2 raises #GP: an EXCP13 #VMEXIT when L1 intercepts #GP, else
#     L2's own IDT handler; gPAT and L1's PAT keep their values;
#   - L2's WRMSR(PAT) intercepted through L1's MSR permission map exits before writing gPAT;
#   - without nested paging g_pat is ignored (not loaded, not checked, not stored) and L1 and L2
#     share one PAT.
# On QEMU TCG (one PAT, g_pat ignored, reserved PAT writes accepted) the checks listed in
# tests/test_guests_qemu.py QEMU_KNOWN_WRONG fail; svmemu --pat-model shared fails the same ones.
.include "prelude.inc"

.equ VMCB, 0x800000
.equ HSAVE, 0x801000
.equ NPT_PML4, 0x810000
.equ NPT_PDPT, 0x811000
.equ NPT_PD, 0x812000                   # four pages: 4 GiB of 2 MiB pages
.equ MSRPM, 0x802000                    # 8 KiB
.equ L2_STACK, 0x830000
.equ MSR_PAT, 0x277
.equ MSR_VM_HSAVE_PA, 0xC0010117

# VMCB offsets (AMD APM vol. 2, appendix B)
.equ V_INTERCEPT_EXC, 0x008
.equ V_INTERCEPT_MISC1, 0x00C
.equ V_INTERCEPT_MISC2, 0x010
.equ V_MSRPM_BASE, 0x048
.equ V_ASID, 0x058
.equ V_EXITCODE, 0x070
.equ V_EXITINFO1, 0x078
.equ V_NP_ENABLE, 0x090
.equ V_NCR3, 0x0B0
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

.equ EXIT_EXCP13, 0x4D
.equ EXIT_MSR, 0x7C
.equ EXIT_VMMCALL, 0x81
.equ INTERCEPT_MSR_PROT, 1 << 28        # in V_INTERCEPT_MISC1

# PAT values: HPAT is L1's, GPAT the g_pat L1 gives L2, NEWPAT what L2 writes, EDITPAT what L1
# puts in g_pat between runs. All valid; BADPAT0 has type 2 in PA0, BADPAT7 type 8 in PA7.
.equ HPAT, 0x0007010600070406
.equ GPAT, 0x0606060606060606
.equ NEWPAT, 0x0005040100070406
.equ EDITPAT, 0x0404040404040404
.equ BADPAT0, 0x0007040600070402
.equ BADPAT7, 0x0807040600070406
.equ PAT_RESET, 0x0007040600070406

# rdpat: rax = PAT (clobbers rcx, rdx).
.macro rdpat
    mov ecx, MSR_PAT
    rdmsr
    shl rdx, 32
    or rax, rdx
.endm

# wrpat VALUE: PAT = VALUE (clobbers rax, rcx, rdx).
.macro wrpat value
    mov rax, \value
    mov rdx, rax
    shr rdx, 32
    mov ecx, MSR_PAT
    wrmsr
.endm

# set_gpat VALUE: vmcb12.g_pat = VALUE (clobbers rax).
.macro set_gpat value
    mov rax, \value
    mov [rdi + V_GPAT], rax
.endm

# run_l2 ENTRY: VMRUN with L2 starting at ENTRY on a fresh stack (clobbers rax).
.macro run_l2 entry
    lea rax, [rip + \entry]
    mov [rdi + V_RIP], rax
    mov rax, L2_STACK
    mov [rdi + V_RSP], rax
    mov rax, VMCB
    vmrun
    mov rdi, VMCB
.endm

# set_seg OFFSET, SELECTOR|ATTRIB<<16: a flat 4 GiB segment in the VMCB at rdi.
.macro set_seg off, selattr
    mov dword ptr [rdi + \off], \selattr
    mov dword ptr [rdi + \off + 4], 0xFFFFFFFF
    mov qword ptr [rdi + \off + 8], 0
.endm

main:
    mov ecx, MSR_EFER
    rdmsr
    or eax, 0x1000
    wrmsr
    mov ecx, MSR_VM_HSAVE_PA
    mov eax, HSAVE
    xor edx, edx
    wrmsr
    call build_npt
    call init_vmcb
    mov rdi, VMCB

    # ---- nested paging on: L2 has its own PAT ------------------------------------------------
    mov qword ptr [rdi + V_NP_ENABLE], 1
    mov qword ptr [rdi + V_NCR3], NPT_PML4
    wrpat HPAT
    set_gpat GPAT
    run_l2 l2_read_write
    check_eq qword ptr [rdi + V_EXITCODE], EXIT_VMMCALL, "nested paging: L2 runs and exits by VMMCALL"
    mov rsi, GPAT
    check_eq qword ptr [rip + l2_pat1], rsi, "L2's RDMSR(PAT) reads vmcb12.g_pat"
    mov rsi, NEWPAT
    check_eq qword ptr [rip + l2_pat2], rsi, "L2's RDMSR(PAT) reads back its own WRMSR(PAT)"
    check_eq qword ptr [rdi + V_GPAT], rsi, "#VMEXIT stores L2's PAT in vmcb12.g_pat"
    rdpat
    mov rsi, HPAT
    check_eq rax, rsi, "L1's PAT is unchanged across VMRUN and #VMEXIT"
    wrpat HPAT                          # undo a shared-PAT implementation's damage

    run_l2 l2_read
    mov rsi, NEWPAT
    check_eq qword ptr [rip + l2_pat1], rsi, "re-entry loads g_pat as #VMEXIT stored it"
    set_gpat EDITPAT
    run_l2 l2_read
    mov rsi, EDITPAT
    check_eq qword ptr [rip + l2_pat1], rsi, "re-entry loads the g_pat L1 edited"
    check_eq qword ptr [rdi + V_GPAT], rsi, "g_pat keeps the edited value when L2 does not write"
    rdpat
    mov rsi, HPAT
    check_eq rax, rsi, "L1's PAT is unchanged after the re-entries"

    # ---- a reserved type in g_pat fails VMRUN ------------------------------------------------
    mov qword ptr [rip + l2_ran], 0
    set_gpat BADPAT0
    run_l2 l2_mark
    check_eq qword ptr [rdi + V_EXITCODE], -1, "g_pat with type 2 in PA0 fails VMRUN with VMEXIT_INVALID"
    set_gpat BADPAT7
    run_l2 l2_mark
    check_eq qword ptr [rdi + V_EXITCODE], -1, "g_pat with type 8 in PA7 fails VMRUN with VMEXIT_INVALID"
    check_eq qword ptr [rip + l2_ran], 0, "L2 never ran with a reserved g_pat"
    rdpat
    mov rsi, HPAT
    check_eq rax, rsi, "L1's PAT is unchanged by the failed VMRUNs"
    wrpat HPAT

    # ---- a reserved WRMSR(PAT) in L2 raises #GP ----------------------------------------------
    set_gpat GPAT
    mov dword ptr [rdi + V_INTERCEPT_EXC], 1 << 13
    run_l2 l2_bad_write
    mov dword ptr [rdi + V_INTERCEPT_EXC], 0
    check_eq qword ptr [rdi + V_EXITCODE], EXIT_EXCP13, "reserved WRMSR(PAT) in L2 exits with EXCP13 when L1 intercepts #GP"
    check_eq qword ptr [rdi + V_EXITINFO1], 0, "the EXCP13 exit reports error code 0"
    lea rsi, [rip + l2_bad_wrmsr]
    check_eq qword ptr [rdi + V_RIP], rsi, "the EXCP13 exit's guest RIP is the WRMSR"
    mov rsi, GPAT
    check_eq qword ptr [rdi + V_GPAT], rsi, "g_pat is unchanged by the faulting WRMSR"
    rdpat
    mov rsi, HPAT
    check_eq rax, rsi, "L1's PAT is unchanged by L2's reserved WRMSR"
    wrpat HPAT

    mov qword ptr [rip + l2_fault_vec], -2
    mov qword ptr [rip + l2_fault_err], -2
    run_l2 l2_bad_write_handled
    check_eq qword ptr [rdi + V_EXITCODE], EXIT_VMMCALL, "without the #GP intercept L2 goes on and exits by VMMCALL"
    check_eq qword ptr [rip + l2_fault_vec], 13, "reserved WRMSR(PAT) in L2 without the intercept reaches L2's #GP handler"
    check_eq qword ptr [rip + l2_fault_err], 0, "L2's #GP has error code 0"
    mov rsi, GPAT
    check_eq qword ptr [rip + l2_pat1], rsi, "L2's PAT is still g_pat after its #GP"
    check_eq qword ptr [rdi + V_GPAT], rsi, "#VMEXIT stores the unchanged PAT after L2's #GP"
    rdpat
    mov rsi, HPAT
    check_eq rax, rsi, "L1's PAT is unchanged after L2 handled its #GP"

    # ---- L1 intercepts L2's WRMSR(PAT) through its MSR permission map -----------------------
    call init_msrpm
    mov rdi, VMCB
    wrpat HPAT
    set_gpat GPAT
    run_l2 l2_msr_intercepted
    check_eq qword ptr [rdi + V_EXITCODE], EXIT_MSR, "L1's MSRPM turns L2's WRMSR(PAT) into #VMEXIT MSR"
    check_eq qword ptr [rdi + V_EXITINFO1], 1, "the MSR exit's EXITINFO1 says write"
    mov rsi, GPAT
    check_eq qword ptr [rdi + V_GPAT], rsi, "an intercepted WRMSR(PAT) leaves gPAT alone"
    add qword ptr [rdi + V_RIP], 2      # L1 "emulates" the WRMSR by skipping it
    mov rax, VMCB
    vmrun
    mov rdi, VMCB
    mov rsi, GPAT
    check_eq qword ptr [rip + l2_pat1], rsi, "after the intercepted WRMSR L2 still reads g_pat"
    and dword ptr [rdi + V_INTERCEPT_MISC1], 0xEFFFFFFF     # MSR_PROT off again

    # ---- nested paging off: one PAT, g_pat ignored -------------------------------------------
    mov qword ptr [rdi + V_NP_ENABLE], 0
    wrpat HPAT
    set_gpat GPAT
    run_l2 l2_read_write
    check_eq qword ptr [rdi + V_EXITCODE], EXIT_VMMCALL, "without nested paging L2 runs and exits by VMMCALL"
    mov rsi, HPAT
    check_eq qword ptr [rip + l2_pat1], rsi, "without nested paging L2 reads L1's PAT, not g_pat"
    rdpat
    mov rsi, NEWPAT
    check_eq rax, rsi, "without nested paging L2's WRMSR(PAT) is visible to L1"
    mov rsi, GPAT
    check_eq qword ptr [rdi + V_GPAT], rsi, "without nested paging #VMEXIT leaves g_pat alone"
    set_gpat BADPAT0
    run_l2 l2_read
    check_eq qword ptr [rdi + V_EXITCODE], EXIT_VMMCALL, "without nested paging a reserved g_pat does not fail VMRUN"
    mov rsi, NEWPAT
    check_eq qword ptr [rip + l2_pat1], rsi, "without nested paging L2 reads the one shared PAT"
    wrpat PAT_RESET
    ret

# build_npt: nested page tables mapping GPA 0..4 GiB to the same host addresses, 2 MiB pages,
# every level present, writable and user (nested walks are user accesses: APM 15.25.5).
build_npt:
    mov edi, NPT_PD
    mov eax, 0x87
    mov ecx, 2048
.Lnpt_pd:
    mov [rdi], rax
    add rax, 0x200000
    add rdi, 8
    dec ecx
    jnz .Lnpt_pd
    mov edi, NPT_PDPT
    mov eax, NPT_PD + 7
    mov ecx, 4
.Lnpt_pdpt:
    mov [rdi], rax
    add eax, 0x1000
    add rdi, 8
    dec ecx
    jnz .Lnpt_pdpt
    mov edi, NPT_PML4
    mov qword ptr [rdi], NPT_PDPT + 7
    ret

# init_msrpm: an MSR permission map that intercepts only WRMSR(PAT) (2 bits per MSR, the write
# bit second: bit 2 * 0x277 + 1 of the first 2 KiB), and turn MSR_PROT on in the VMCB.
init_msrpm:
    mov edi, MSRPM
    xor eax, eax
    mov ecx, 1024
    rep stosq
    mov edi, MSRPM
    or byte ptr [rdi + 0x9D], 0x80      # bit 0x4EF = 2 * 0x277 + 1
    mov edi, VMCB
    mov qword ptr [rdi + V_MSRPM_BASE], MSRPM
    or dword ptr [rdi + V_INTERCEPT_MISC1], INTERCEPT_MSR_PROT
    ret

# init_vmcb: a 64-bit L2 in L1's GDT, IDT, page tables; VMRUN and VMMCALL intercepted.
init_vmcb:
    mov rdi, VMCB
    xor eax, eax
    mov ecx, 512
    rep stosq
    mov rdi, VMCB
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
    mov eax, 0xFFFF0FF0
    mov [rdi + V_DR6], rax
    mov qword ptr [rdi + V_DR7], 0x400
    ret

# ---- L2 entry points (each ends in VMMCALL; L1 sets RIP and RSP before every VMRUN) -----------
l2_read_write:
    rdpat
    mov [rip + l2_pat1], rax
    wrpat NEWPAT
    rdpat
    mov [rip + l2_pat2], rax
    vmmcall

l2_read:
    rdpat
    mov [rip + l2_pat1], rax
    vmmcall

l2_mark:
    inc qword ptr [rip + l2_ran]
    vmmcall

l2_bad_write:
    mov eax, BADPAT0 & 0xFFFFFFFF
    mov edx, BADPAT0 >> 32
    mov ecx, MSR_PAT
l2_bad_wrmsr:
    wrmsr
    vmmcall

l2_msr_intercepted:
    mov eax, NEWPAT & 0xFFFFFFFF
    mov edx, NEWPAT >> 32
    mov ecx, MSR_PAT
    wrmsr
    rdpat
    mov [rip + l2_pat1], rax
    vmmcall

l2_bad_write_handled:
    mov qword ptr [rip + fault_err], -1
    expect_fault .Ll2_gp_done
    wrpat BADPAT0
.Ll2_gp_done:
    mov qword ptr [rip + fault_resume], 0     # disarm, in case the WRMSR did not fault
    mov rax, [rip + fault_vector]
    mov [rip + l2_fault_vec], rax
    mov rax, [rip + fault_err]
    mov [rip + l2_fault_err], rax
    rdpat
    mov [rip + l2_pat1], rax
    vmmcall

.bss
.align 8
l2_pat1:        .space 8
l2_pat2:        .space 8
l2_ran:         .space 8
l2_fault_vec:   .space 8
l2_fault_err:   .space 8
.text
