# svm_checks.S: VMRUN's consistency checks (AMD APM vol. 2, 15.5.1) and the instruction's own
# exceptions (APM vol. 3, VMRUN).
# Each case starts from a VMCB that runs (the first case proves it), breaks one rule, and
# expects #VMEXIT with EXITCODE VMEXIT_INVALID (-1) and no L2 instruction executed: L2's first
# instruction would set l2_marker.  QEMU stores only the low 32 bits of the exit code, so each
# case compares those; one check looks at all 64 bits.  Then #UD for VMRUN with EFER.SVME=0,
# #GP(0) for VMRUN at CPL 3, with rAX not 4 KiB-aligned, and with rAX at or above MAXPHYADDR.
# Every VMRUN is logged (svm.inc) with the tag given below, for the tests to read.
.include "prelude.inc"
.include "svm.inc"

.equ ZERO_PAGES, 0x80A000                   # two zeroed pages: a VMCB that fails every check
.equ SEL_UCODE64, 0x33
.equ SEL_UDATA, 0x3B

# expect_invalid TAG, "case", "case: L2 did not run"
.macro expect_invalid tag, name, name2
    mov qword ptr [rip + l2_marker], 0
    run_l2 "\tag"
    check_exit 0xFFFFFFFF, "\name"
    check_eq [l2_marker], 0, "\name2"
.endm

# fresh: a valid VMCB again in rdi (every case breaks exactly one thing).
.macro fresh
    push rsi
    lea rsi, [rip + l2_mark]
    push rdi
    mov rdi, rsi
    call vmcb_init
    pop rdi
    pop rsi
    mov rdi, VMCB
.endm

main:
    # ---- #UD: VMRUN while EFER.SVME is 0
    expect_fault .Lud
    mov rax, VMCB
    vmrun
