# svm_ioio.S: I/O and MSR intercepts through L1's permission maps (AMD APM vol. 2, 15.10-15.11).
# L1 marks ports 0x70, 0x71, 0x80 and bit 0x10000 (the IOPM's third page, for accesses that run
# past port 0xFFFF) and, in the MSRPM, PAT reads, STAR writes and VM_CR reads. L2 performs one
# access per step; each intercepted one must exit *before* it happens, with EXITCODE IOIO (0x7B)
# or MSR (0x7C), the APM's EXITINFO1 encoding and (IOIO) EXITINFO2 = the next RIP. Accesses the
# maps do not mark run in L2 without an exit. Every VMRUN is logged (svm.inc) for the tests.
.include "prelude.inc"
.include "svm.inc"

.equ I1_IOIO_PROT, 1 << 27
.equ EXIT_IOIO, 0x07B
.equ MSR_PAT, 0x277
.equ MSR_STAR, 0xC0000081
.equ MSR_VM_CR, 0xC0010114

# IOIO EXITINFO1 (APM vol. 2, figure 15-2)
.equ IO_IN, 1 << 0
.equ IO_STR, 1 << 2
.equ IO_REP, 1 << 3
.equ IO_SZ8, 1 << 4
.equ IO_SZ16, 1 << 5
.equ IO_SZ32, 1 << 6
.equ IO_A64, 1 << 9
.equ IO_ASIZE_MASK, 7 << 7

# resume_at_info2: continue L2 after an IOIO exit at EXITINFO2 (the next RIP).
.macro resume_at_info2
    mov rax, [rdi + V_EXITINFO2]
    mov [rdi + V_RIP], rax
.endm

# io_step TAG, INFO1 (PORT << 16 | IO_* bits, without the address size), LABEL, NEXT, "n1", "n2", "n3", "n4": run L2
# to its next exit; check (n1) it is IOIO, (n2) EXITINFO1, (n3) the guest RIP is LABEL (the exit
# came before the instruction) and (n4) EXITINFO2 is NEXT; resume there.
.macro io_step tag, info1, label, next, n1, n2, n3, n4
    run_l2 "\tag"
    check_exit EXIT_IOIO, "\n1"
    mov rax, [rdi + V_EXITINFO1]
    and rax, -0x381                         # clear the address-size bits 9:7 (IO_ASIZE_MASK)
    mov [rip + info1_got], rax
    check_eq [info1_got], "\info1", "\n2"
    lea rax, [rip + \label]
    mov [rip + rip_want], rax
    check_eq "qword ptr [rdi + V_RIP]", [rip_want], "\n3"
    lea rax, [rip + \next]
    mov [rip + rip_want], rax
    check_eq "qword ptr [rdi + V_EXITINFO2]", [rip_want], "\n4"
    resume_at_info2
.endm

# msr_step TAG, INFO1, LABEL, "n1", "n2", "n3": an MSR exit (n1) with EXITINFO1 (n2) at LABEL
# (n3); resume after it (RDMSR/WRMSR are 2 bytes).
.macro msr_step tag, info1, label, n1, n2, n3
    run_l2 "\tag"
    check_exit EXIT_MSR, "\n1"
    check_eq "qword ptr [rdi + V_EXITINFO1]", "\info1", "\n2"
    lea rax, [rip + \label]
    mov [rip + rip_want], rax
    check_eq "qword ptr [rdi + V_RIP]", [rip_want], "\n3"
    add qword ptr [rdi + V_RIP], 2
.endm

