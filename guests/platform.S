# platform.S: the rest of the PC a kernel probes, as QEMU's pc machine presents it after SeaBIOS:
# CMOS/RTC (status registers, the NMI-mask bit of the index, BCD date fields, binary mode, the
# memory-size bytes for 128 MiB, CMOS RAM), PCI configuration mechanism 1 (the 440FX host
# bridge, the PIIX3 ISA bridge and IDE, PIIX4 PM with PMBASE, absent functions, the enable bit,
# byte access), the 8042 keyboard controller (status, command byte, self test, output port with
# A20, a keyboard acknowledge), port 0x92, port 0x80, the ACPI PM timer, pc-testdev's I/O port
# and its 64 KiB memory window at 0xFF000000 (QEMU needs `-device pc-testdev`), and physical addresses with nothing behind them (all-ones;
# QEMU 7.2 reads 0 there: tests/test_guests_qemu.py lists it).
.include "prelude.inc"

.macro outb port, value
    mov al, \value
    out \port, al
.endm
.macro inb port
    xor eax, eax
    in al, \port
.endm
# pci_rd ADDRESS -> eax (32-bit config read)
.macro pci_rd address
    mov dx, 0xcf8
    mov eax, \address
    out dx, eax
    mov dx, 0xcfc
    in eax, dx
.endm
# rax = 1 if \a <= \b (unsigned), else 0
.macro at_most a, b
    mov rax, \a
    cmp rax, \b
    setbe al
    movzx eax, al
.endm
.macro kbc_wait_output
    mov ecx, 100000
.Lkbc_wait\@:
    in al, 0x64
    test al, 1
    jnz .Lkbc_ready\@
    dec ecx
    jnz .Lkbc_wait\@
.Lkbc_ready\@:
.endm

