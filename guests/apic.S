# apic.S: the local APIC through its xAPIC page at 0xFEE00000, as an OS uses it.
# Checks: CPUID reports an APIC; IA32_APIC_BASE holds the default base with EN and BSP; version
# 0x1X; ID 0; SVR enables the APIC; TPR reads back and sets PPR; CR8 is TPR[7:4] (reserved bits
# raise #GP: QEMU TCG takes them, tests/test_guests_qemu.py says so); a self-IPI (ICR, self
# shorthand) waits in IRR while IF=0 and is taken after STI, with its ISR bit set in the handler
# and cleared by EOI; a vector at or below the TPR class stays pending until TPR is lowered; two
# pending vectors are taken highest first; the timer in one-shot mode fires once and leaves the
# current count 0; in periodic mode it fires repeatedly and reloads its count.
# Written to hold on QEMU TCG too, whose timer runs on host time: the guest only waits for
# events (HLT with IF=1) and never checks how long anything took.
.include "prelude.inc"

.equ APIC, 0xfee00000
.equ APIC_ID, 0x20
.equ APIC_VERSION, 0x30
.equ APIC_TPR, 0x80
.equ APIC_PPR, 0xa0
.equ APIC_EOI, 0xb0
.equ APIC_SVR, 0xf0
.equ APIC_ISR, 0x100
.equ APIC_IRR, 0x200
.equ APIC_ICR_LO, 0x300
.equ APIC_ICR_HI, 0x310
.equ APIC_LVT_TIMER, 0x320
.equ APIC_TIMER_ICR, 0x380
.equ APIC_TIMER_CCR, 0x390
.equ APIC_TIMER_DCR, 0x3e0
.equ MSR_APIC_BASE, 0x1b
.equ ICR_SELF_FIXED, 0x44000               # shorthand self, level assert, fixed
.equ VEC_IPI_LO, 0x40
.equ VEC_IPI_HI, 0x60
.equ VEC_ONESHOT, 0x50
.equ VEC_PERIODIC, 0x51
.equ LVT_PERIODIC, 0x20000
.equ LVT_MASKED, 0x10000

# r15 holds the APIC page's address throughout (handlers included).
# apic_rd OFF -> eax (zero-extended into rax)
.macro apic_rd off
    mov eax, dword ptr [r15 + \off]
.endm
.macro apic_wr off, value
    mov dword ptr [r15 + \off], \value
.endm

main:
    mov r15, APIC
    # QEMU's firmware leaves the 8259 PIC routing the PIT to vector 8: mask every line, so the
    # only interrupts are the APIC's own. (svmemu has no PIC; the writes go nowhere.)
    mov al, 0xff
    out 0x21, al
    out 0xa1, al
    set_idt_handler VEC_IPI_LO, ipi_handler
    set_idt_handler VEC_IPI_HI, ipi_handler_hi
    set_idt_handler VEC_ONESHOT, oneshot_handler
    set_idt_handler VEC_PERIODIC, periodic_handler
    set_idt_handler 0xff, spurious_handler

    mov eax, 1
    cpuid
    check_mask rdx, 0x200, 0x200, "CPUID.1:EDX reports an APIC"
    mov ecx, MSR_APIC_BASE
    rdmsr
    check_mask rax, 0xfffff900, 0xfee00900, "APIC_BASE: base 0xFEE00000, enabled, BSP"
    apic_rd APIC_VERSION
    check_mask rax, 0xf0, 0x10, "version register reports an integrated APIC"
    apic_rd APIC_ID
    check_eq rax, 0, "APIC ID is 0"

    apic_wr APIC_SVR, 0x1ff                 # software enable, spurious vector 0xff
    apic_rd APIC_SVR
    check_mask rax, 0x1ff, 0x1ff, "SVR enables the APIC"
    apic_wr APIC_TPR, 0x20
    apic_rd APIC_TPR
    check_mask rax, 0xff, 0x20, "TPR reads back"
    apic_rd APIC_PPR
    check_mask rax, 0xf0, 0x20, "PPR follows TPR with nothing in service"
    apic_wr APIC_TPR, 0x30
    mov rax, cr8
    check_eq rax, 3, "CR8 reads TPR[7:4]"
    mov eax, 6
    mov cr8, rax
    apic_rd APIC_TPR
    check_mask rax, 0xff, 0x60, "CR8 writes TPR[7:4]"
    xor eax, eax
    mov cr8, rax
    apic_rd APIC_TPR
    check_eq rax, 0, "CR8 = 0 clears TPR"
    expect_fault .Lcr8_gp
    mov eax, 0x10
    mov cr8, rax
