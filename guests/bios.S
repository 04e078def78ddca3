# bios.S: the real-mode BIOS services a kernel's real-mode setup code calls, as SeaBIOS answers
# them on QEMU's pc machine: INT 12h (base memory), INT 11h (equipment), INT 15h E820 (the same
# map as the multiboot memory map), E801 and 88h (memory above 1 MiB), INT 1Ah 00h/01h (the BDA
# tick count), 02h/04h (the RTC's time and date), and the answers for what the PC lacks: INT 13h
# for a disk that is not there, INT 16h with no keystroke, functions SeaBIOS does not have. From
# long mode the guest drops to real mode (through 16-bit protected mode, as a kernel's trampoline
# does), loads the registers, executes INT n, stores what the BIOS returned and comes back. With "unsupported" on the command line it
# ends with a call svmemu does not implement (INT 14h AH=00h), which must stop the run there.
.include "prelude.inc"

.equ REGS, 0x6000                   # eax ebx ecx edx esi edi es flags, in and out
.equ R_EAX, REGS + 0x00
.equ R_EBX, REGS + 0x04
.equ R_ECX, REGS + 0x08
.equ R_EDX, REGS + 0x0c
.equ R_ESI, REGS + 0x10
.equ R_EDI, REGS + 0x14
.equ R_ES, REGS + 0x18
.equ R_FLAGS, REGS + 0x1c
.equ R_GDTR, REGS + 0x20            # the GDT the way back loads
.equ RM_BASE, 0x7000                # the real-mode code, CS 0x700
.equ E820_BUF, 0x5000
.equ SMAP, 0x534d4150
.equ CF, 1

.macro bios vector
    mov edi, \vector
    call bios_call
.endm

main:
    # the way there: the GDT pointer the real-mode code loads, the code below 1 MiB
    lea rsi, [rip + trip_gdt_ptr]
    mov edi, R_GDTR
    mov ecx, 6
    rep movsb
    lea rsi, [rip + rm_block]
    mov edi, RM_BASE
    lea rcx, [rip + rm_end]
    sub rcx, rsi
    rep movsb

    # ---- INT 12h, INT 11h ----
    mov dword ptr [R_EAX], 0xffffffff
    bios 0x12
    movzx eax, word ptr [R_EAX]
    check_eq rax, 639, "INT 12h: 639 KiB of base memory"
    movzx eax, word ptr [0x410]
    mov [rip + equipment], rax
    mov dword ptr [R_EAX], 0
    bios 0x11
    movzx eax, word ptr [R_EAX]
    check_eq rax, "qword ptr [rip + equipment]", "INT 11h: the BDA's equipment word"

    # ---- INT 15h E820: every entry, compared with the multiboot memory map ----
    mov r12, [rip + mb_info]
    mov r13d, [r12 + 48]                     # mmap_addr: entries of size, base, length, type
    mov r14d, [r12 + 44]
    add r14, r13                             # end of the map
    xor r15d, r15d                           # entries that differ
    xor ebx, ebx
    mov [rip + continuation], rbx
    mov qword ptr [rip + e820_count], 0
.Le820:
    mov dword ptr [R_EAX], 0xe820
    mov rbx, [rip + continuation]
    mov [R_EBX], ebx
    mov dword ptr [R_ECX], 20
    mov dword ptr [R_EDX], SMAP
    mov dword ptr [R_EDI], E820_BUF
    mov dword ptr [R_ES], 0
    bios 0x15
    test dword ptr [R_FLAGS], CF
    jnz .Le820_failed
    cmp dword ptr [R_EAX], SMAP
    jne .Le820_failed
    cmp dword ptr [R_ECX], 20
    jne .Le820_failed
    cmp r13, r14
    jae .Le820_extra
    mov rax, [E820_BUF]
    cmp rax, [r13 + 4]
    jne .Le820_differs
    mov rax, [E820_BUF + 8]
    cmp rax, [r13 + 12]
    jne .Le820_differs
    mov eax, [E820_BUF + 16]
    cmp eax, [r13 + 20]
    je .Le820_next
.Le820_differs:
    inc r15
.Le820_next:
    mov eax, [r13]
    lea r13, [r13 + rax + 4]
    inc qword ptr [rip + e820_count]
    mov ebx, [R_EBX]
    mov [rip + continuation], rbx
    test ebx, ebx
    jnz .Le820
    jmp .Le820_done
.Le820_extra:
    inc r15
    jmp .Le820_done
.Le820_failed:
    mov r15, -1
