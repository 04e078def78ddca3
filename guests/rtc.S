# rtc.S: the RTC's interrupts on ISA IRQ 8, routed through the I/O APIC as a kernel does it:
# the periodic interrupt at the rate status A selects, the update-ended interrupt once a second,
# the alarm with don't-care bytes, status C's flags (IRQF with the enabled flag; no PF while PIE is
# off, as QEMU has it) and reading status C acknowledging the interrupt.
# Written to hold on QEMU too, whose RTC follows the host's clock: the guest waits with HLT for
# interrupts, and checks counts and flags, never how long anything took.
.include "prelude.inc"

.equ APIC, 0xfee00000
.equ APIC_EOI, 0xb0
.equ IOAPIC, 0xfec00000
.equ VEC_RTC, 0x61
.equ RTE_RTC, 0x20                           # I/O APIC redirection register of pin 8

main:
    set_idt_handler VEC_RTC, rtc_handler
    mov r15, APIC
    mov r14, IOAPIC
    mov al, 0xff                             # the 8259s stay out of it
    out 0x21, al
    out 0xa1, al
    mov dword ptr [r14], RTE_RTC + 1
    mov dword ptr [r14 + 0x10], 0
    mov dword ptr [r14], RTE_RTC
    mov dword ptr [r14 + 0x10], VEC_RTC      # fixed, edge, unmasked

    cmos_rd 0x0a
    check_eq rax, 0x26, "status A as the firmware leaves it: 32.768 kHz, 1024 Hz"
    cmos_rd 0x0c                             # clear whatever is pending
    # --- periodic interrupt, 1024 Hz ---
    cmos_wr 0x0b, 0x42                       # PIE, 24-hour, BCD
    wait_count rtc_count, 3
    check_eq "qword ptr [rtc_count]", 3, "three periodic interrupts arrive"
    mov rax, [rtc_first_c]
    check_eq rax, 0xc0, "status C in the handler: IRQF and PF"
    # --- update-ended interrupt: once a second; the 1024 Hz rate runs on with PIE off ---
    cmos_wr 0x0b, 0x12                       # UIE, PIE off
    cmos_rd 0x0c
    mov qword ptr [rtc_count], 0
    mov qword ptr [rtc_first_c], 0
    wait_count rtc_count, 1
    check_eq "qword ptr [rtc_count]", 1, "an update-ended interrupt arrives, no periodic one"
    mov rax, [rtc_first_c]
    check_eq rax, 0x90, "status C in the handler: IRQF and UF (no PF with PIE off)"
    cmos_wr 0x0a, 0x20                       # oscillator on, RS = 0: no periodic rate

    # --- alarm with every byte don't-care: due at the next update ---
    cmos_wr 0x01, 0xff
    cmos_wr 0x03, 0xff
    cmos_wr 0x05, 0xff
    cmos_wr 0x0b, 0x22                       # AIE only
    cmos_rd 0x0c
    mov qword ptr [rtc_count], 0
    mov qword ptr [rtc_first_c], 0
    wait_count rtc_count, 1
    check_eq "qword ptr [rtc_count]", 1, "the alarm interrupt arrives"
    mov rax, [rtc_first_c]
    and eax, 0xe0
    check_eq rax, 0xa0, "status C in the handler: IRQF and AF"

    cmos_wr 0x0b, 0x02
    cmos_wr 0x0a, 0x26
    cmos_rd 0x0c
    mov dword ptr [r14], RTE_RTC
    mov dword ptr [r14 + 0x10], 0x10000
    jmp report

# An interrupt that reads IRQF clear is one raised before the last reconfiguration and
# delivered after the guest cleared status C (a host-timed RTC, as QEMU's under load, can land
# it there): it is acknowledged and not counted, as a driver that checks IRQF does.
rtc_handler:
    push rax
    mov al, 0x0c
    out 0x70, al
    in al, 0x71
    movzx eax, al
    test al, 0x80
    jz .Lstale
    cmp qword ptr [rtc_first_c], 0
    jne .Lcounted
    mov [rtc_first_c], rax
.Lcounted:
    inc qword ptr [rtc_count]
.Lstale:
    mov dword ptr [r15 + APIC_EOI], 0
    pop rax
    iretq

.align 8
rtc_count:       .quad 0
rtc_first_c:     .quad 0
