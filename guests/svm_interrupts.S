# svm_interrupts.S: interrupts around an L2 guest (AMD APM vol. 2, 15.21), with the local APIC's
# self-IPIs as the physical interrupt source.  L2 shares L1's IDT and memory; handlers record
# whether they ran in L2 (in_l2 is 1 while L2 code runs).
#  * GIF: a self-IPI pending while L1 has IF=1 but GIF=0 (CLGI) is held; VMRUN sets GIF=1, and
#    with INTR intercepted and V_INTR_MASKING=1 the interrupt exits with #VMEXIT(INTR) before
#    L2's first instruction; GIF=0 after the exit holds it again until STGI, then L1 takes it.
#  * V_INTR_MASKING=1 with the host's IF=0 masks physical interrupts in L2 even when L2 sets IF.
#  * Not intercepted and V_INTR_MASKING=0: the interrupt is delivered through L2's IDT.
#  * V_IRQ: a virtual interrupt is delivered to L2 when it sets IF, and V_IRQ reads back clear;
#    with the VINTR intercept it exits with #VMEXIT(VINTR) instead and V_IRQ stays set;
#    V_INTR_PRIO not above V_TPR holds it (unless V_IGN_TPR).
#  * CR8 in L2 is the APIC's TPR without V_INTR_MASKING, and V_TPR (stored back by #VMEXIT) with it.
#  * NMI (a self-NMI through the ICR): taken with IF=0, held by GIF=0, #VMEXIT(NMI) when
#    intercepted (and still pending afterwards: STGI lets L1 take it).
# Every check also passes on QEMU 7.2 TCG.
.include "prelude.inc"
.include "svm.inc"

.equ APIC, 0xfee00000
.equ APIC_TPR, 0x80
.equ APIC_EOI, 0xb0
.equ APIC_SVR, 0xf0
.equ APIC_ICR_LO, 0x300
.equ ICR_SELF_FIXED, 0x44000
.equ VEC_PHYS, 0x40
.equ VEC_VIRT, 0x50
.equ V_VINTR, 0x060                         # V_TPR 7:0, V_IRQ 8, V_INTR_PRIO 19:16,
.equ VI_IRQ, 1 << 8                         # V_IGN_TPR 20, V_INTR_MASKING 24, vector 39:32
.equ VI_IGN_TPR, 1 << 20
.equ VI_MASKING, 1 << 24
.equ I1_VINTR, 1 << 4
.equ EXIT_INTR, 0x60
.equ EXIT_VINTR, 0x64
.equ EXIT_NMI, 0x61
.equ ICR_SELF_NMI, 0x44400                  # shorthand self, level assert, NMI

# vintr_setup VALUE_LOW32: V_INTR fields, vector VEC_VIRT.
.macro vintr_setup low
    mov dword ptr [rdi + V_VINTR], \low
    mov dword ptr [rdi + V_VINTR + 4], VEC_VIRT
.endm