.Le820_done:
    check_eq r15, 0, "INT 15h E820 returns the multiboot memory map, entry by entry"
    check_eq r13, r14, "and ends (EBX = 0) after its last entry"
    mov rax, [rip + e820_count]
    check_ne rax, 0, "E820 returned entries"

    mov dword ptr [R_EAX], 0xe820
    mov dword ptr [R_EBX], 0
    mov dword ptr [R_ECX], 20
    mov dword ptr [R_EDX], 0x12345678        # not 'SMAP'
    bios 0x15
    mov eax, [R_FLAGS]
    check_mask rax, CF, CF, "E820 without 'SMAP' in EDX: CF set"
    movzx eax, byte ptr [R_EAX + 1]
    check_eq rax, 0x86, "and AH = 86h"

    # ---- INT 15h E801 and 88h (-m 128M: 0x7FE0000 bytes of RAM end below 4 GiB) ----
    mov dword ptr [R_EAX], 0xe801
    mov dword ptr [R_EBX], 0xffffffff
    mov dword ptr [R_ECX], 0xffffffff
    mov dword ptr [R_EDX], 0xffffffff
    bios 0x15
    mov eax, [R_FLAGS]
    check_mask rax, CF, 0, "INT 15h E801: CF clear"
    movzx eax, word ptr [R_EAX]
    check_eq rax, 15*1024, "E801: AX = 15 MiB between 1 MiB and 16 MiB, in KiB"
    movzx eax, word ptr [R_ECX]
    check_eq rax, 15*1024, "E801: CX = AX"
    movzx eax, word ptr [R_EBX]
    check_eq rax, (0x7fe0000-0x1000000)>>16, "E801: BX = RAM above 16 MiB in 64 KiB blocks"
    movzx eax, word ptr [R_EDX]
    check_eq rax, (0x7fe0000-0x1000000)>>16, "E801: DX = BX"
    mov dword ptr [R_EAX], 0x8800
    bios 0x15
    mov eax, [R_FLAGS]
    check_mask rax, CF, 0, "INT 15h 88h: CF clear"
    movzx eax, word ptr [R_EAX]
    check_eq rax, 63*1024, "88h: AX = 63 MiB (SeaBIOS's cap) of RAM above 1 MiB, in KiB"

    # ---- INT 1Ah: the tick count ----
    mov dword ptr [R_EAX], 0x0000
    bios 0x1a
    movzx eax, word ptr [R_ECX]
    shl eax, 16
    mov ax, [R_EDX]
    mov ecx, [0x46c]                         # after the call: SeaBIOS first lets a pending tick in
    check_eq rax, rcx, "INT 1Ah 00h: CX:DX = the BDA's tick count"
    # SeaBIOS yields first: a pending timer interrupt runs (through the IVT) even with IF = 0
    mov al, 0x34                             # PIT channel 0: mode 2, count 20 (~17 us)
    out 0x43, al
    mov al, 20
    out 0x40, al
    xor eax, eax
    out 0x40, al
    mov ecx, 50