.Lcr8_gp:
    check_eq [fault_vector], 13, "CR8 write with bits 63:4 set raises #GP"

    # --- self-IPI, held while IF=0 ---
    cli
    apic_wr APIC_ICR_HI, 0
    apic_wr APIC_ICR_LO, ICR_SELF_FIXED | VEC_IPI_LO
    apic_rd APIC_IRR + 0x20                 # IRR bits 64..95
    check_mask rax, 1, 1, "self-IPI waits in IRR while IF=0"
    check_eq [ipi_count], 0, "no delivery while IF=0"
    sti
    nop
    cli
    check_eq [ipi_count], 1, "self-IPI taken after STI"
    check_eq [ipi_isr], 1, "its ISR bit is set in the handler"
    check_eq [ipi_isr_after_eoi], 0, "EOI clears the ISR bit"
    apic_rd APIC_IRR + 0x20
    check_mask rax, 1, 0, "IRR bit cleared when taken"

    # --- TPR masking ---
    apic_wr APIC_TPR, 0x40                  # class 4 masks vector 0x40
    apic_wr APIC_ICR_LO, ICR_SELF_FIXED | VEC_IPI_LO
    sti
    nop
    nop
    cli
    check_eq [ipi_count], 1, "TPR class 4 holds vector 0x40"
    apic_rd APIC_PPR
    check_mask rax, 0xf0, 0x40, "PPR is the TPR"
    apic_wr APIC_TPR, 0
    sti
    nop
    cli
    check_eq [ipi_count], 2, "lowering TPR releases it"

    # --- priority: two pending, higher vector first ---
    mov qword ptr [order_idx], 0
    apic_wr APIC_ICR_LO, ICR_SELF_FIXED | VEC_IPI_LO
    apic_wr APIC_ICR_LO, ICR_SELF_FIXED | VEC_IPI_HI
    sti
    nop
    nop
    cli
    check_eq [order], VEC_IPI_HI, "the higher vector is taken first"
    check_eq [order + 8], VEC_IPI_LO, "the lower one after its EOI"

    # --- timer, one-shot ---
    apic_wr APIC_TIMER_DCR, 0xb             # divide by 1
    apic_wr APIC_LVT_TIMER, VEC_ONESHOT
    apic_wr APIC_TIMER_ICR, 20000
.Loneshot_wait:
    sti
    hlt
    cli
    cmp qword ptr [oneshot_count], 0
    je .Loneshot_wait
    check_eq [oneshot_count], 1, "one-shot timer fired"
    apic_rd APIC_TIMER_CCR
    check_eq rax, 0, "current count is 0 after a one-shot expiry"

    # --- timer, periodic ---
    apic_wr APIC_LVT_TIMER, LVT_PERIODIC | VEC_PERIODIC
    apic_wr APIC_TIMER_ICR, 20000
    apic_rd APIC_TIMER_CCR
    mov [ccr_running], rax
.Lperiodic_wait:
    sti
    hlt
    cli
    cmp qword ptr [periodic_count], 3
    jb .Lperiodic_wait
    apic_wr APIC_TIMER_ICR, 0               # stop
    # An expiry already in IRR when the handler masked the timer may still arrive on QEMU.
    mov rax, [periodic_count]
    cmp rax, 3
    setae al
    movzx eax, al
    check_eq rax, 1, "periodic timer fired (at least) three times"
    check_ne [ccr_running], 0, "current count runs down from the initial count"
    mov rax, [ccr_after]
    cmp rax, 20000
    setbe al
    movzx eax, al
    check_eq rax, 1, "periodic count reloads (at most the initial count)"
    check_ne [ccr_after], 0, "periodic count is not 0 after expiries"
    check_eq [oneshot_count], 1, "one-shot timer never fired again"
    check_eq [spurious_count], 0, "no spurious interrupts"
    ret

ipi_handler:
    push rax
    inc qword ptr [ipi_count]
    mov rax, [order_idx]
    mov qword ptr [order + rax * 8], VEC_IPI_LO
    inc qword ptr [order_idx]
    apic_rd APIC_ISR + 0x20
    and eax, 1
    mov [ipi_isr], rax
    apic_wr APIC_EOI, 0
    apic_rd APIC_ISR + 0x20
    and eax, 1
    mov [ipi_isr_after_eoi], rax
    pop rax
    iretq

ipi_handler_hi:
    push rax
    mov rax, [order_idx]
    mov qword ptr [order + rax * 8], VEC_IPI_HI
    inc qword ptr [order_idx]
    apic_wr APIC_EOI, 0
    pop rax
    iretq

oneshot_handler:
    inc qword ptr [oneshot_count]
    apic_wr APIC_EOI, 0
    iretq

# On the third expiry the handler samples the count (just reloaded) and masks the timer, so the
# checks do not depend on how fast the guest runs (QEMU's APIC timer follows the wall clock).
periodic_handler:
    push rax
    inc qword ptr [periodic_count]
    cmp qword ptr [periodic_count], 3
    jne .Lperiodic_eoi
    apic_rd APIC_TIMER_CCR
    mov [ccr_after], rax
    apic_wr APIC_LVT_TIMER, LVT_MASKED | VEC_PERIODIC
.Lperiodic_eoi:
    apic_wr APIC_EOI, 0
    pop rax
    iretq

spurious_handler:
    inc qword ptr [spurious_count]
    iretq

.bss
ipi_count:          .space 8
ipi_isr:            .space 8
ipi_isr_after_eoi:  .space 8
order_idx:          .space 8
order:              .space 32
oneshot_count:      .space 8
periodic_count:     .space 8
spurious_count:     .space 8
ccr_running:        .space 8
ccr_after:          .space 8
.text