main:
    # --- CMOS / RTC ---
    cmos_rd 0x0a
    check_mask rax, 0x7f, 0x26, "RTC status A: 32.768 kHz divider, 1024 Hz rate"
    cmos_rd 0x0b
    check_eq rax, 0x02, "RTC status B: 24-hour, BCD"
    cmos_rd 0x0c
    check_eq rax, 0, "RTC status C: no interrupt flags"
    cmos_rd 0x0d
    check_eq rax, 0x80, "RTC status D: valid RAM and time"
    outb 0x70, 0x8a                         # NMI masked, index 0x0A
    inb 0x71
    check_mask rax, 0x7f, 0x26, "index bit 7 is the NMI mask, not part of the index"
    inb 0x70
    check_eq rax, 0xff, "port 0x70 reads 0xFF"
    cmos_rd 0x08
    mov rbx, rax
    and ebx, 0x0f
    at_most rbx, 9
    check_eq rax, 1, "month is BCD (low digit 0-9)"
    cmos_rd 0x08
    at_most rax, 0x12
    check_eq rax, 1, "month is at most 0x12"
    cmos_rd 0x32
    check_eq rax, 0x20, "century 0x20 (BCD)"
    cmos_wr 0x0b, 0x06                      # binary mode
    cmos_rd 0x08
    at_most rax, 12
    check_eq rax, 1, "binary mode: month at most 12"
    cmos_wr 0x0b, 0x02
    cmos_rd 0x15
    mov rbx, rax
    cmos_rd 0x16
    shl eax, 8
    or rax, rbx
    check_eq rax, 640, "CMOS 0x15/0x16: 640 KiB base memory"
    cmos_rd 0x17
    mov rbx, rax
    cmos_rd 0x18
    shl eax, 8
    or rax, rbx
    check_eq rax, 0xffff, "CMOS 0x17/0x18: extended memory, capped at 0xFFFF KiB"
    cmos_rd 0x30
    mov rbx, rax
    cmos_rd 0x31
    shl eax, 8
    or rax, rbx
    check_eq rax, 0xffff, "CMOS 0x30/0x31: extended memory, capped at 0xFFFF KiB"
    cmos_rd 0x34
    mov rbx, rax
    cmos_rd 0x35
    shl eax, 8
    or rax, rbx
    check_eq rax, 0x700, "CMOS 0x34/0x35: 112 MiB above 16 MiB in 64 KiB units"
    cmos_rd 0x5b
    mov rbx, rax
    cmos_rd 0x5c
    or rbx, rax
    cmos_rd 0x5d
    or rax, rbx
    check_eq rax, 0, "CMOS 0x5B-0x5D: no memory above 4 GiB"
    cmos_wr 0x48, 0x5a
    cmos_rd 0x48
    check_eq rax, 0x5a, "CMOS RAM byte reads back"

    # --- PCI configuration mechanism 1 ---
    pci_rd 0x80000000
    check_eq rax, 0x12378086, "00:00.0 is the Intel 440FX host bridge"
    pci_rd 0x80000008
    check_eq rax, 0x06000002, "00:00.0 class: host bridge, revision 2"
    pci_rd 0x8000002c
    check_eq rax, 0x11001af4, "00:00.0 subsystem 1AF4:1100"
    pci_rd 0x80000800
    check_eq rax, 0x70008086, "00:01.0 is the PIIX3 ISA bridge"
    pci_rd 0x80000808
    check_eq rax, 0x06010000, "00:01.0 class: ISA bridge"
    pci_rd 0x8000080c
    check_mask rax, 0x00ff0000, 0x00800000, "00:01.0 header type: multi-function"
    pci_rd 0x80000860
    check_eq rax, 0x0b0b0a0a, "PIIX3 PIRQ routing: 10, 10, 11, 11"
    pci_rd 0x80000900
    check_eq rax, 0x70108086, "00:01.1 is the PIIX3 IDE controller"
    pci_rd 0x80000b00
    check_eq rax, 0x71138086, "00:01.3 is the PIIX4 power management function"
    pci_rd 0x80000b08
    check_eq rax, 0x06800003, "00:01.3 class: other bridge, revision 3"
    pci_rd 0x80000b40
    check_eq rax, 0x601, "PIIX4 PMBASE 0x600 (I/O)"
    pci_rd 0x80000b3c
    check_mask rax, 0xffff, 0x0109, "PIIX4 PM interrupt: IRQ 9, pin A"
    pci_rd 0x80002800
    check_eq rax, 0xffffffff, "an absent function (00:05.0) reads all-ones"
    pci_rd 0x80010000
    check_eq rax, 0xffffffff, "bus 1 is empty"
    mov dx, 0xcf8
    in eax, dx
    check_eq rax, 0x80010000, "CONFIG_ADDRESS reads back"
    mov dx, 0xcf8
    mov eax, 0x80000000
    out dx, eax
    mov dx, 0xcfe
    xor eax, eax
    in ax, dx
    check_eq rax, 0x1237, "a 16-bit read of CONFIG_DATA + 2 gives the device ID"
    mov dx, 0xcfc
    mov eax, 0x11112222
    out dx, eax
    in eax, dx
    check_eq rax, 0x12378086, "vendor and device IDs are read-only"
    mov dx, 0xcf8
    xor eax, eax
    out dx, eax
    mov dx, 0xcfc
    in eax, dx
    check_eq rax, 0xffffffff, "CONFIG_DATA with the enable bit clear reads all-ones"

    # --- 8042 keyboard controller ---
    inb 0x64
    check_eq rax, 0x1c, "8042 status 0x1C: unlocked, command last, system flag"
    outb 0x64, 0x20
    kbc_wait_output
    inb 0x60
    check_eq rax, 0x61, "command byte: translation, mouse off, keyboard interrupt"
    outb 0x64, 0xaa
    kbc_wait_output
    inb 0x60
    check_eq rax, 0x55, "controller self test passes (0x55)"
    outb 0x64, 0x60                         # rewrite the command byte (a self test may change it)
    outb 0x60, 0x61
    outb 0x64, 0xd0
    kbc_wait_output
    inb 0x60
    check_mask rax, 0x03, 0x03, "output port: A20 enabled, reset line inactive"
    outb 0x64, 0xd1
    outb 0x60, 0xdf                         # A20 stays on
    outb 0x64, 0xdf
    outb 0x64, 0xd0
    kbc_wait_output
    inb 0x60
    check_mask rax, 0x03, 0x03, "output port written through 0xD1 keeps A20"
    outb 0x60, 0xf4                         # keyboard: enable scanning
    kbc_wait_output
    inb 0x60
    check_eq rax, 0xfa, "the keyboard acknowledges a command (0xFA)"
    inb 0x64
    check_mask rax, 0x01, 0x00, "output buffer empty once read"

    # --- port 0x92, port 0x80, an unknown port ---
    inb 0x92
    check_eq rax, 0x02, "port 0x92: A20 enabled"
    outb 0x92, 0x02
    inb 0x92
    check_eq rax, 0x02, "port 0x92 reads back"
    outb 0x80, 0x42
    inb 0x80
    check_eq rax, 0xff, "port 0x80 takes POST codes and reads 0xFF"
    mov dx, 0x1234
    xor eax, eax
    in al, dx
    check_eq rax, 0xff, "an unknown port reads 0xFF"

    # --- ACPI PM block at 0x600 ---
    # Two reads can fall in one 279 ns tick on a host-timed PM timer (QEMU's): read until it
    # moves, at most 1000 times.
    mov dx, 0x608
    in eax, dx
    mov r8, rax
    mov ecx, 1000