main:
    call svm_enable
    mov ecx, MSR_STAR
    mov eax, 0x1234
    mov edx, 0x00130008
    wrmsr
    # The maps: zero, then mark what L1 wants to see.
    mov rdi, IOPM
    xor eax, eax
    mov ecx, 0x3000 / 8
    rep stosq
    mov rdi, MSRPM
    mov ecx, 0x2000 / 8
    rep stosq
    mov rdi, IOPM
    or byte ptr [rdi + 0x0E], 0x03          # ports 0x70, 0x71 (byte 0x70/8, bits 0-1)
    or byte ptr [rdi + 0x10], 0x01          # port 0x80
    or byte ptr [rdi + 0x2000], 0x01        # bit 0x10000: an access running past 0xFFFF
    mov rdi, MSRPM
    or byte ptr [rdi + 0x9D], 0x40          # PAT 0x277, read: bit 2*0x277 = byte 0x9D bit 6
    or byte ptr [rdi + 0x820], 0x08         # STAR 0xC0000081, write: byte 0x800+0x20, bit 2+1
    or byte ptr [rdi + 0x1045], 0x01        # VM_CR 0xC0010114, read: byte 0x1000+0x45, bit 0
    lea rdi, [rip + l2_entry]
    call vmcb_init
    mov rdi, VMCB
    or dword ptr [rdi + V_INTERCEPT_MISC1], I1_IOIO_PROT | I1_MSR_PROT

    io_step 1, 0x00800010, l2_out80, l2_out80_end, "OUT imm8 to 0x80 exits with IOIO", "OUT imm8 to 0x80: EXITINFO1", "OUT imm8 to 0x80: exit before the instruction", "OUT imm8 to 0x80: EXITINFO2 = next RIP"
    mov rax, [rdi + V_EXITINFO1]
    and rax, IO_ASIZE_MASK
    mov [rip + info1_got], rax
    check_eq [info1_got], IO_A64, "OUT in 64-bit code: EXITINFO1 address size A64"

    io_step 2, 0x00710021, l2_in71, l2_in71_end, "IN AX,DX from 0x71 exits with IOIO", "IN AX,DX from 0x71: EXITINFO1", "IN AX,DX from 0x71: exit before the instruction", "IN AX,DX from 0x71: EXITINFO2 = next RIP"
    check_eq "qword ptr [rdi + V_RAX]", 0x11223344, "intercepted IN left RAX untouched"

    io_step 3, 0x007E0041, l2_in7e, l2_in7e_end, "IN EAX from 0x7E exits: 0x80 is among its bytes", "IN EAX from 0x7E: EXITINFO1", "IN EAX from 0x7E: exit before the instruction", "IN EAX from 0x7E: EXITINFO2 = next RIP"
    io_step 4, 0x0080001C, l2_outs, l2_outs_end, "REP OUTSB to 0x80 exits with IOIO", "REP OUTSB: EXITINFO1 with STR and REP", "REP OUTSB: exit before the instruction", "REP OUTSB: EXITINFO2 = next RIP"
    check_eq rsi, 0x600000, "intercepted OUTS left RSI untouched"
    check_eq rcx, 5, "intercepted REP OUTS left RCX untouched"
    io_step 5, 0xFFFF0020, l2_outffff, l2_outffff_end, "OUT AX to 0xFFFF exits: the map's bit 0x10000 counts", "OUT AX to 0xFFFF: EXITINFO1", "OUT AX to 0xFFFF: exit before the instruction", "OUT AX to 0xFFFF: EXITINFO2 = next RIP"

    # Port 0x84 is not marked: L2 goes on to its VMMCALL.
    run_l2 6
    check_exit EXIT_VMMCALL, "OUT to an unmarked port does not exit"
    add qword ptr [rdi + V_RIP], 3

    msr_step 7, 0, l2_rdpat, "RDMSR PAT (read bit set) exits with MSR", "RDMSR PAT: EXITINFO1 0", "RDMSR PAT: exit before the instruction"
    msr_step 8, 1, l2_wrstar, "WRMSR STAR (write bit set) exits with MSR", "WRMSR STAR: EXITINFO1 1", "WRMSR STAR: exit before the instruction"
    run_l2 9
    check_exit EXIT_VMMCALL, "RDMSR STAR with only the write bit set does not exit"
    check_eq r12, 0x0013000800001234, "RDMSR STAR in L2 read L1's value (the WRMSR never ran)"
    add qword ptr [rdi + V_RIP], 3
    msr_step 10, 0, l2_rdvmcr, "RDMSR VM_CR (third range, read bit set) exits", "RDMSR VM_CR: EXITINFO1 0", "RDMSR VM_CR: exit before the instruction"
    msr_step 11, 0, l2_rdout, "RDMSR of an MSR outside every map range exits", "RDMSR outside the ranges: EXITINFO1 0", "RDMSR outside the ranges: exit before the instruction"

    # IOIO_PROT off: the IOPM is ignored.
    and dword ptr [rdi + V_INTERCEPT_MISC1], 0xF7FFFFFF          # clear IOIO_PROT (bit 27)
    run_l2 12
    check_exit EXIT_VMMCALL, "without IOIO_PROT, OUT to a marked port does not exit"
    ret

# ---- L2: one access per step --------------------------------------------------------------
l2_entry:
l2_out80:
    out 0x80, al
l2_out80_end:
    mov eax, 0x11223344
    mov dx, 0x71
l2_in71:
    in ax, dx
l2_in71_end:
    mov dx, 0x7E
l2_in7e:
    in eax, dx
l2_in7e_end:
    mov dx, 0x80
    mov rsi, 0x600000
    mov ecx, 5
l2_outs:
    rep outsb
l2_outs_end:
    mov dx, 0xFFFF
l2_outffff:
    out dx, ax
l2_outffff_end:
    mov dx, 0x84
    out dx, al
    vmmcall
    mov ecx, MSR_PAT
l2_rdpat:
    rdmsr
    mov ecx, MSR_STAR
    xor eax, eax
    xor edx, edx
l2_wrstar:
    wrmsr
    rdmsr64 MSR_STAR
    mov r12, rax
    vmmcall
    mov ecx, MSR_VM_CR
l2_rdvmcr:
    rdmsr
    mov ecx, 0x40000000
l2_rdout:
    rdmsr
    mov dx, 0x80
    out dx, al
    vmmcall

.bss
.align 8
info1_got:  .space 8
rip_want:   .space 8
