# firmware.S: what the firmware leaves a kernel, found the way PC kernels find it.
# Checked (run with 128 MiB and one CPU): the BIOS data area (COM1 base, EBDA segment, base
# memory KiB, EBDA size byte); the MP floating pointer (searched in the EBDA's first KiB, then
# 0xF0000-0xFFFFF) and its configuration table (checksums, one processor entry per CPU that
# fw_cfg reports, marked BSP, with CPUID 1's signature; the I/O APIC at 0xFEC00000; ISA IRQ0
# on INTIN2); the RSDP (searched in 0xE0000-0xFFFFF), the RSDT and every table it lists
# (checksums), the FADT (PM timer at port 0x608, SCI on IRQ 9, ACPI mode entered through its
# SMI_CMD port, its DSDT and FACS), the MADT
# (one local APIC per CPU, the I/O APIC, the IRQ0 -> GSI 2 override, IRQ 9 level/high);
# that the multiboot memory map reserves every table; the MTRRs (enabled, default WB, fixed
# ranges, the PCI hole from 2 GiB UC).
# Printed for the tests to compare with QEMU byte for byte: "# mpc ...", "# madt ...",
# "# fadt ..." (hex), "# ivt V0 V8 V1C IRETBYTE", "# rsdp-rev N", "# mtrr-var0 BASE MASK", and "# cpus N", "# cpuid1 EAX EBX ECX EDX" (what the
# MP table's processor entries are built from).
.include "prelude.inc"

.equ SIG_MP, 0x5f504d5f              # "_MP_"
.equ SIG_PCMP, 0x504d4350            # "PCMP"
.equ SIG_RSDT, 0x54445352
.equ SIG_FACP, 0x50434146
.equ SIG_APIC, 0x43495041
.equ SIG_DSDT, 0x54445344
.equ SIG_FACS, 0x53434146

main:
    # ---- BIOS data area
    mov ebx, 0x400
    movzx eax, word ptr [rbx]
    check_eq rax, 0x3f8, "BDA: COM1 base 0x3F8"
    movzx eax, word ptr [rbx + 0x0e]
    check_eq rax, 0x9fc0, "BDA: EBDA segment 0x9FC0"
    movzx eax, word ptr [rbx + 0x13]
    check_eq rax, 639, "BDA: 639 KiB of base memory"
    mov ebx, 0x9fc00
    movzx eax, byte ptr [rbx]
    check_eq rax, 1, "EBDA: size 1 KiB"

    # ---- the real-mode IVT: the far pointers of vectors 0 (#DE), 8 (IRQ 0 at the BIOS's PIC
    # base) and 0x1c (the user tick hook), then the byte at F000:FF53 (an IRET)
    print "# ivt "
    xor ebx, ebx
    mov edi, dword ptr [rbx]
    call puthex64
    print " "
    mov edi, dword ptr [rbx + 8 * 4]
    call puthex64
    print " "
    mov edi, dword ptr [rbx + 0x1c * 4]
    call puthex64
    print " "
    mov ebx, 0xfff53
    movzx edi, byte ptr [rbx]
    call puthex64
    call newline

    # CPUs as fw_cfg reports them (selector 0x05, 16 bits).
    mov dx, 0x510
    mov ax, 0x05
    out dx, ax
    mov dx, 0x511
    in al, dx
    movzx ebx, al
    in al, dx
    movzx eax, al
    shl eax, 8
    or ebx, eax
    mov [rip + ncpus], rbx
    print "# cpus "
    mov rdi, rbx
    call putdec
    call newline
    # CPUID 1 as the firmware saw it (the MP table's processor entries carry EAX and EDX).
    mov eax, 1
    cpuid
    print "# cpuid1 "
    mov rdi, rax
    call puthex64
    print " "
    mov rdi, rbx
    call puthex64
    print " "
    mov rdi, rcx
    call puthex64
    print " "
    mov rdi, rdx
    call puthex64
    call newline

    # ---- MP floating pointer: EBDA first KiB, then the BIOS segment
    mov edi, 0x40e
    movzx edi, word ptr [rdi]
    shl edi, 4
    lea esi, [edi + 0x400]
    mov edx, SIG_MP
    call find_sig32
    test rax, rax
    jnz .Lmp_found
    mov edi, 0xf0000
    mov esi, 0x100000
    mov edx, SIG_MP
    call find_sig32