.Lud:
    check_eq [fault_vector], 6, "VMRUN with EFER.SVME=0 raises #UD"
    mov qword ptr [rip + fault_resume], 0

    call svm_enable
    mov eax, 0x80000008
    cpuid
    movzx eax, al
    mov [rip + maxphyaddr], rax

    # ---- the baseline runs L2
    fresh
    mov qword ptr [rip + l2_marker], 0
    run_l2 0
    check_exit EXIT_VMMCALL, "valid VMCB: L2 runs to VMMCALL"
    check_eq [l2_marker], 1, "valid VMCB: L2 set the marker"

    # ---- consistency checks
    fresh
    and dword ptr [rdi + V_EFER], ~0x1000
    expect_invalid 1, "EFER.SVME=0 in guest -> VMEXIT_INVALID", "EFER.SVME=0: L2 did not run"
    mov rdi, VMCB
    check_eq "qword ptr [rdi + V_EXITCODE]", -1, "EXITCODE is -1 in all 64 bits"

    fresh
    mov rax, [rdi + V_CR0]
    and eax, ~0x40000000
    or eax, 0x20000000
    mov [rdi + V_CR0], rax
    expect_invalid 2, "CR0.CD=0 NW=1 -> VMEXIT_INVALID", "CR0.CD=0 NW=1: L2 did not run"

    fresh
    bts qword ptr [rdi + V_CR0], 32
    expect_invalid 3, "CR0 bit 32 -> VMEXIT_INVALID", "CR0 bit 32: L2 did not run"

    fresh
    bts qword ptr [rdi + V_CR0], 63
    expect_invalid 4, "CR0 bit 63 -> VMEXIT_INVALID", "CR0 bit 63: L2 did not run"

    fresh
    mov rcx, [rip + maxphyaddr]
    mov rax, [rdi + V_CR3]
    bts rax, rcx
    mov [rdi + V_CR3], rax
    expect_invalid 5, "CR3 bit MAXPHYADDR -> VMEXIT_INVALID", "CR3 bit MAXPHYADDR: L2 did not run"

    fresh
    bts qword ptr [rdi + V_CR3], 63
    expect_invalid 6, "CR3 bit 63 -> VMEXIT_INVALID", "CR3 bit 63: L2 did not run"

    fresh
    bts qword ptr [rdi + V_CR4], 15
    expect_invalid 7, "CR4 bit 15 (reserved) -> VMEXIT_INVALID", "CR4 bit 15: L2 did not run"

    fresh
    bts qword ptr [rdi + V_CR4], 40
    expect_invalid 8, "CR4 bit 40 (reserved) -> VMEXIT_INVALID", "CR4 bit 40: L2 did not run"

    fresh
    bts qword ptr [rdi + V_DR6], 32
    expect_invalid 9, "DR6 bit 32 -> VMEXIT_INVALID", "DR6 bit 32: L2 did not run"

    fresh
    bts qword ptr [rdi + V_DR7], 63
    expect_invalid 10, "DR7 bit 63 -> VMEXIT_INVALID", "DR7 bit 63: L2 did not run"

    fresh
    bts qword ptr [rdi + V_EFER], 2
    expect_invalid 11, "EFER bit 2 (reserved) -> VMEXIT_INVALID", "EFER bit 2: L2 did not run"

    fresh
    bts qword ptr [rdi + V_EFER], 32
    expect_invalid 12, "EFER bit 32 (reserved) -> VMEXIT_INVALID", "EFER bit 32: L2 did not run"

    fresh
    btr qword ptr [rdi + V_CR4], 5
    expect_invalid 13, "EFER.LME+CR0.PG with CR4.PAE=0 -> VMEXIT_INVALID", "LME+PG without PAE: L2 did not run"

    fresh
    btr qword ptr [rdi + V_CR0], 0
    expect_invalid 14, "EFER.LME+CR0.PG with CR0.PE=0 -> VMEXIT_INVALID", "LME+PG without PE: L2 did not run"

    fresh
    or word ptr [rdi + V_CS + 2], 0x400
    expect_invalid 15, "long mode with CS.L=1 and CS.D=1 -> VMEXIT_INVALID", "CS.L+CS.D: L2 did not run"

    fresh
    btr dword ptr [rdi + V_INTERCEPT_MISC2], 0
    expect_invalid 16, "VMRUN intercept clear -> VMEXIT_INVALID", "VMRUN intercept clear: L2 did not run"

    fresh
    mov dword ptr [rdi + V_ASID], 0
    expect_invalid 17, "ASID 0 -> VMEXIT_INVALID", "ASID 0: L2 did not run"

    fresh
    mov rcx, [rip + maxphyaddr]
    xor eax, eax
    bts rax, rcx
    sub rax, 0x1000                         # the 8 KiB map's second page is beyond MAXPHYADDR
    mov [rdi + V_MSRPM_BASE], rax
    expect_invalid 18, "MSRPM beyond MAXPHYADDR -> VMEXIT_INVALID", "MSRPM beyond MAXPHYADDR: L2 did not run"

    fresh
    mov rcx, [rip + maxphyaddr]
    xor eax, eax
    bts rax, rcx
    sub rax, 0x2000                         # the 12 KiB map's third page is beyond MAXPHYADDR
    mov [rdi + V_IOPM_BASE], rax
    expect_invalid 19, "IOPM beyond MAXPHYADDR -> VMEXIT_INVALID", "IOPM beyond MAXPHYADDR: L2 did not run"

    fresh
    mov dword ptr [rdi + V_EVENTINJ], EV_VALID | EV_EXC | 2
    expect_invalid 20, "EVENTINJ exception with vector 2 -> VMEXIT_INVALID", "EVENTINJ exception 2: L2 did not run"

    fresh
    mov dword ptr [rdi + V_EVENTINJ], 0x80000120
    expect_invalid 21, "EVENTINJ type 1 (reserved) -> VMEXIT_INVALID", "EVENTINJ type 1: L2 did not run"

    fresh
    mov dword ptr [rdi + V_EVENTINJ], 0x80000720
    expect_invalid 22, "EVENTINJ type 7 (reserved) -> VMEXIT_INVALID", "EVENTINJ type 7: L2 did not run"

    # ---- the same VMCB, repaired, runs again: the failures left nothing behind
    fresh
    mov qword ptr [rip + l2_marker], 0
    run_l2 23
    check_exit EXIT_VMMCALL, "VMCB valid again: L2 runs"
    check_eq [l2_marker], 1, "VMCB valid again: L2 set the marker"

    # ---- #GP(0): rAX not 4 KiB-aligned (the VMCB there would fail every check anyway)
    mov rdi, ZERO_PAGES
    xor eax, eax
    mov ecx, 1024
    rep stosq
    expect_fault .Lmisaligned
    mov rax, ZERO_PAGES + 8
    vmrun