main:
    mov al, 0xff                            # QEMU: mask the 8259 (PIT on vector 8)
    out 0x21, al
    out 0xa1, al
    mov r15, APIC                           # L2 shares r15 (VMRUN does not switch it)
    mov dword ptr [r15 + APIC_SVR], 0x1ff
    set_idt_handler VEC_PHYS, phys_handler
    set_idt_handler VEC_VIRT, virt_handler
    call svm_enable

    # ---- GIF and the INTR intercept
    lea rdi, [rip + l2_spin]
    call vmcb_init
    mov rdi, VMCB
    or dword ptr [rdi + V_INTERCEPT_MISC1], I1_INTR
    vintr_setup VI_MASKING
    cli
    mov dword ptr [r15 + APIC_ICR_LO], ICR_SELF_FIXED | VEC_PHYS
    clgi
    sti
    nop
    nop
    check_eq [phys_count], 0, "GIF=0 holds a pending interrupt although IF=1"
    run_l2 1
    check_exit EXIT_INTR, "VMRUN with the interrupt pending exits with INTR"
    lea rax, [rip + l2_spin]
    check_eq "qword ptr [rdi + V_RIP]", rax, "the INTR exit comes before L2's first instruction"
    check_eq "qword ptr [rdi + V_EXITINTINFO]", 0, "EXITINTINFO is 0 for the INTR exit"
    nop
    nop
    check_eq [phys_count], 0, "GIF=0 after #VMEXIT still holds it"
    stgi
    nop
    nop
    cli
    check_eq [phys_count], 1, "STGI lets L1 take it"
    check_eq [seen_in_l2], 0, "taken in L1 after STGI"

    # ---- V_INTR_MASKING=1 and host IF=0: L2's IF does not let physical interrupts in
    lea rdi, [rip + l2_sti]
    call vmcb_init
    mov rdi, VMCB
    or dword ptr [rdi + V_INTERCEPT_MISC1], I1_INTR
    vintr_setup VI_MASKING
    mov dword ptr [r15 + APIC_ICR_LO], ICR_SELF_FIXED | VEC_PHYS
    run_l2 2                                # IF=0 here: HIF=0
    check_exit EXIT_VMMCALL, "host IF=0 masks the interrupt in L2 (no INTR exit)"
    check_eq [phys_count], 1, "and L2 did not take it"
    stgi
    sti
    nop
    nop
    cli
    check_eq [phys_count], 2, "L1 takes it once IF=1"
    check_eq [seen_in_l2], 0, "taken in L1 after STI"

    # ---- not intercepted, V_INTR_MASKING=0: through L2's IDT when L2 sets IF
    lea rdi, [rip + l2_sti]
    call vmcb_init
    mov rdi, VMCB
    mov dword ptr [r15 + APIC_ICR_LO], ICR_SELF_FIXED | VEC_PHYS
    run_l2 3
    check_exit EXIT_VMMCALL, "physical interrupt without INTR intercept: L2 ran to VMMCALL"
    check_eq [phys_count], 3, "L2 took the physical interrupt"
    check_eq [seen_in_l2], 1, "physical interrupt through L2's IDT"
    stgi

    # ---- V_IRQ: a virtual interrupt delivered to L2
    lea rdi, [rip + l2_sti]
    call vmcb_init
    mov rdi, VMCB
    vintr_setup VI_MASKING | VI_IGN_TPR | VI_IRQ
    run_l2 4
    check_exit EXIT_VMMCALL, "V_IRQ: L2 ran to VMMCALL"
    check_eq [virt_count], 1, "V_IRQ delivered V_INTR_VECTOR to L2"
    check_eq [seen_in_l2], 1, "virtual interrupt through L2's IDT"
    check_mask "qword ptr [rdi + V_VINTR]", VI_IRQ, 0, "V_IRQ reads back clear once taken"
    stgi

    # ---- V_IRQ with the VINTR intercept
    lea rdi, [rip + l2_sti]
    call vmcb_init
    mov rdi, VMCB
    or dword ptr [rdi + V_INTERCEPT_MISC1], I1_VINTR
    vintr_setup VI_MASKING | VI_IGN_TPR | VI_IRQ
    run_l2 5
    check_exit EXIT_VINTR, "VINTR intercept: #VMEXIT(VINTR) when L2 sets IF"
    check_eq [virt_count], 1, "the virtual interrupt was not delivered"
    check_mask "qword ptr [rdi + V_VINTR]", VI_IRQ, VI_IRQ, "V_IRQ stays set"
    stgi

    # ---- V_TPR: priority 2 under V_TPR 5 is held; under V_TPR 1 it is taken
    lea rdi, [rip + l2_sti]
    call vmcb_init
    mov rdi, VMCB
    vintr_setup VI_MASKING | VI_IRQ | (2 << 16) | 5
    run_l2 6
    check_exit EXIT_VMMCALL, "V_TPR: L2 ran to VMMCALL"
    check_eq [virt_count], 1, "V_INTR_PRIO 2 is held by V_TPR 5"
    check_mask "qword ptr [rdi + V_VINTR]", VI_IRQ, VI_IRQ, "V_IRQ still pending under V_TPR"
    stgi
    lea rdi, [rip + l2_sti]
    call vmcb_init
    mov rdi, VMCB
    vintr_setup VI_MASKING | VI_IRQ | (2 << 16) | 1
    run_l2 7
    check_eq [virt_count], 2, "V_INTR_PRIO 2 is taken under V_TPR 1"
    stgi

    # ---- NMI: IF does not mask it, GIF=0 holds it, the NMI intercept exits with it
    set_idt_handler 2, nmi_handler
    cli
    mov dword ptr [r15 + APIC_ICR_LO], ICR_SELF_NMI
    jmp .Lnmi1                              # end the block: QEMU looks at interrupts here
