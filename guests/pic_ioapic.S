# pic_ioapic.S: the PC's interrupt controllers and timer as a kernel programs them: the 8259 pair
# (state SeaBIOS leaves, ICW remap, OCW1 masks, IRR/ISR reads, non-specific and specific EOI, the
# cascade on IRQ2, edge latching while masked, the ELCR), delivered through the local APIC's
# LINT0 virtual wire (ExtINT); the I/O APIC (version, redirection entries and their read-only
# bits, the PIT on pin 2, level-triggered Remote IRR cleared by the local APIC's EOI broadcast
# or the EOI register, redelivery while the line stays high, NMI delivery, edges lost while
# masked); and the 8254 PIT (latch command, read-back status, lobyte access, channel 2 gated
# through port 0x61 with OUT2 on bit 5).
# Device interrupt lines are driven through QEMU's pc-testdev (ports 0x2000 + line), which
# kvm-unit-tests uses the same way; QEMU needs `-device pc-testdev` for this guest.
# Written to hold on QEMU too, whose clocks follow the host: the guest waits for events and
# bounds its polling loops generously, and never checks how long anything took.
.include "prelude.inc"

.equ APIC, 0xfee00000
.equ APIC_EOI, 0xb0
.equ APIC_ISR, 0x100
.equ APIC_TMR, 0x180
.equ APIC_IRR, 0x200
.equ APIC_LVT_LINT0, 0x350
.equ IOAPIC, 0xfec00000
.equ TESTDEV_IRQ, 0x2000
.equ VEC_MASTER, 0x20
.equ VEC_SLAVE, 0x28
.equ VEC_PIT, 0x40
.equ VEC_LEVEL, 0x50
.equ VEC_EOIREG, 0x58
.equ VEC_MASKED, 0x5c
# ISA lines driven through the testdev with the 8259s masked, for I/O APIC pins 5 (level),
# 3 (EOI register), 13 (NMI), 15 (masked edge): redirection registers 0x1A, 0x16, 0x2A, 0x2E.
# (QEMU 7.2's pc-testdev aborts on lines 16-23.)
.equ RTE_MASKED, 0x10000
.equ RTE_LEVEL, 0x8000
.equ RTE_REMOTE_IRR, 0x4000

# r15 = local APIC page, r14 = I/O APIC (handlers rely on both).
.macro ioapic_wr reg, value
    mov dword ptr [r14], \reg
    mov eax, \value
    mov dword ptr [r14 + 0x10], eax
.endm
.macro ioapic_rd reg
    mov dword ptr [r14], \reg
    mov eax, dword ptr [r14 + 0x10]
.endm
.macro outb port, value
    mov al, \value
    out \port, al
.endm
.macro inb port
    xor eax, eax
    in al, \port
.endm
.macro line n, level
    mov dx, 0x2000 + \n
    mov al, \level
    out dx, al
.endm
# rax = 1 if \a < \b (unsigned), else 0
.macro below a, b
    mov rax, \a
    cmp rax, \b
    setb al
    movzx eax, al
.endm

main:
    mov r15, APIC
    mov r14, IOAPIC
    set_idt_handler 2, nmi_handler
    set_idt_handler VEC_MASTER, irq0_handler
    set_idt_handler VEC_MASTER + 7, spurious_handler
    set_idt_handler VEC_SLAVE + 4, irq12_handler
    set_idt_handler VEC_SLAVE + 7, spurious_handler
    set_idt_handler VEC_PIT, pit_handler
    set_idt_handler VEC_LEVEL, level_handler
    set_idt_handler VEC_EOIREG, eoireg_handler
    set_idt_handler VEC_MASKED, masked_handler

    # --- what the firmware leaves ---
    inb 0x21
    check_eq rax, 0xb8, "master mask at entry is 0xB8 (timer, keyboard, cascade unmasked)"
    inb 0xa1
    check_eq rax, 0x8e, "slave mask at entry is 0x8E"
    mov dx, 0x4d1
    xor eax, eax
    in al, dx
    check_eq rax, 0x0c, "ELCR: IRQ10 and IRQ11 level-triggered"
    mov dx, 0x4d0
    mov al, 0xff
    out dx, al
    xor eax, eax
    in al, dx
    check_eq rax, 0xf8, "ELCR bits of IRQ0-2 stay 0"
    xor eax, eax
    out dx, al
    mov eax, [r15 + APIC_LVT_LINT0]
    check_eq rax, 0x8700, "LINT0 is the 8259's virtual wire (ExtINT)"

    # --- remap: ICW1-4 ---
    outb 0x20, 0x11
    outb 0xa0, 0x11
    outb 0x21, VEC_MASTER
    outb 0xa1, VEC_SLAVE
    outb 0x21, 4
    outb 0xa1, 2
    outb 0x21, 1
    outb 0xa1, 1
    outb 0x21, 0xff
    outb 0xa1, 0xff
    inb 0x21
    check_eq rax, 0xff, "OCW1 mask reads back"

    # --- PIT channel 0, mode 2, 1193 (about 1 kHz); IRQ0 masked: the edge waits in IRR ---
    outb 0x43, 0x34
    outb 0x40, 0xa9
    outb 0x40, 0x04
    mov ecx, 1000000
