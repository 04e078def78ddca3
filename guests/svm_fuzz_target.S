# svm_fuzz_target.S: an L1 hypervisor with a planted bug in its VMMCALL exit handler, the target
# of the fuzzing recipe in README.md ("Fuzzing").
#
# L2 reads one request from `fuzz_input` (u8 index, then u32 command) and makes a hypercall:
# VMMCALL with RAX = command, RBX = index. L1's handler answers "PING" and, for the command
# "SVM!", resets one of its 16 per-hypercall statistics counters: stats[index] = 0. The bounds
# check is off by one (index <= 16 passes), and stats[16] is the copy of L1's IDTR that the exit
# path reloads after every #VMEXIT (a habit carried over from VMX, where VM exits truncate the
# IDT limit). So "SVM!" with index 16 zeroes L1's IDT limit; the next exception L1 takes
# (its own closing self-check expects a #GP) cannot be delivered, nor can the #DF: triple fault.
# `fuzz_done` follows that self-check, before any output: a fuzzer can end each input there.
# With the benign request in the image ("PING"), every check passes on svmemu and on QEMU.
#
# `shared_load` is called by L2 and by L1 at the same address: coverage keeps the two apart.
.include "prelude.inc"

.equ VMCB, 0x800000
.equ HSAVE, 0x801000
.equ L2_STACK, 0x820000
.equ MSR_EFER, 0xC0000080
.equ MSR_VM_HSAVE_PA, 0xC0010117

.equ V_INTERCEPT_EXC, 0x008
.equ V_INTERCEPT_MISC1, 0x00C
.equ V_INTERCEPT_MISC2, 0x010
.equ V_ASID, 0x058
.equ V_EXITCODE, 0x070
.equ V_ES, 0x400
.equ V_CS, 0x410
.equ V_SS, 0x420
.equ V_DS, 0x430
.equ V_GDTR, 0x460
.equ V_IDTR, 0x480
.equ V_EFER, 0x4D0
.equ V_CR4, 0x548
.equ V_CR3, 0x550
.equ V_CR0, 0x558
.equ V_DR7, 0x560
.equ V_DR6, 0x568
.equ V_RFLAGS, 0x570
.equ V_RIP, 0x578
.equ V_RSP, 0x5D8
.equ V_RAX, 0x5F8
.equ V_GPAT, 0x668

.equ EXIT_VMMCALL, 0x81
.equ EXIT_HLT, 0x78
.equ NSTATS, 16

.macro set_seg off, selattr
    mov dword ptr [rdi + \off], \selattr
    mov dword ptr [rdi + \off + 4], 0xFFFFFFFF
    mov qword ptr [rdi + \off + 8], 0
.endm

main:
    mov ecx, MSR_EFER
    rdmsr
    or eax, 0x1000
    wrmsr
    mov ecx, MSR_VM_HSAVE_PA
    mov eax, HSAVE
    xor edx, edx
    wrmsr
    sidt [rip + host_idtr]
    mov rax, [rip + default_request]
    mov [rip + fuzz_input], rax
    mov rax, [rip + default_request + 8]
    mov [rip + fuzz_input + 8], rax

    mov rdi, VMCB
    xor eax, eax
    mov ecx, 512
    rep stosq
    mov rdi, VMCB
    mov dword ptr [rdi + V_INTERCEPT_MISC1], 0x01000000    # HLT
    mov dword ptr [rdi + V_INTERCEPT_MISC2], 0x3           # VMRUN, VMMCALL
    mov dword ptr [rdi + V_ASID], 1
    set_seg V_CS, 0x0A9B0008
    set_seg V_DS, 0x0C930010
    set_seg V_ES, 0x0C930010
    set_seg V_SS, 0x0C930010
    sub rsp, 16
    sgdt [rsp]
    movzx eax, word ptr [rsp]
    mov [rdi + V_GDTR + 4], eax
    mov rax, [rsp + 2]
    mov [rdi + V_GDTR + 8], rax
    sidt [rsp]
    movzx eax, word ptr [rsp]
    mov [rdi + V_IDTR + 4], eax
    mov rax, [rsp + 2]
    mov [rdi + V_IDTR + 8], rax
    add rsp, 16
    mov ecx, MSR_EFER
    rdmsr
    mov [rdi + V_EFER], eax
    mov rax, cr0
    mov [rdi + V_CR0], rax
    mov rax, cr3
    mov [rdi + V_CR3], rax
    mov rax, cr4
    mov [rdi + V_CR4], rax
    mov qword ptr [rdi + V_RFLAGS], 2
    lea rax, [rip + l2_entry]
    mov [rdi + V_RIP], rax
    mov rax, L2_STACK
    mov [rdi + V_RSP], rax
    mov eax, 0xFFFF0FF0
    mov [rdi + V_DR6], rax
    mov qword ptr [rdi + V_DR7], 0x400
    mov rax, 0x0007040600070406
    mov [rdi + V_GPAT], rax

