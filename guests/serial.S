# serial.S: COM1 as a driver finds it: the loopback self-test most kernels run before trusting
# the port (MCR loopback, a byte sent comes back, LSR.DR, MSR mirroring the modem outputs),
# then interrupt-driven transmit on ISA IRQ 4 through the I/O APIC (IER.ETBEI raises a THR-empty
# interrupt at once, IIR reports it and reading IIR acknowledges it, every byte sent raises it
# again, receive data outranks it in IIR, FCR clears the receiver).
.include "prelude.inc"

.equ COM1, 0x3f8
.equ APIC, 0xfee00000
.equ APIC_EOI, 0xb0
.equ IOAPIC, 0xfec00000
.equ VEC_COM1, 0x60
.equ RTE_COM1, 0x18                          # I/O APIC redirection register of pin 4

.macro outb port, value
    mov dx, \port
    mov al, \value
    out dx, al
.endm
.macro inb port
    mov dx, \port
    xor eax, eax
    in al, dx
.endm
# Let one pending interrupt in, if any.
.macro window
    sti
    nop
    nop
    cli
.endm

main:
    set_idt_handler VEC_COM1, com1_handler
    mov r15, APIC
    mov r14, IOAPIC
    mov al, 0xff                             # the 8259s stay out of it (the PIT's IRQ 0
    out 0x21, al                             # would otherwise land in the windows)
    out 0xa1, al
    lea rbx, [results]                       # measured first, checked once the port prints again

    # --- loopback self-test (as an OS's serial init runs it) ---
    outb COM1 + 4, 0x1e                      # loopback, RTS, OUT1, OUT2
    inb COM1 + 5
    mov [rbx + 0], rax
    outb COM1, 0xae
    inb COM1 + 5
    mov [rbx + 8], rax
    inb COM1 + 6
    mov [rbx + 16], rax
    inb COM1
    mov [rbx + 24], rax
    inb COM1 + 5
    mov [rbx + 32], rax
    outb COM1 + 4, 0x0f                      # normal operation, DTR RTS OUT1 OUT2
    inb COM1 + 6
    mov [rbx + 40], rax

    # --- interrupt-driven transmit on IRQ 4 through the I/O APIC ---
    mov dword ptr [r14], RTE_COM1 + 1
    mov dword ptr [r14 + 0x10], 0            # destination APIC 0
    mov dword ptr [r14], RTE_COM1
    mov dword ptr [r14 + 0x10], VEC_COM1     # fixed, edge, unmasked
    inb COM1 + 2
    mov [rbx + 48], rax
    outb COM1 + 1, 0x02                      # ETBEI
    window
    mov rax, [com1_count]
    mov [rbx + 56], rax
    mov rax, [com1_iir]
    mov [rbx + 104], rax
    inb COM1 + 2
    mov [rbx + 64], rax
    window
    mov rax, [com1_count]
    mov [rbx + 72], rax
    outb COM1 + 4, 0x1f                      # loopback again: the byte stays inside the UART
    outb COM1, 0x55
    window
    mov rax, [com1_count]
    mov [rbx + 80], rax
    outb COM1 + 1, 0x03                      # and received data available
    inb COM1 + 2
    mov [rbx + 88], rax
    outb COM1 + 2, 0x03                      # FIFO on, receiver cleared
    inb COM1 + 5
    mov [rbx + 96], rax
    outb COM1 + 1, 0
    outb COM1 + 2, 0
    outb COM1 + 4, 0x0f
    window
    mov dword ptr [r14], RTE_COM1
    mov dword ptr [r14 + 0x10], 0x10000      # masked again

    mov rax, [rbx + 0]
    and eax, 1
    check_eq rax, 0, "loopback: LSR.DR clear before a byte is sent"
    mov rax, [rbx + 8]
    and eax, 0x61
    check_eq rax, 0x61, "loopback: LSR reports data ready, THR and transmitter empty"
    check_eq "qword ptr [rbx + 16]", 0xd0, "loopback: MSR mirrors OUT2->DCD, OUT1->RI, RTS->CTS"
    check_eq "qword ptr [rbx + 24]", 0xae, "loopback: the byte sent is received"
    mov rax, [rbx + 32]
    and eax, 1
    check_eq rax, 0, "loopback: reading RBR clears LSR.DR"
    mov rax, [rbx + 40]
    and eax, 0xf0
    check_eq rax, 0xb0, "normal: MSR shows carrier, DSR and CTS"
    mov rax, [rbx + 48]
    and eax, 0x0f
    check_eq rax, 1, "IIR: no interrupt while IER is 0"
    check_eq "qword ptr [rbx + 56]", 1, "enabling ETBEI with THR empty interrupts at once"
    check_eq "qword ptr [rbx + 104]", 2, "the handler's IIR read names THR empty"
    mov rax, [rbx + 64]
    and eax, 0x0f
    check_eq rax, 1, "reading IIR acknowledged it"
    check_eq "qword ptr [rbx + 72]", 1, "no second interrupt without a new byte"
    check_eq "qword ptr [rbx + 80]", 2, "a byte sent raises THR empty again"
    mov rax, [rbx + 88]
    and eax, 0x0f
    check_eq rax, 4, "IIR: received data outranks THR empty"
    mov rax, [rbx + 96]
    and eax, 1
    check_eq rax, 0, "FCR bit 1 clears the receiver"
    jmp report

com1_handler:
    push rax
    push rdx
    inc qword ptr [com1_count]
    mov dx, COM1 + 2
    xor eax, eax
    in al, dx
    and eax, 0x0f
    mov [com1_iir], rax
    mov dword ptr [r15 + APIC_EOI], 0
    pop rdx
    pop rax
    iretq

.align 8
com1_count: .quad 0
com1_iir:   .quad 0
results:    .space 14 * 8
