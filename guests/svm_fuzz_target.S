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
.include "svm.inc"

.equ NSTATS, 16

main:
    call svm_enable
    sidt [rip + host_idtr]
    mov rax, [rip + default_request]
    mov [rip + fuzz_input], rax
    mov rax, [rip + default_request + 8]
    mov [rip + fuzz_input + 8], rax

    lea rdi, [rip + l2_entry]
    call vmcb_init                                          # VMRUN and VMMCALL intercepted
    mov rdi, VMCB
    mov dword ptr [rdi + V_INTERCEPT_MISC1], I1_HLT

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
