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
.include "svm.inc"

.equ MSR_PAT, 0x277
.equ EXIT_EXCP13, 0x4D

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
    rdmsr64 MSR_PAT
.endm

# wrpat VALUE: PAT = VALUE (clobbers rax, rcx, rdx).
.macro wrpat value
    wrmsr64 MSR_PAT, "\value"
.endm

# set_gpat VALUE: vmcb12.g_pat = VALUE (clobbers rax).
.macro set_gpat value
    mov rax, \value
    mov [rdi + V_GPAT], rax
.endm

# enter_l2 ENTRY: VMRUN with L2 starting at ENTRY on a fresh stack (clobbers rax).
.macro enter_l2 entry
    lea rax, [rip + \entry]
    mov [rdi + V_RIP], rax
    mov rax, L2_STACK
    mov [rdi + V_RSP], rax
    mov rax, VMCB
    vmrun
    mov rdi, VMCB
.endm

main:
    call svm_enable
    lea rdi, [rip + l2_read_write]
    call vmcb_init
    call npt_init                           # nested paging on: L2 has its own PAT
    mov rdi, VMCB

    # ---- nested paging on: L2 has its own PAT ------------------------------------------------
    wrpat HPAT
    set_gpat GPAT
    enter_l2 l2_read_write
    check_eq "qword ptr [rdi + V_EXITCODE]", EXIT_VMMCALL, "nested paging: L2 runs and exits by VMMCALL"
    mov rsi, GPAT
    check_eq "qword ptr [rip + l2_pat1]", rsi, "L2's RDMSR(PAT) reads vmcb12.g_pat"
    mov rsi, NEWPAT
    check_eq "qword ptr [rip + l2_pat2]", rsi, "L2's RDMSR(PAT) reads back its own WRMSR(PAT)"
    check_eq "qword ptr [rdi + V_GPAT]", rsi, "#VMEXIT stores L2's PAT in vmcb12.g_pat"
    rdpat
    mov rsi, HPAT
    check_eq rax, rsi, "L1's PAT is unchanged across VMRUN and #VMEXIT"
    wrpat HPAT                          # undo a shared-PAT implementation's damage

    enter_l2 l2_read
    mov rsi, NEWPAT
    check_eq "qword ptr [rip + l2_pat1]", rsi, "re-entry loads g_pat as #VMEXIT stored it"
    set_gpat EDITPAT
    enter_l2 l2_read
    mov rsi, EDITPAT
    check_eq "qword ptr [rip + l2_pat1]", rsi, "re-entry loads the g_pat L1 edited"
    check_eq "qword ptr [rdi + V_GPAT]", rsi, "g_pat keeps the edited value when L2 does not write"
    rdpat
    mov rsi, HPAT
    check_eq rax, rsi, "L1's PAT is unchanged after the re-entries"

    # ---- a reserved type in g_pat fails VMRUN ------------------------------------------------
    mov qword ptr [rip + l2_ran], 0
    set_gpat BADPAT0
    enter_l2 l2_mark
    check_eq "qword ptr [rdi + V_EXITCODE]", -1, "g_pat with type 2 in PA0 fails VMRUN with VMEXIT_INVALID"
    set_gpat BADPAT7
    enter_l2 l2_mark
    check_eq "qword ptr [rdi + V_EXITCODE]", -1, "g_pat with type 8 in PA7 fails VMRUN with VMEXIT_INVALID"
    check_eq "qword ptr [rip + l2_ran]", 0, "L2 never ran with a reserved g_pat"
    rdpat
    mov rsi, HPAT
    check_eq rax, rsi, "L1's PAT is unchanged by the failed VMRUNs"
    wrpat HPAT

    # ---- a reserved WRMSR(PAT) in L2 raises #GP ----------------------------------------------
    set_gpat GPAT
    mov dword ptr [rdi + V_INTERCEPT_EXC], 1 << 13
    enter_l2 l2_bad_write
    mov dword ptr [rdi + V_INTERCEPT_EXC], 0
    check_eq "qword ptr [rdi + V_EXITCODE]", EXIT_EXCP13, "reserved WRMSR(PAT) in L2 exits with EXCP13 when L1 intercepts #GP"
    check_eq "qword ptr [rdi + V_EXITINFO1]", 0, "the EXCP13 exit reports error code 0"
    lea rsi, [rip + l2_bad_wrmsr]
    check_eq "qword ptr [rdi + V_RIP]", rsi, "the EXCP13 exit's guest RIP is the WRMSR"
    mov rsi, GPAT
    check_eq "qword ptr [rdi + V_GPAT]", rsi, "g_pat is unchanged by the faulting WRMSR"
    rdpat
    mov rsi, HPAT
    check_eq rax, rsi, "L1's PAT is unchanged by L2's reserved WRMSR"
    wrpat HPAT

    mov qword ptr [rip + l2_fault_vec], -2
    mov qword ptr [rip + l2_fault_err], -2
    enter_l2 l2_bad_write_handled
    check_eq "qword ptr [rdi + V_EXITCODE]", EXIT_VMMCALL, "without the #GP intercept L2 goes on and exits by VMMCALL"
    check_eq "qword ptr [rip + l2_fault_vec]", 13, "reserved WRMSR(PAT) in L2 without the intercept reaches L2's #GP handler"
    check_eq "qword ptr [rip + l2_fault_err]", 0, "L2's #GP has error code 0"
    mov rsi, GPAT
    check_eq "qword ptr [rip + l2_pat1]", rsi, "L2's PAT is still g_pat after its #GP"
    check_eq "qword ptr [rdi + V_GPAT]", rsi, "#VMEXIT stores the unchanged PAT after L2's #GP"
    rdpat
    mov rsi, HPAT
    check_eq rax, rsi, "L1's PAT is unchanged after L2 handled its #GP"

    # ---- L1 intercepts L2's WRMSR(PAT) through its MSR permission map -----------------------
    call init_msrpm
    mov rdi, VMCB
    wrpat HPAT
    set_gpat GPAT
    enter_l2 l2_msr_intercepted
    check_eq "qword ptr [rdi + V_EXITCODE]", EXIT_MSR, "L1's MSRPM turns L2's WRMSR(PAT) into #VMEXIT MSR"
    check_eq "qword ptr [rdi + V_EXITINFO1]", 1, "the MSR exit's EXITINFO1 says write"
    mov rsi, GPAT
    check_eq "qword ptr [rdi + V_GPAT]", rsi, "an intercepted WRMSR(PAT) leaves gPAT alone"
    add qword ptr [rdi + V_RIP], 2      # L1 "emulates" the WRMSR by skipping it
    mov rax, VMCB
    vmrun
    mov rdi, VMCB
    mov rsi, GPAT
    check_eq "qword ptr [rip + l2_pat1]", rsi, "after the intercepted WRMSR L2 still reads g_pat"
    and dword ptr [rdi + V_INTERCEPT_MISC1], 0xEFFFFFFF     # MSR_PROT off again

    # ---- nested paging off: one PAT, g_pat ignored -------------------------------------------
    mov qword ptr [rdi + V_NESTED_CTL], 0
    wrpat HPAT
    set_gpat GPAT
    enter_l2 l2_read_write
    check_eq "qword ptr [rdi + V_EXITCODE]", EXIT_VMMCALL, "without nested paging L2 runs and exits by VMMCALL"
    mov rsi, HPAT
    check_eq "qword ptr [rip + l2_pat1]", rsi, "without nested paging L2 reads L1's PAT, not g_pat"
    rdpat
    mov rsi, NEWPAT
    check_eq rax, rsi, "without nested paging L2's WRMSR(PAT) is visible to L1"
    mov rsi, GPAT
    check_eq "qword ptr [rdi + V_GPAT]", rsi, "without nested paging #VMEXIT leaves g_pat alone"
    set_gpat BADPAT0
    enter_l2 l2_read
    check_eq "qword ptr [rdi + V_EXITCODE]", EXIT_VMMCALL, "without nested paging a reserved g_pat does not fail VMRUN"
    mov rsi, NEWPAT
    check_eq "qword ptr [rip + l2_pat1]", rsi, "without nested paging L2 reads the one shared PAT"
    wrpat PAT_RESET
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
    or dword ptr [rdi + V_INTERCEPT_MISC1], I1_MSR_PROT
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