1:  in eax, dx
    mov r9, rax
    cmp r9, r8
    loope 1b
    mov rax, r9
    shr rax, 24
    check_eq rax, 0, "the PM timer is a 24-bit counter"
    check_ne r9, r8, "the PM timer counts"
    mov dx, 0x604
    xor eax, eax
    in ax, dx
    check_eq rax, 0, "PM1 control: SCI_EN clear (ACPI not enabled)"

    # --- pc-testdev I/O port ---
    mov dx, 0xe0
    mov eax, 0x12345678
    out dx, eax
    in eax, dx
    check_eq rax, 0x12345678, "testdev port 0xE0 reads back a dword"
    mov al, 0xab
    out dx, al
    xor eax, eax
    in al, dx
    check_eq rax, 0xab, "testdev port 0xE0 reads back a byte"
    mov dx, 0xe2
    mov ax, 0xbeef
    out dx, ax
    mov dx, 0xe0
    in eax, dx
    check_eq rax, 0xbeef56ab, "testdev port 0xE2 writes bytes 2-3 of the register"
    mov dx, 0xe9
    xor eax, eax
    in al, dx
    check_eq rax, 0x56, "testdev port 0xE9 reads byte 1 of the same register"

    # --- pc-testdev iomem: keeps what is written, read back at any width ---
    mov rbx, 0xff000000
    mov rax, 0x1122334455667788
    mov [rbx], rax
    mov rax, [rbx]
    check_eq rax, 0x1122334455667788, "testdev iomem reads back a qword"
    movzx eax, byte ptr [rbx + 1]
    check_eq rax, 0x77, "testdev iomem: a byte of it"
    movzx eax, word ptr [rbx + 2]
    check_eq rax, 0x5566, "testdev iomem: a word of it"
    mov eax, [rbx + 4]
    check_eq rax, 0x11223344, "testdev iomem: a dword of it"
    mov byte ptr [rbx + 3], 0xaa
    mov rax, [rbx]
    check_eq rax, 0x11223344aa667788, "testdev iomem: a byte write changes one byte"
    mov rax, cr4
    or rax, 0x600                  # OSFXSR | OSXMMEXCPT: SSE on
    mov cr4, rax
    mov rax, 0x0123456789abcdef
    movq xmm0, rax
    punpcklqdq xmm0, xmm0
    movdqu [rbx + 0x101], xmm0
    mov rax, [rbx + 0x109]
    check_eq rax, 0x0123456789abcdef, "testdev iomem: a 16-byte store lands whole"
    mov ecx, 5
    lock xadd [rbx + 0x200], ecx
    mov ecx, 5
    lock xadd [rbx + 0x200], ecx
    mov eax, [rbx + 0x200]
    check_eq rax, 10, "testdev iomem: locked read-modify-write"
    mov word ptr [rbx + 0xfffe], 0xbeef
    movzx eax, word ptr [rbx + 0xfffe]
    check_eq rax, 0xbeef, "testdev iomem: its last word"
    # A second mapping (the 2 MiB page at linear 0xC0000000) shows the same bytes.
    mov rdi, offset pd0 + 3 * 4096
    mov rax, 0xff000083
    mov [rdi], rax
    mov rax, 0xc0000000
    invlpg [rax]
    mov dword ptr [rax + 0x300], 0xcafe
    mov eax, [rbx + 0x300]
    check_eq rax, 0xcafe, "testdev iomem: a second mapping writes the same bytes"
    mov qword ptr [rbx + 0x308], 0x5a5a
    mov rax, 0xc0000000
    mov rax, [rax + 0x308]
    check_eq rax, 0x5a5a, "testdev iomem: a second mapping reads the same bytes"

    # --- physical addresses with nothing behind them ---
    mov rbx, 0xe0000000
    mov eax, [rbx]
    check_eq rax, 0xffffffff, "the PCI hole reads all-ones"
    mov dword ptr [rbx], 0x12345678
    mov eax, [rbx]
    check_eq rax, 0xffffffff, "a write there is dropped"
    mov rbx, 0x8000000
    mov rax, [rbx]
    check_eq rax, -1, "past the end of RAM reads all-ones"
    ret