2:  in al, 0x40                              # let it fire (each read is time on svmemu)
    dec ecx
    jnz 2b
    mov eax, [0x46c]
    mov [rip + ticks_before], rax
    mov dword ptr [R_EAX], 0x0000
    bios 0x1a
    mov al, 0x36                             # back to mode 3, full count (18.2 Hz)
    out 0x43, al
    xor eax, eax
    out 0x40, al
    out 0x40, al
    mov eax, [0x46c]
    check_ne rax, "qword ptr [rip + ticks_before]", "INT 1Ah 00h lets a pending timer tick in first"
    mov dword ptr [R_EAX], 0x0100
    mov dword ptr [R_ECX], 0x0012
    mov dword ptr [R_EDX], 0x3456
    bios 0x1a
    mov eax, [0x46c]
    check_eq rax, 0x123456, "INT 1Ah 01h: sets the BDA's tick count from CX:DX"
    mov dword ptr [R_EAX], 0x0000
    bios 0x1a
    movzx eax, word ptr [R_ECX]
    shl eax, 16
    mov ax, [R_EDX]
    sub eax, 0x123456                        # (plus a tick that may have been pending)
    cmp eax, 2
    setb al
    movzx eax, al
    check_eq rax, 1, "and 00h reads it back"

    # ---- INT 1Ah: the RTC's time and date (BCD, as the CMOS holds them) ----
    mov dword ptr [R_EAX], 0x0200
    bios 0x1a
    mov eax, [R_FLAGS]
    check_mask rax, CF, 0, "INT 1Ah 02h: CF clear"
    movzx eax, byte ptr [R_EAX + 1]
    check_eq rax, 0, "02h: AH = 0"
    mov al, 4
    out 0x70, al
    in al, 0x71
    movzx eax, al
    movzx ecx, byte ptr [R_ECX + 1]
    check_eq rcx, rax, "02h: CH = the CMOS hours"
    movzx ecx, byte ptr [R_EAX]
    check_eq rcx, rax, "02h: AL = CH"
    mov dword ptr [R_EAX], 0x0400
    bios 0x1a
    mov eax, [R_FLAGS]
    check_mask rax, CF, 0, "INT 1Ah 04h: CF clear"
    mov al, 0x32
    out 0x70, al
    in al, 0x71
    movzx eax, al
    movzx ecx, byte ptr [R_ECX + 1]
    check_eq rcx, rax, "04h: CH = the CMOS century"
    mov al, 9
    out 0x70, al
    in al, 0x71
    movzx eax, al
    movzx ecx, byte ptr [R_ECX]
    check_eq rcx, rax, "04h: CL = the CMOS year"
    mov al, 8
    out 0x70, al
    in al, 0x71
    movzx eax, al
    movzx ecx, byte ptr [R_EDX + 1]
    check_eq rcx, rax, "04h: DH = the CMOS month"

    # ---- INT 15h 24h: A20 (always on) ----
    mov dword ptr [R_EAX], 0x2402
    bios 0x15
    movzx eax, word ptr [R_EAX]
    mov ecx, [R_FLAGS]
    and ecx, CF
    shl ecx, 16
    or eax, ecx
    check_eq rax, 0x0001, "INT 15h 2402h: A20 is on (AL = 1, AH = 0, CF clear)"
    mov dword ptr [R_EAX], 0x2403
    mov dword ptr [R_EBX], 0
    bios 0x15
    movzx eax, word ptr [R_EBX]
    check_eq rax, 3, "INT 15h 2403h: BX = 3 (keyboard controller and port 92h)"

    # ---- answers for what this PC lacks: no disk, no keystroke, functions SeaBIOS lacks ----
    mov dword ptr [R_EAX], 0x4100
    mov dword ptr [R_EBX], 0x55aa
    mov dword ptr [R_EDX], 0x80
    bios 0x13
    mov eax, [R_FLAGS]
    check_mask rax, CF, CF, "INT 13h 41h for hard disk 80h: CF set (no such drive)"
    movzx eax, byte ptr [R_EAX + 1]
    check_eq rax, 1, "and AH = 01h"
    mov dword ptr [R_EAX], 0xec00
    mov dword ptr [R_EBX], 2
    bios 0x15
    movzx eax, byte ptr [R_EAX + 1]
    mov ecx, [R_FLAGS]
    and ecx, CF
    shl ecx, 8
    or eax, ecx
    check_eq rax, 0x186, "INT 15h ECh (not in SeaBIOS): AH = 86h, CF set"
    mov dword ptr [R_EAX], 0x5500
    bios 0x1a
    movzx eax, byte ptr [R_EAX + 1]
    mov ecx, [R_FLAGS]
    and ecx, CF
    shl ecx, 8
    or eax, ecx
    check_eq rax, 0x155, "INT 1Ah 55h (not in SeaBIOS): CF set, AH kept"
    mov dword ptr [R_EAX], 0x0100
    bios 0x16
    mov eax, [R_FLAGS]
    check_mask rax, 0x40, 0x40, "INT 16h 01h: no keystroke waiting (ZF set)"
    mov dword ptr [R_EAX], 0x02ff
    bios 0x16
    movzx eax, byte ptr [R_EAX]
    movzx ecx, byte ptr [0x417]
    check_eq rax, rcx, "INT 16h 02h: AL = the BDA's shift flags"

    # ---- a call svmemu does not implement, on request ----
    mov rdi, [rip + mb_info]
    mov edi, [rdi + 16]                      # the command line
    cmp dword ptr [rdi], 0x75736e75          # "unsu"
    jne 1f
    mov dword ptr [R_EAX], 0x0000
    bios 0x14
    print "# INT 14h returned\n"
1:  ret

# bios_call: run INT edi in real mode with the registers at REGS; stores them back, with FLAGS.
bios_call:
    push rbx
    push rbp
    push r12
    push r13
    push r14
    push r15
    lea rax, [rip + rm_int]
    lea rcx, [rip + rm_block]
    sub rax, rcx
    mov [rax + RM_BASE + 1], dil             # the INT's vector byte
    mov [rip + bios_rsp], rsp
    lea rax, [rip + trip32]
    push SEL_CODE32
    push rax
    .byte 0x48, 0xcb                         # retfq: to 32-bit compatibility mode
.code32
trip32:
    mov eax, cr0                             # paging off: long mode ends
    and eax, 0x7fffffff
    mov cr0, eax
    mov ecx, MSR_EFER
    rdmsr
    and eax, 0xfffffeff
    wrmsr
    lgdt [trip_gdt_ptr]
    lidt [rm_idt_ptr]
    mov ax, 0x10                             # 16-bit data, limit 0xFFFF
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov fs, ax
    mov gs, ax
    ljmp 0x08, RM_BASE                       # 16-bit protected mode