.Lmisaligned:
    check_eq [fault_vector], 13, "VMRUN with rAX not 4 KiB-aligned raises #GP"
    check_eq [fault_err], 0, "... with error code 0"
    mov qword ptr [rip + fault_resume], 0

    # ---- #GP(0): rAX at 2^MAXPHYADDR
    expect_fault .Lbeyond
    mov rcx, [rip + maxphyaddr]
    xor eax, eax
    bts rax, rcx
    vmrun
.Lbeyond:
    check_eq [fault_vector], 13, "VMRUN with rAX at 2^MAXPHYADDR raises #GP"
    mov qword ptr [rip + fault_resume], 0

    # ---- #GP(0): VMRUN at CPL 3
    call enter_ring3_setup
    mov [rip + ring0_rsp], rsp
    lea rax, [rsp - 512]
    push SEL_UDATA
    push rax
    push 2
    push SEL_UCODE64
    lea rax, [rip + .Lring3]
    push rax
    iretq
.Lring3:
    expect_fault .Lring3_fault
    mov qword ptr [rip + l2_marker], 0
    mov rax, VMCB
    vmrun
.Lring3_fault:
    int 0x81                                # back to CPL 0 (a DPL 3 gate)
.Lring0_again:
    mov ax, SEL_DATA
    mov ss, ax
    mov ds, ax
    mov es, ax
    check_eq [fault_vector], 13, "VMRUN at CPL 3 raises #GP"
    check_eq [l2_marker], 0, "VMRUN at CPL 3: L2 did not run"
    mov qword ptr [rip + fault_resume], 0
    ret

# A GDT with ring-3 code and data after the prelude's, user-accessible first 16 MiB, and the
# gate for `int 0x81` that brings the guest back.
enter_ring3_setup:
    lea rsi, [rip + gdt]
    lea rdi, [rip + gdt3]
    mov ecx, 6
    rep movsq
    mov rax, 0x00affa000000ffff
    mov [rip + gdt3 + 0x30], rax
    mov rax, 0x00cff2000000ffff
    mov [rip + gdt3 + 0x38], rax
    lea rax, [rip + gdt3]
    mov [rip + gdt3_ptr + 2], rax
    lgdt [rip + gdt3_ptr]
    or qword ptr [rip + pml4], 4
    or qword ptr [rip + pdpt], 4
    lea rdi, [rip + pd0]
    mov ecx, 8
.Luser_pde:
    or qword ptr [rdi], 4
    add rdi, 8
    dec ecx
    jnz .Luser_pde
    mov rax, cr3
    mov cr3, rax
    set_idt_handler 0x81, ring3_return
    lea rax, [rip + idt]
    mov byte ptr [rax + 0x81 * 16 + 5], 0xEE
    ret

ring3_return:
    mov rsp, [rip + ring0_rsp]
    jmp .Lring0_again

# L2: its first instruction marks that it ran.
l2_mark:
    mov qword ptr [rip + l2_marker], 1
    vmmcall
    hlt

.align 8
gdt3_ptr:
    .word 0x3F
    .quad 0

.bss
.align 16
gdt3:           .space 64
maxphyaddr:     .space 8
ring0_rsp:      .space 8
.text