.Lnmi1:
    check_eq [nmi_count], 1, "a self-NMI is taken with IF=0"
    clgi
    mov dword ptr [r15 + APIC_ICR_LO], ICR_SELF_NMI
    jmp .Lnmi2
.Lnmi2:
    check_eq [nmi_count], 1, "GIF=0 holds the NMI"
    lea rdi, [rip + l2_spin]
    call vmcb_init
    mov rdi, VMCB
    or dword ptr [rdi + V_INTERCEPT_MISC1], I1_NMI
    run_l2 8
    check_exit EXIT_NMI, "VMRUN with an NMI pending exits with NMI"
    check_eq [nmi_count], 1, "the NMI exit does not deliver it"
    stgi
    jmp .Lnmi3
.Lnmi3:
    check_eq [nmi_count], 2, "STGI lets L1 take the NMI"

    # ---- CR8 in L2: the APIC's TPR without V_INTR_MASKING, V_TPR with it
    lea rdi, [rip + l2_cr8]
    call vmcb_init
    mov rdi, VMCB
    run_l2 9
    check_eq [l2_cr8_read], 3, "L2 without V_INTR_MASKING reads back its CR8"
    mov eax, [r15 + APIC_TPR]
    check_eq rax, 0x30, "and its CR8 write reached the APIC's TPR"
    mov dword ptr [r15 + APIC_TPR], 0
    stgi
    lea rdi, [rip + l2_cr8]
    call vmcb_init
    mov rdi, VMCB
    vintr_setup VI_MASKING
    run_l2 10
    check_eq [l2_cr8_read], 3, "L2 with V_INTR_MASKING reads back its CR8"
    check_mask "qword ptr [rdi + V_VINTR]", 0xff, 3, "which #VMEXIT stores in V_TPR"
    mov eax, [r15 + APIC_TPR]
    check_eq rax, 0, "and the APIC's TPR is untouched"
    stgi
    ret

# ---- L2 code
l2_spin:                                    # never runs when the INTR exit comes first
    mov qword ptr [rip + in_l2], 1
    mov ecx, 1000000
.Lspin:
    dec ecx
    jnz .Lspin
    mov qword ptr [rip + in_l2], 0
    vmmcall

l2_cr8:
    mov eax, 3
    mov cr8, rax
    mov rax, cr8
    mov [rip + l2_cr8_read], rax
    vmmcall

l2_sti:
    mov qword ptr [rip + in_l2], 1
    sti
    nop
    nop
    nop
    cli
    mov qword ptr [rip + in_l2], 0
    vmmcall

# ---- handlers (L1's IDT, shared with L2)
phys_handler:
    push rax
    inc qword ptr [rip + phys_count]
    mov rax, [rip + in_l2]
    mov [rip + seen_in_l2], rax
    mov dword ptr [r15 + APIC_EOI], 0
    pop rax
    iretq

nmi_handler:
    inc qword ptr [rip + nmi_count]
    iretq

virt_handler:
    push rax
    inc qword ptr [rip + virt_count]
    mov rax, [rip + in_l2]
    mov [rip + seen_in_l2], rax
    pop rax
    iretq

.bss
in_l2:          .space 8
seen_in_l2:     .space 8
phys_count:     .space 8
virt_count:     .space 8
nmi_count:      .space 8
l2_cr8_read:    .space 8
.text
