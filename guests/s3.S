# s3.S: ACPI S3 (suspend to RAM) and resume, as an operating system does it on QEMU's pc
# machine with SeaBIOS. The guest finds the FADT and FACS through the RSDP, puts a real-mode
# waking vector in the FACS, copies its resume code there, enables the RTC as a wake event (PM1
# enable RTC_EN), arms the RTC alarm for the next second and writes sleep type 1 (the DSDT's \_S3)
# with SLP_EN to PM1 control. The machine sleeps, the alarm wakes it, the platform is reset and
# the firmware jumps to the waking vector in real mode (CS = vector >> 4, IP = vector & 0xF).
# The resume code records what it finds, goes back to long mode, and the checks run: the entry
# state, RAM kept, WAK_STS and RTC_STS in PM1 status, the CMOS shutdown byte the firmware
# cleared, and what the reset did to the PICs, the RTC, the local APIC and the PM I/O decode.
# Written to hold on QEMU too: the alarm follows the host's clock there.
.include "prelude.inc"

.equ WAKE_VECTOR, 0x8004            # CS 0x800, IP 4
.equ STUB_SEG_BASE, 0x8000
.equ SAVE, STUB_SEG_BASE + 0x100    # what the resume code records (CS-relative 0x100)
.equ SAVE_SP, SAVE + 0x00
.equ SAVE_SS, SAVE + 0x02
.equ SAVE_DS, SAVE + 0x04
.equ SAVE_ES, SAVE + 0x06
.equ SAVE_CS, SAVE + 0x08
.equ SAVE_FLAGS, SAVE + 0x0a
.equ SAVE_EAX, SAVE + 0x0c
.equ SAVE_CR0, SAVE + 0x10
.equ SAVE_EBX, SAVE + 0x14
.equ SAVE_ECX, SAVE + 0x18
.equ SAVE_EDX, SAVE + 0x1c
.equ SAVE_ESI, SAVE + 0x20
.equ SAVE_EDI, SAVE + 0x24
.equ SAVE_EBP, SAVE + 0x28
.equ SAVE_IP, SAVE + 0x2c
.equ SAVE_GDTR, SAVE + 0x40          # the GDT pointer the resume code loads

.equ SIG_FACP, 0x50434146
.equ SIG_FACS, 0x53434146
.equ PM1_RTC_EN, 0x0400
.equ PM1_WAK_STS, 0x8000
.equ PM1_RTC_STS, 0x0400
.equ SLP_TYP_S3, 1
.equ SLP_EN, 0x2000
.equ PCI_PM_FN, 0x80000b00          # bus 0, device 1, function 3 (PIIX4 PM)
.equ APIC, 0xfee00000

.macro pci_rd reg
    mov eax, PCI_PM_FN + \reg
    mov dx, 0xcf8
    out dx, eax
    mov dx, 0xcfc
    in eax, dx
.endm
.macro show name, value
    print "# \name "
    push rdi
    mov rdi, \value
    call puthex64
    pop rdi
    call newline
.endm

main:
    # ---- the tables: RSDP in the BIOS area, RSDT, FADT, FACS ----
    mov rsi, 0xe0000
    mov rax, 0x2052545020445352              # "RSD PTR "
.Lscan:
    cmp [rsi], rax
    je .Lrsdp
    add rsi, 16
    cmp rsi, 0x100000
    jb .Lscan
    print "Bail out! no RSDP\n"
    jmp report
.Lrsdp:
    mov r12d, [rsi + 16]                     # RSDT
    mov ecx, [r12 + 4]
    lea r14, [r12 + rcx]
    lea r13, [r12 + 36]
.Lrsdt:
    cmp r13, r14
    jae .Lno_fadt
    mov eax, [r13]
    cmp dword ptr [rax], SIG_FACP
    je .Lfadt
    add r13, 4
    jmp .Lrsdt
.Lno_fadt:
    print "Bail out! no FADT\n"
    jmp report