.Lirr_wait:
    outb 0x43, 0x00                         # latch channel 0 (and let time pass)
    inb 0x40
    inb 0x40
    outb 0x20, 0x0a                         # OCW3: read IRR
    inb 0x20
    test al, 1
    jnz .Lirr_seen
    dec ecx
    jnz .Lirr_wait
.Lirr_seen:
    and eax, 1
    check_eq rax, 1, "a PIT edge is latched in IRR while IRQ0 is masked"
    outb 0x20, 0x0b                         # OCW3: read ISR
    inb 0x20
    check_eq rax, 0, "nothing in service while masked"

    outb 0x21, 0xfe                         # unmask IRQ0
    sti
    hlt
    cli
    check_ne [irq0_count], 0, "IRQ0 arrives through LINT0 (ExtINT) as vector 0x20"
    check_eq [irq0_isr], 1, "IRQ0 is in service in its handler"
    check_eq [irq0_apic_isr], 0, "an ExtINT leaves the local APIC's ISR clear"
    outb 0x20, 0x0b
    inb 0x20
    check_eq rax, 0, "non-specific EOI ends the service"
    mov qword ptr [irq0_specific], 1
    mov rbx, [irq0_count]
    sti
    hlt
    cli
    check_ne [irq0_count], rbx, "IRQ0 again after the EOI"
    outb 0x20, 0x0b
    inb 0x20
    check_eq rax, 0, "specific EOI (0x60) ends the service"
    outb 0x21, 0xff

    # --- cascade: ISA IRQ12 on the slave, through the master's IRQ2 ---
    outb 0x21, 0xfb
    outb 0xa1, 0xef
    line 12, 1
    outb 0xa0, 0x0a
    inb 0xa0
    check_eq rax, 0x10, "IRQ12 latched in the slave's IRR"
    outb 0x20, 0x0a
    inb 0x20
    check_mask rax, 0x04, 0x04, "the slave raises the master's IRQ2"
    sti
    nop
    cli
    check_eq [irq12_count], 1, "IRQ12 arrives as vector 0x2C"
    check_eq [irq12_isr], 0x0410, "slave ISR bit 4 and master ISR bit 2 in service"
    outb 0xa0, 0x0b
    inb 0xa0
    mov rbx, rax
    outb 0x20, 0x0b
    inb 0x20
    or rax, rbx
    check_eq rax, 0, "EOIs to both chips end the service"
    outb 0xa1, 0xff                         # masked on the slave: held in IRR
    line 12, 1
    sti
    nop
    cli
    check_eq [irq12_count], 1, "a masked IRQ12 waits"
    outb 0xa1, 0xef
    sti
    nop
    cli
    check_eq [irq12_count], 2, "unmasking delivers the latched IRQ12"
    outb 0x21, 0xff
    outb 0xa1, 0xff

    # --- I/O APIC registers ---
    ioapic_rd 1
    check_eq rax, 0x170020, "I/O APIC version 0x20, 24 entries"
    ioapic_rd 0
    check_eq rax, 0, "I/O APIC ID 0"
    ioapic_rd 0x14
    check_eq rax, RTE_MASKED, "entry 2 masked at entry"
    ioapic_wr 0x14, 0x17040                 # with Remote IRR and delivery status set
    ioapic_rd 0x14
    check_eq rax, 0x12040, "Remote IRR and delivery status are read-only"
    ioapic_wr 0x15, 0xff000000
    ioapic_rd 0x15
    check_eq rax, 0xff000000, "the destination field reads back"

    # --- the PIT through I/O APIC pin 2 (the override of ISA IRQ0) ---
    ioapic_wr 0x15, 0
    ioapic_wr 0x14, VEC_PIT
    sti
    hlt
    cli
    ioapic_wr 0x14, RTE_MASKED | VEC_PIT
    check_ne [pit_count], 0, "the PIT reaches I/O APIC pin 2 as vector 0x40"
    check_eq [pit_apic_isr], 1, "vector 0x40 in service in the local APIC"
    check_eq [pit_tmr], 0, "an edge-triggered vector leaves TMR clear"

    # --- level-triggered: Remote IRR, EOI broadcast, redelivery while the line is high ---
    ioapic_wr 0x1a, RTE_LEVEL | VEC_LEVEL
    line 5, 1
    ioapic_rd 0x1a
    check_mask rax, RTE_REMOTE_IRR, RTE_REMOTE_IRR, "delivery sets Remote IRR"
    mov eax, [r15 + APIC_IRR + 0x20]
    check_mask rax, 0x10000, 0x10000, "vector 0x50 waits in the local APIC's IRR"
    sti
    nop
    cli
    check_eq [level_count], 2, "the line still high at EOI delivers again"
    check_eq [level_tmr], 1, "a level-triggered vector sets TMR"
    ioapic_rd 0x1a
    check_mask rax, RTE_REMOTE_IRR, 0, "the local APIC's EOI clears Remote IRR"

    ioapic_wr 0x16, RTE_LEVEL | VEC_EOIREG
    line 3, 1
    sti
    nop
    cli
    check_eq [eoireg_count], 1, "level-triggered vector 0x58 delivered"
    check_eq [eoireg_rirr], 0, "the EOI register (version 0x20) clears Remote IRR"

    # --- NMI delivery mode ---
    ioapic_wr 0x2a, 0x400
    line 13, 1
    mov ecx, 100000