.Lmp_found:
    mov r12, rax
    check_ne r12, 0, "MP floating pointer found"
    test r12, r12
    jz .Lacpi
    mov rdi, r12
    mov esi, 16
    call sum8
    check_eq rax, 0, "MP floating pointer checksum"
    movzx eax, byte ptr [r12 + 9]
    check_eq rax, 4, "MP spec revision 1.4"
    mov r13d, dword ptr [r12 + 4]           # configuration table
    mov [rip + mp_config], r13
    mov eax, dword ptr [r13]
    check_eq rax, SIG_PCMP, "MP configuration table signature"
    movzx esi, word ptr [r13 + 4]
    mov rdi, r13
    call sum8
    check_eq rax, 0, "MP configuration table checksum"
    mov eax, dword ptr [r13 + 36]
    check_eq rax, 0xfee00000, "MP: local APIC at 0xFEE00000"
    print "# mpc "
    mov rdi, r13
    movzx esi, word ptr [r13 + 4]
    call hexbytes
    call newline
    # Walk the entries: count processors, note the BSP, the I/O APIC and where IRQ0 goes.
    movzx r14d, word ptr [r13 + 34]         # entry count
    lea rbx, [r13 + 44]
    xor r15d, r15d                          # processors
    mov qword ptr [rip + mp_ioapic], 0
    mov qword ptr [rip + mp_irq0], -1
    mov qword ptr [rip + mp_bsp], 0
.Lmp_entry:
    test r14, r14
    jz .Lmp_done
    dec r14
    movzx eax, byte ptr [rbx]
    cmp eax, 0
    jne .Lmp_not_cpu
    inc r15
    movzx ecx, byte ptr [rbx + 3]
    cmp ecx, 3
    jne .Lmp_cpu_next
    mov ecx, dword ptr [rbx + 4]
    mov [rip + mp_bsp], rcx
.Lmp_cpu_next:
    add rbx, 20
    jmp .Lmp_entry
.Lmp_not_cpu:
    cmp eax, 2
    jne .Lmp_not_ioapic
    mov ecx, dword ptr [rbx + 4]
    mov [rip + mp_ioapic], rcx
    add rbx, 8
    jmp .Lmp_entry
.Lmp_not_ioapic:
    cmp eax, 3
    jne .Lmp_skip8
    cmp byte ptr [rbx + 4], 1               # source bus 1 = ISA
    jne .Lmp_skip8
    cmp byte ptr [rbx + 5], 0               # IRQ 0
    jne .Lmp_skip8
    movzx ecx, byte ptr [rbx + 7]
    mov [rip + mp_irq0], rcx
.Lmp_skip8:
    add rbx, 8
    jmp .Lmp_entry
.Lmp_done:
    check_eq r15, [rip + ncpus], "MP: one processor entry per CPU"
    mov eax, 1
    cpuid
    check_eq [rip + mp_bsp], rax, "MP: the BSP entry has CPUID 1's signature"
    check_eq [rip + mp_ioapic], 0xfec00000, "MP: I/O APIC at 0xFEC00000"
    check_eq [rip + mp_irq0], 2, "MP: ISA IRQ0 on INTIN2"

    # ---- ACPI: the RSDP in 0xE0000-0xFFFFF