.Lfadt:
    mov ebx, [rax + 36]                      # FIRMWARE_CTRL: the FACS
    mov [rip + facs], rbx
    mov ecx, [rax + 56]                      # PM1a_EVT_BLK
    mov [rip + pm1_evt], rcx
    mov ecx, [rax + 64]                      # PM1a_CNT_BLK
    mov [rip + pm1_cnt], rcx
    mov eax, [rbx]
    check_eq rax, SIG_FACS, "the FADT's FIRMWARE_CTRL points at the FACS"

    # ---- the waking vector, the resume code, the GDT pointer it loads ----
    mov dword ptr [rbx + 12], WAKE_VECTOR
    lea rsi, [rip + stub_start]
    mov edi, WAKE_VECTOR
    mov ecx, stub_end - stub_start
    rep movsb
    lea rsi, [rip + gdt_ptr]
    mov edi, SAVE_GDTR
    mov ecx, 6
    rep movsb
    mov rax, 0x5a5aa5a5c3c33c3c
    mov [rip + marker], rax
    mov [rip + saved_rsp], rsp

    # ---- wake event: the RTC alarm at the next second (every byte don't-care) ----
    mov rdx, [rip + pm1_evt]
    add edx, 2
    mov ax, PM1_RTC_EN
    out dx, ax
    cmos_rd 0x0c
    cmos_wr 0x01, 0xc0
    cmos_wr 0x03, 0xc0
    cmos_wr 0x05, 0xc0
    cmos_wr 0x0b, 0x72                       # PIE, AIE, UIE, 24-hour, BCD

    # ---- sleep ----
    mov byte ptr [rip + after_sleep], 0
    mov rdx, [rip + pm1_cnt]
    mov ax, SLP_TYP_S3 << 10 | SLP_EN
    out dx, ax
    mov byte ptr [rip + after_sleep], 1      # must not run: the machine sleeps at the OUT
1:  pause
    jmp 1b

.Lresumed:
    # ---- the state at the waking vector ----
    movzx eax, word ptr [SAVE_CS]
    check_eq rax, WAKE_VECTOR >> 4, "the firmware enters the waking vector with CS = vector >> 4"
    movzx eax, word ptr [SAVE_IP]
    lea rcx, [rip + stub_ip]                 # the IP the resume code's CALL pushed
    lea rdx, [rip + stub_start]
    sub rcx, rdx
    add rcx, WAKE_VECTOR & 0xf
    check_eq rax, rcx, "and IP = vector & 0xF"
    mov eax, [SAVE_CR0]
    check_mask rax, 0x80000001, 0, "in real mode: CR0.PE and CR0.PG clear"
    movzx eax, word ptr [SAVE_FLAGS]
    check_mask rax, 0x200, 0, "with interrupts disabled"
    mov rax, [rip + efer_at_resume]
    check_mask rax, 0x500, 0, "EFER.LME and LMA cleared by the reset"
    mov rax, [rip + marker]
    check_eq rax, 0x5a5aa5a5c3c33c3c, "RAM is kept across the sleep"
    mov eax, [SAVE_CR0]
    mov eax, [SAVE_CR0]
    check_eq rax, 0x10, "CR0 = ET only (caches enabled)"
    movzx eax, word ptr [SAVE_FLAGS]
    check_eq rax, 2, "FLAGS = 2"
    movzx eax, word ptr [SAVE_DS]
    movzx ecx, word ptr [SAVE_ES]
    or eax, ecx
    movzx ecx, word ptr [SAVE_SS]
    or eax, ecx
    check_eq rax, 0, "DS, ES and SS are 0"
    mov eax, [SAVE_EAX]
    or eax, [SAVE_EBX]
    or eax, [SAVE_ECX]
    or eax, [SAVE_EDX]
    or eax, [SAVE_ESI]
    or eax, [SAVE_EDI]
    or eax, [SAVE_EBP]
    check_eq rax, 0, "the general registers are 0"
    movzx eax, word ptr [SAVE_SP]
    check_eq rax, 0xf70, "SP is where the firmware's resume stack left it"
    movzx eax, byte ptr [rip + after_sleep]
    show "instructions after the SLP_EN write ran:", rax

    # ---- the firmware's resume path and the reset, as the devices show them ----
    cmos_rd 0x0f
    check_eq rax, 0, "the firmware cleared the CMOS shutdown status (0xFE on the way)"
    cmos_rd 0x0b
    check_eq rax, 0x12, "the reset cleared the RTC's PIE and AIE, not UIE"
    in al, 0x21
    movzx eax, al
    check_eq rax, 0xfb, "the firmware masks every master 8259 input but the cascade"
    in al, 0xa1
    movzx eax, al
    check_eq rax, 0xff, "and every slave input"
    mov eax, [APIC + 0xf0]
    check_eq rax, 0x1ff, "the firmware enables the local APIC again (SVR) as at boot"
    mov eax, [APIC + 0x350]
    check_eq rax, 0x8700, "LINT0 is the virtual wire again"
    pci_rd 0x80
    and eax, 0xff
    check_eq rax, 1, "the PM I/O decode is still on (PIIX4 PMREGMISC)"
    mov rdx, [rip + pm1_evt]
    in ax, dx
    movzx eax, ax
    check_mask rax, PM1_WAK_STS | PM1_RTC_STS, PM1_WAK_STS | PM1_RTC_STS, "WAK_STS and RTC_STS set: the RTC woke the machine"
    add edx, 2
    in ax, dx
    movzx eax, ax
    check_eq rax, 0, "the reset cleared PM1 enable"
    mov rdx, [rip + pm1_cnt]
    in ax, dx
    movzx eax, ax
    check_eq rax, 0, "and PM1 control"
    ret