.Lnmi_wait:
    cmp qword ptr [nmi_count], 0
    jne .Lnmi_seen
    dec ecx
    jnz .Lnmi_wait
.Lnmi_seen:
    check_eq [nmi_count], 1, "NMI delivery mode raises an NMI (IF=0)"
    line 13, 0

    # --- an edge on a masked pin is lost ---
    ioapic_wr 0x2e, RTE_MASKED | VEC_MASKED
    line 15, 1
    line 15, 0
    ioapic_wr 0x2e, VEC_MASKED
    sti
    nop
    cli
    check_eq [masked_count], 0, "an edge on a masked pin is lost"

    # --- the PIT's registers ---
    outb 0x43, 0x34                         # channel 0, lobyte/hibyte, mode 2, 0xFFFF
    outb 0x40, 0xff
    outb 0x40, 0xff
    outb 0x43, 0x00
    inb 0x40
    mov r8, rax
    inb 0x40
    shl eax, 8
    or r8, rax
    outb 0x43, 0x00
    inb 0x40
    mov r9, rax
    inb 0x40
    shl eax, 8
    or r9, rax
    below r9, r8
    check_eq rax, 1, "the latched count runs down"
    outb 0x61, 0x00                         # gate 2 low
    outb 0x43, 0xb0                         # channel 2, lobyte/hibyte, mode 0
    outb 0x42, 0xe8
    outb 0x42, 0x03                         # 1000 (about 0.84 ms)
    outb 0x43, 0xe8                         # read-back: status of channel 2
    inb 0x42
    check_mask rax, 0x3f, 0x30, "read-back status: lobyte/hibyte, mode 0, binary"
    inb 0x61
    check_mask rax, 0x21, 0x00, "port 0x61: gate 2 low, OUT2 low after the count is written"
    outb 0x61, 0x01
    mov ecx, 10000000