.Lacpi:
    mov edi, 0xe0000
    mov esi, 0x100000
    mov rdx, 0x2052545020445352             # "RSD PTR "
    call find_sig64
    mov r12, rax
    check_ne r12, 0, "RSDP found"
    test r12, r12
    jz .Lmtrr
    mov [rip + rsdp_addr], r12
    mov rdi, r12
    mov esi, 20
    call sum8
    check_eq rax, 0, "RSDP checksum"
    print "# rsdp-rev "
    movzx edi, byte ptr [r12 + 15]
    call putdec
    call newline
    mov r13d, dword ptr [r12 + 16]          # RSDT
    mov [rip + rsdt_addr], r13
    mov eax, dword ptr [r13]
    check_eq rax, SIG_RSDT, "RSDT signature"
    mov rdi, r13
    mov esi, dword ptr [r13 + 4]
    call sum8
    check_eq rax, 0, "RSDT checksum"
    # Every table the RSDT lists: checksum; note FACP and APIC.
    mov r14d, dword ptr [r13 + 4]
    sub r14, 36
    shr r14, 2
    lea rbx, [r13 + 36]
    xor r15d, r15d                          # bad checksums
    mov qword ptr [rip + fadt], 0
    mov qword ptr [rip + madt], 0
.Lrsdt_entry:
    test r14, r14
    jz .Lrsdt_done
    dec r14
    mov r12d, dword ptr [rbx]
    add rbx, 4
    mov rdi, r12
    mov esi, dword ptr [r12 + 4]
    call sum8
    test rax, rax
    jz .Lrsdt_sum_ok
    inc r15
.Lrsdt_sum_ok:
    mov eax, dword ptr [r12]
    cmp eax, SIG_FACP
    jne .Lrsdt_not_fadt
    mov [rip + fadt], r12
.Lrsdt_not_fadt:
    cmp eax, SIG_APIC
    jne .Lrsdt_entry
    mov [rip + madt], r12
    jmp .Lrsdt_entry
.Lrsdt_done:
    check_eq r15, 0, "every table the RSDT lists has a valid checksum"
    check_ne [rip + fadt], 0, "RSDT lists a FADT"
    check_ne [rip + madt], 0, "RSDT lists a MADT"

    # FADT: PM timer, SCI, DSDT, FACS.
    mov r12, [rip + fadt]
    test r12, r12
    jz .Lmadt
    print "# fadt "
    mov rdi, r12
    mov esi, dword ptr [r12 + 4]
    call hexbytes
    call newline
    mov eax, dword ptr [r12 + 76]
    check_eq rax, 0x608, "FADT: PM timer block at port 0x608"
    movzx eax, byte ptr [r12 + 91]
    check_eq rax, 4, "FADT: PM timer block is 4 bytes"
    movzx eax, word ptr [r12 + 46]
    check_eq rax, 9, "FADT: SCI on IRQ 9"
    # ACPI mode: SCI_EN is clear until ACPI_ENABLE is written to SMI_CMD.
    mov edx, dword ptr [r12 + 64]           # PM1a_CNT_BLK
    in ax, dx
    check_mask rax, 1, 0, "PM1a_CNT.SCI_EN clear at entry"
    mov edx, dword ptr [r12 + 48]           # SMI_CMD
    mov al, byte ptr [r12 + 52]             # ACPI_ENABLE
    out dx, al
    mov edx, dword ptr [r12 + 64]
    in ax, dx
    check_mask rax, 1, 1, "ACPI_ENABLE written to SMI_CMD sets SCI_EN"
    mov r13d, dword ptr [r12 + 40]          # DSDT
    mov [rip + dsdt], r13
    mov eax, dword ptr [r13]
    check_eq rax, SIG_DSDT, "DSDT signature"
    mov rdi, r13
    mov esi, dword ptr [r13 + 4]
    call sum8
    check_eq rax, 0, "DSDT checksum"
    mov r13d, dword ptr [r12 + 36]          # FACS
    mov eax, dword ptr [r13]
    check_eq rax, SIG_FACS, "FACS signature"
    mov eax, dword ptr [r13 + 4]
    check_eq rax, 64, "FACS length 64"

    # MADT: local APICs, I/O APIC, overrides.