back32:
    mov ax, 0x20
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov ecx, MSR_EFER                        # long mode again (CR3 and CR4.PAE are as they were)
    rdmsr
    or eax, 0x100
    wrmsr
    mov eax, cr0
    or eax, 0x80000001
    mov cr0, eax
    lgdt [gdt_ptr]
    ljmp SEL_CODE64, back64
.code64
back64:
    mov ax, SEL_DATA
    mov ds, ax
    mov es, ax
    mov ss, ax
    xor eax, eax
    mov fs, ax
    mov gs, ax
    mov rsp, [rip + bios_rsp]
    lidt [rip + idt_ptr]
    pop r15
    pop r14
    pop r13
    pop r12
    pop rbp
    pop rbx
    ret

# ---- copied to RM_BASE: 16-bit protected mode, then real mode with CS = 0x700 ----
rm_block:
    .byte 0x0f, 0x20, 0xc0                                   # mov eax, cr0
    .byte 0x66, 0x25, 0xfe, 0xff, 0xff, 0xff                 # and eax, ~1
    .byte 0x0f, 0x22, 0xc0                                   # mov cr0, eax
    .byte 0xea; .word rm_real - rm_block; .word RM_BASE >> 4 # jmp far 0x700:rm_real
rm_real:
    .byte 0x31, 0xc0                                         # xor ax, ax
    .byte 0x8e, 0xd8                                         # mov ds, ax
    .byte 0x8e, 0xd0                                         # mov ss, ax
    .byte 0xbc; .word RM_BASE                                # mov sp, RM_BASE
    .byte 0x8e, 0x06; .word R_ES                             # mov es, [R_ES]
    .byte 0x66, 0xa1; .word R_EAX                            # mov eax, [R_EAX]
    .byte 0x66, 0x8b, 0x1e; .word R_EBX                      # mov ebx, [R_EBX]
    .byte 0x66, 0x8b, 0x0e; .word R_ECX                      # mov ecx, [R_ECX]
    .byte 0x66, 0x8b, 0x16; .word R_EDX                      # mov edx, [R_EDX]
    .byte 0x66, 0x8b, 0x36; .word R_ESI                      # mov esi, [R_ESI]
    .byte 0x66, 0x8b, 0x3e; .word R_EDI                      # mov edi, [R_EDI]
rm_int:
    .byte 0xcd, 0x00                                         # int n (patched)
    .byte 0x66, 0xa3; .word R_EAX                            # mov [R_EAX], eax
    .byte 0x66, 0x89, 0x1e; .word R_EBX                      # mov [R_EBX], ebx
    .byte 0x66, 0x89, 0x0e; .word R_ECX                      # mov [R_ECX], ecx
    .byte 0x66, 0x89, 0x16; .word R_EDX                      # mov [R_EDX], edx
    .byte 0x66, 0x89, 0x36; .word R_ESI                      # mov [R_ESI], esi
    .byte 0x66, 0x89, 0x3e; .word R_EDI                      # mov [R_EDI], edi
    .byte 0x8c, 0x06; .word R_ES                             # mov [R_ES], es
    .byte 0x66, 0x9c                                         # pushfd
    .byte 0x66, 0x8f, 0x06; .word R_FLAGS                    # pop dword [R_FLAGS]
    .byte 0xfa                                               # cli
    .byte 0x66, 0x0f, 0x01, 0x16; .word R_GDTR               # lgdt [R_GDTR]
    .byte 0x0f, 0x20, 0xc0                                   # mov eax, cr0
    .byte 0x66, 0x83, 0xc8, 0x01                             # or eax, 1
    .byte 0x0f, 0x22, 0xc0                                   # mov cr0, eax
    .byte 0x66, 0xea; .long back32; .word 0x18               # jmp far 0x18:back32
rm_end:

.data
.align 8
trip_gdt:
    .quad 0
    .quad 0x00009a000000ffff                # 0x08: 16-bit code, base 0, limit 0xFFFF
    .quad 0x000092000000ffff                # 0x10: 16-bit data, limit 0xFFFF
    .quad 0x00cf9a000000ffff                # 0x18: 32-bit code, flat
    .quad 0x00cf92000000ffff                # 0x20: data, flat
trip_gdt_end:
trip_gdt_ptr:
    .word trip_gdt_end - trip_gdt - 1
    .long trip_gdt
rm_idt_ptr:
    .word 0x3ff
    .long 0
.align 8
bios_rsp:       .quad 0
equipment:      .quad 0
continuation:   .quad 0
ticks_before:   .quad 0
e820_count:     .quad 0