# The exit loop: run L2 until it halts.
.Lrun:
    mov rax, VMCB
    vmrun
    lidt [rip + host_idtr]                 # restore the host IDTR (see the header)
    mov rdi, VMCB + V_EXITCODE
    call shared_load
    cmp rax, EXIT_VMMCALL
    jne .Lnot_vmmcall
    call handle_vmmcall
    mov rdi, VMCB
    add qword ptr [rdi + V_RIP], 3
    jmp .Lrun
.Lnot_vmmcall:
    mov [rip + last_exit], rax
    # L1's own closing self-check: VMRUN with a misaligned VMCB address raises #GP.
    expect_fault .Lgp
    mov rax, VMCB + 8
    vmrun
.Lgp:
fuzz_done:
    check_eq [last_exit], EXIT_HLT, "L2 ends with HLT"
    check_eq [hc_count], 1, "L2 made one hypercall"
    check_eq [last_answer], 0x474e4f50, "PING answered with PONG"
    check_eq [fault_vector], 13, "VMRUN with a misaligned rAX raises #GP"
    ret

# handle_vmmcall: L2's RAX (from the VMCB) is the command, its RBX (live: #VMEXIT leaves L2's
# RBX in place) the index.
handle_vmmcall:
    inc qword ptr [rip + hc_count]
    mov rdi, VMCB + V_RAX
    call shared_load
    cmp eax, 0x474e4950                      # "PING"
    jne .Lhc_svm
    mov qword ptr [rip + last_answer], 0x474e4f50    # "PONG"
    ret
.Lhc_svm:                                    # "SVM!", one byte at a time
    cmp al, 0x53
    jne .Lhc_bad
    cmp ah, 0x56
    jne .Lhc_bad
    shr eax, 16
    cmp al, 0x4d
    jne .Lhc_bad
    cmp ah, 0x21
    jne .Lhc_bad
    cmp rbx, NSTATS                          # BUG: must be jae (index 16 is out of bounds)
    ja .Lhc_bad
    lea rcx, [rip + stats]
    mov qword ptr [rcx + rbx * 8], 0
    mov qword ptr [rip + last_answer], 1
    ret
.Lhc_bad:
    mov qword ptr [rip + last_answer], -1
    ret

# shared_load: rax = qword [rdi]. Called by L1 and by L2.
shared_load:
    mov rax, [rdi]
    ret

l2_entry:
    lea rdi, [rip + fuzz_input]
    call shared_load
    movzx ebx, al
    shr rax, 8
    mov eax, eax
    vmmcall
    hlt

default_request:
    .byte 3
    .ascii "PING"
    .byte 0, 0, 0
    .quad 0

.bss
.align 16
fuzz_input:     .space 16                  # the request L2 sends; a fuzzer writes here
hc_count:       .space 8
last_exit:      .space 8
last_answer:    .space 8
.align 16
stats:          .space NSTATS * 8
host_idtr:      .space 16
.text