.Lmadt:
    mov r12, [rip + madt]
    test r12, r12
    jz .Lmmap
    print "# madt "
    mov rdi, r12
    mov esi, dword ptr [r12 + 4]
    call hexbytes
    call newline
    mov eax, dword ptr [r12 + 36]
    check_eq rax, 0xfee00000, "MADT: local APIC at 0xFEE00000"
    mov r14d, dword ptr [r12 + 4]
    add r14, r12                            # end
    lea rbx, [r12 + 44]
    xor r15d, r15d                          # local APICs
    mov qword ptr [rip + mp_ioapic], 0
    mov qword ptr [rip + mp_irq0], -1
    mov qword ptr [rip + madt_irq9], -1
.Lmadt_entry:
    cmp rbx, r14
    jae .Lmadt_done
    movzx eax, byte ptr [rbx]
    cmp eax, 0
    jne .Lmadt_not_lapic
    inc r15
    jmp .Lmadt_next
.Lmadt_not_lapic:
    cmp eax, 1
    jne .Lmadt_not_ioapic
    mov ecx, dword ptr [rbx + 4]
    mov [rip + mp_ioapic], rcx
    jmp .Lmadt_next
.Lmadt_not_ioapic:
    cmp eax, 2
    jne .Lmadt_next
    cmp byte ptr [rbx + 3], 0
    jne .Lmadt_not_irq0
    mov ecx, dword ptr [rbx + 4]
    mov [rip + mp_irq0], rcx
.Lmadt_not_irq0:
    cmp byte ptr [rbx + 3], 9
    jne .Lmadt_next
    movzx ecx, word ptr [rbx + 8]
    mov [rip + madt_irq9], rcx
.Lmadt_next:
    movzx eax, byte ptr [rbx + 1]
    add rbx, rax
    test eax, eax
    jnz .Lmadt_entry
.Lmadt_done:
    check_eq r15, [rip + ncpus], "MADT: one local APIC per CPU"
    check_eq [rip + mp_ioapic], 0xfec00000, "MADT: I/O APIC at 0xFEC00000"
    check_eq [rip + mp_irq0], 2, "MADT: IRQ0 overridden to GSI 2"
    check_eq [rip + madt_irq9], 0xd, "MADT: IRQ 9 level-triggered, active high"

    # ---- the memory map reserves the tables
.Lmmap:
    mov rdi, [rip + rsdp_addr]
    call mmap_type
    check_eq rax, 2, "mmap: the RSDP lies in a reserved range"
    mov rdi, [rip + rsdt_addr]
    call mmap_type
    check_eq rax, 2, "mmap: the RSDT lies in a reserved range"
    mov rdi, [rip + dsdt]
    call mmap_type
    check_eq rax, 2, "mmap: the DSDT lies in a reserved range"
    mov rdi, [rip + mp_config]
    call mmap_type
    check_eq rax, 2, "mmap: the MP configuration table lies in a reserved range"

    # ---- MTRRs as the BIOS left them
.Lmtrr:
    print "# mtrr-var0 "
    rdmsr64 0x200
    mov rdi, rax
    call puthex64
    print " "
    rdmsr64 0x201
    mov rdi, rax
    call puthex64
    call newline
    rdmsr64 0x2ff
    check_eq rax, 0xc06, "MTRRdefType: enabled, fixed enabled, default WB"
    rdmsr64 0x250
    check_eq rax, 0x0606060606060606, "MTRR fixed 0-0x7FFFF WB"
    rdmsr64 0x258
    check_eq rax, 0x0606060606060606, "MTRR fixed 0x80000-0x9FFFF WB"
    rdmsr64 0x259
    check_eq rax, 0, "MTRR fixed 0xA0000-0xBFFFF UC"
    rdmsr64 0x268
    check_eq rax, 0x0505050505050505, "MTRR fixed 0xC0000-0xC7FFF WP"
    rdmsr64 0x26f
    check_eq rax, 0x0505050505050505, "MTRR fixed 0xF8000-0xFFFFF WP"
    rdmsr64 0x200
    check_eq rax, 0x80000000, "MTRR var 0 base: 2 GiB, UC"
    rdmsr64 0x201
    check_eq rax, 0xff80000800, "MTRR var 0 mask: 2 GiB, valid"
    rdmsr64 0x203
    check_eq rax, 0, "MTRR var 1 off"
    ret