.Lout2_wait:
    inb 0x61
    test al, 0x20
    jnz .Lout2_seen
    dec ecx
    jnz .Lout2_wait
.Lout2_seen:
    check_mask rax, 0x21, 0x21, "OUT2 rises at terminal count (port 0x61 bit 5), gate reads back"
    outb 0x43, 0x94                         # channel 2, lobyte only, mode 2
    outb 0x42, 0x80
    inb 0x42
    mov rbx, rax
    below rbx, 0x81
    check_eq rax, 1, "lobyte access reads the low byte of the count"
    outb 0x43, 0xb6                         # channel 2, mode 3
    outb 0x42, 0x00
    outb 0x42, 0x20
    outb 0x43, 0xe8
    inb 0x42
    check_mask rax, 0x0e, 0x06, "read-back status reports mode 3"
    outb 0x61, 0x00
    check_eq [spurious_count], 0, "no spurious interrupts"
    ret

irq0_handler:
    push rax
    inc qword ptr [irq0_count]
    outb 0x20, 0x0b
    inb 0x20
    and eax, 1
    mov [irq0_isr], rax
    mov eax, [r15 + APIC_ISR + 0x10]        # vectors 32-63
    and eax, 1
    mov [irq0_apic_isr], rax
    cmp qword ptr [irq0_specific], 0
    jne .Lirq0_specific
    outb 0x20, 0x20                         # non-specific EOI
    pop rax
    iretq
.Lirq0_specific:
    outb 0x20, 0x60                         # specific EOI, IRQ0
    pop rax
    iretq

irq12_handler:
    push rax
    push rbx
    push rdx
    inc qword ptr [irq12_count]
    outb 0xa0, 0x0b
    inb 0xa0
    mov rbx, rax
    outb 0x20, 0x0b
    inb 0x20
    shl eax, 8
    or rax, rbx
    mov [irq12_isr], rax
    line 12, 0
    outb 0xa0, 0x20
    outb 0x20, 0x20
    pop rdx
    pop rbx
    pop rax
    iretq

pit_handler:
    push rax
    inc qword ptr [pit_count]
    mov eax, [r15 + APIC_ISR + 0x20]        # vectors 64-95
    and eax, 1
    mov [pit_apic_isr], rax
    mov eax, [r15 + APIC_TMR + 0x20]
    and eax, 1
    mov [pit_tmr], rax
    mov dword ptr [r15 + APIC_EOI], 0
    pop rax
    iretq

# First delivery: EOI with the line still high (delivered again); second: lower it first.
level_handler:
    push rax
    push rdx
    inc qword ptr [level_count]
    mov eax, [r15 + APIC_TMR + 0x20]        # vector 0x50 is bit 16 of vectors 64-95
    shr eax, 16
    and eax, 1
    mov [level_tmr], rax
    cmp qword ptr [level_count], 2
    jb .Llevel_eoi
    line 5, 0
.Llevel_eoi:
    mov dword ptr [r15 + APIC_EOI], 0
    pop rdx
    pop rax
    iretq

eoireg_handler:
    push rax
    push rdx
    inc qword ptr [eoireg_count]
    line 3, 0
    mov dword ptr [r14 + 0x40], VEC_EOIREG
    ioapic_rd 0x16
    and eax, RTE_REMOTE_IRR
    mov [eoireg_rirr], rax
    mov dword ptr [r15 + APIC_EOI], 0
    pop rdx
    pop rax
    iretq

nmi_handler:
    inc qword ptr [nmi_count]
    iretq

masked_handler:
    inc qword ptr [masked_count]
    mov dword ptr [r15 + APIC_EOI], 0
    iretq

spurious_handler:
    inc qword ptr [spurious_count]
    iretq

.bss
irq0_count:     .space 8
irq0_isr:       .space 8
irq0_apic_isr:  .space 8
irq0_specific:  .space 8
irq12_count:    .space 8
irq12_isr:      .space 8
pit_count:      .space 8
pit_apic_isr:   .space 8
pit_tmr:        .space 8
level_count:    .space 8
level_tmr:      .space 8
eoireg_count:   .space 8
eoireg_rirr:    .space 8
nmi_count:      .space 8
masked_count:   .space 8
spurious_count: .space 8
.text