# ---- the resume code: 16-bit, position-independent within its segment ----
stub_start:
    .byte 0x2e, 0x89, 0x26; .word SAVE_SP - STUB_SEG_BASE          # mov cs:[SP], sp
    .byte 0x2e, 0x8c, 0x16; .word SAVE_SS - STUB_SEG_BASE          # mov cs:[SS], ss
    .byte 0x2e, 0x8c, 0x1e; .word SAVE_DS - STUB_SEG_BASE          # mov cs:[DS], ds
    .byte 0x2e, 0x8c, 0x06; .word SAVE_ES - STUB_SEG_BASE          # mov cs:[ES], es
    .byte 0x2e, 0x8c, 0x0e; .word SAVE_CS - STUB_SEG_BASE          # mov cs:[CS], cs
    .byte 0x66, 0x2e, 0xa3; .word SAVE_EAX - STUB_SEG_BASE         # mov cs:[EAX], eax
    .byte 0x66, 0x2e, 0x89, 0x1e; .word SAVE_EBX - STUB_SEG_BASE   # mov cs:[EBX], ebx
    .byte 0x66, 0x2e, 0x89, 0x0e; .word SAVE_ECX - STUB_SEG_BASE   # mov cs:[ECX], ecx
    .byte 0x66, 0x2e, 0x89, 0x16; .word SAVE_EDX - STUB_SEG_BASE   # mov cs:[EDX], edx
    .byte 0x66, 0x2e, 0x89, 0x36; .word SAVE_ESI - STUB_SEG_BASE   # mov cs:[ESI], esi
    .byte 0x66, 0x2e, 0x89, 0x3e; .word SAVE_EDI - STUB_SEG_BASE   # mov cs:[EDI], edi
    .byte 0x66, 0x2e, 0x89, 0x2e; .word SAVE_EBP - STUB_SEG_BASE   # mov cs:[EBP], ebp
    .byte 0x9c                                                     # pushf
    .byte 0x2e, 0x8f, 0x06; .word SAVE_FLAGS - STUB_SEG_BASE       # pop cs:[FLAGS]
    .byte 0x0f, 0x20, 0xc0                                         # mov eax, cr0
    .byte 0x66, 0x2e, 0xa3; .word SAVE_CR0 - STUB_SEG_BASE         # mov cs:[CR0], eax
    .byte 0xe8, 0x00, 0x00                                         # call next
stub_ip:
    .byte 0x58                                                     # pop ax: IP of this byte
    .byte 0x2e, 0xa3; .word SAVE_IP - STUB_SEG_BASE                # mov cs:[IP], ax
    .byte 0xfa                                                     # cli
    .byte 0x66, 0x2e, 0x0f, 0x01, 0x16; .word SAVE_GDTR - STUB_SEG_BASE  # lgdt cs:[GDTR]
    .byte 0x0f, 0x20, 0xc0                                         # mov eax, cr0
    .byte 0x66, 0x83, 0xc8, 0x01                                   # or eax, 1
    .byte 0x0f, 0x22, 0xc0                                         # mov cr0, eax
    .byte 0x66, 0xea; .long resume32; .word SEL_CODE32             # jmp far 0x18:resume32
stub_end:

.code32
resume32:
    mov ax, SEL_DATA
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov ecx, MSR_EFER
    rdmsr
    mov [efer_at_resume], eax
    mov eax, cr4                             # long mode again, with the prelude's page tables
    or eax, 0x20
    mov cr4, eax
    mov eax, offset pml4
    mov cr3, eax
    mov ecx, MSR_EFER
    rdmsr
    or eax, 0x100
    wrmsr
    mov eax, cr0
    or eax, 0x80010001
    mov cr0, eax
    ljmp SEL_CODE64:resume64
.code64
resume64:
    mov ax, SEL_DATA
    mov ds, ax
    mov es, ax
    mov ss, ax
    xor eax, eax
    mov fs, ax
    mov gs, ax
    mov rsp, [rip + saved_rsp]
    lidt [rip + idt_ptr]
    and byte ptr [rip + gdt_tss + 5], 0xfd   # the TSS descriptor is busy from the first LTR
    mov ax, SEL_TSS
    ltr ax
    jmp .Lresumed

.data
.align 8
facs:           .quad 0
pm1_evt:        .quad 0
pm1_cnt:        .quad 0
marker:         .quad 0
saved_rsp:      .quad 0
efer_at_resume: .quad 0
after_sleep:    .byte 0