# find_sig32: rdi = start, rsi = end (16-byte steps), edx = dword -> rax = address or 0.
find_sig32:
    mov rax, rdi
.Lfs32:
    cmp rax, rsi
    jae .Lfs32_none
    cmp dword ptr [rax], edx
    je .Lfs32_done
    add rax, 16
    jmp .Lfs32
.Lfs32_none:
    xor eax, eax
.Lfs32_done:
    ret

# find_sig64: rdi = start, rsi = end (16-byte steps), rdx = qword -> rax = address or 0.
find_sig64:
    mov rax, rdi
.Lfs64:
    cmp rax, rsi
    jae .Lfs64_none
    cmp qword ptr [rax], rdx
    je .Lfs64_done
    add rax, 16
    jmp .Lfs64
.Lfs64_none:
    xor eax, eax
.Lfs64_done:
    ret

# sum8: rdi = address, rsi = length -> rax = byte sum mod 256.
sum8:
    push rcx
    push rdi
    push rsi
    xor eax, eax
.Lsum8:
    test rsi, rsi
    jz .Lsum8_done
    movzx ecx, byte ptr [rdi]
    add eax, ecx
    inc rdi
    dec rsi
    jmp .Lsum8
.Lsum8_done:
    movzx eax, al
    pop rsi
    pop rdi
    pop rcx
    ret

# hexbytes: rdi = address, rsi = length: the bytes as hex pairs.
hexbytes:
    push rax
    push rbx
    push rcx
    push rdi
    mov rbx, rdi
    mov rcx, rsi
.Lhexbytes:
    test rcx, rcx
    jz .Lhexbytes_done
    movzx eax, byte ptr [rbx]
    mov edi, eax
    shr edi, 4
    call hexdigit
    mov edi, eax
    and edi, 15
    call hexdigit
    inc rbx
    dec rcx
    jmp .Lhexbytes
.Lhexbytes_done:
    pop rdi
    pop rcx
    pop rbx
    pop rax
    ret

# hexdigit: edi = 0..15, printed as one lower-case hex digit.
hexdigit:
    push rdi
    cmp edi, 10
    jb .Lhexdigit_dec
    add edi, 0x27                           # 'a' - '0' - 10
.Lhexdigit_dec:
    add edi, 0x30
    call putc
    pop rdi
    ret

# mmap_type: rdi = physical address -> rax = type of the multiboot mmap entry holding it, 0 if none.
mmap_type:
    push rbx
    push rcx
    push rdx
    mov rbx, [rip + mb_info]
    mov ecx, dword ptr [rbx + 44]           # length
    mov ebx, dword ptr [rbx + 48]           # address
    add rcx, rbx                            # end
    xor eax, eax
.Lmmap_type:
    cmp rbx, rcx
    jae .Lmmap_type_done
    mov rdx, [rbx + 4]                      # base
    cmp rdi, rdx
    jb .Lmmap_type_next
    add rdx, [rbx + 12]                     # end
    cmp rdi, rdx
    jae .Lmmap_type_next
    mov eax, dword ptr [rbx + 20]
    jmp .Lmmap_type_done
.Lmmap_type_next:
    mov edx, dword ptr [rbx]
    lea rbx, [rbx + rdx + 4]
    jmp .Lmmap_type
.Lmmap_type_done:
    pop rdx
    pop rcx
    pop rbx
    ret

.bss
ncpus:      .space 8
mp_config:  .space 8
mp_bsp:     .space 8
mp_ioapic:  .space 8
mp_irq0:    .space 8
rsdp_addr:  .space 8
rsdt_addr:  .space 8
fadt:       .space 8
madt:       .space 8
dsdt:       .space 8
madt_irq9:  .space 8
