# smp.S: several CPUs, as a kernel starts and uses them (run with -smp 4 to 8, on QEMU too).
# The boot CPU reads the CPU count from fw_cfg, copies a real-mode start-up trampoline to
# 0x7000 and wakes the application processors with INIT and a start-up IPI (vector 7), both
# broadcast to all excluding self, as kvm-unit-tests and Linux do. Each AP goes real mode ->
# protected mode -> long mode on the boot CPU's page tables, takes a stack by its APIC ID,
# checks that CPUID's initial APIC ID is its APIC ID register, counts itself in with a LOCK XADD
# and prints one line under a spinlock, then waits for interrupts with IF=1.
# Checks: every AP arrived; their IDs are 1..N-1 (sum); each AP's CPUID and APIC ID agree and
# IA32_APIC_BASE.BSP is clear on it; a LOCK INC loop on one counter from every CPU loses no
# increment; an IPI ping-pong (fixed, physical destination) between the boot CPU and CPU 1;
# a fixed IPI to all excluding self reaches every AP once; a logical (flat) destination reaches
# just the APs it names; an NMI IPI reaches CPU 2's NMI handler; a second SIPI to a running AP
# is ignored; code the boot CPU keeps running, rewritten by CPU 1, runs as rewritten; the boot
# CPU and CPU 1 each run an L1 hypervisor at once (own VMCB and host-save area), whose L2s make
# VMMCALLs that exit to their own L1 only.
.include "prelude.inc"
.include "svm.inc"

.equ APIC, 0xfee00000
.equ APIC_ID, 0x20
.equ APIC_EOI, 0xb0
.equ APIC_LDR, 0xd0
.equ APIC_DFR, 0xe0
.equ APIC_SVR, 0xf0
.equ APIC_ICR_LO, 0x300
.equ APIC_ICR_HI, 0x310
.equ MSR_APIC_BASE, 0x1b
.equ FW_CFG_PORT_SEL, 0x510
.equ FW_CFG_PORT_DATA, 0x511
.equ FW_CFG_NB_CPUS, 0x05
.equ TRAMPOLINE, 0x7000                    # SIPI vector 7
.equ TRAMP_GDTPTR, 0x7f00
.equ ICR_ALLBUT_INIT, 0xc4500              # all excluding self, level assert, INIT
.equ ICR_ALLBUT_SIPI, 0xc4600              # all excluding self, start-up
.equ ICR_ALLBUT_FIXED, 0xc4000             # all excluding self, fixed
.equ ICR_PHYS_FIXED, 0x4000                # destination in ICR_HI, fixed
.equ ICR_LOGICAL_FIXED, 0x4800             # logical destination, fixed
.equ ICR_PHYS_NMI, 0x4400
.equ ICR_PHYS_SIPI, 0x4600
.equ VEC_PING, 0x40                        # boot CPU -> CPU 1
.equ VEC_PONG, 0x41                        # CPU 1 -> boot CPU
.equ VEC_BCAST, 0x42
.equ VEC_LOGICAL, 0x43
.equ PINGS, 50
.equ INCS, 2000
.equ MAX_CPUS, 8
.equ SVM_ROUNDS, 200
.equ CPU_VMCB, 0xa00000                    # + 0x1000 * CPU: each L1's VMCB,
.equ CPU_HSAVE, 0xa10000                   # host-save area
.equ CPU_L2_STACK, 0xa21000                # and L2 stack top

# r15 holds the APIC page's address in every CPU's code and handler (absolute 32-bit
# addresses would be sign-extended).
# icr DEST, LOW: send an IPI (destination APIC ID in bits 63:56 of the ICR). Clobbers eax.
.macro icr dest, low
    mov eax, \dest
    shl eax, 24
    mov dword ptr [r15 + APIC_ICR_HI], eax
    mov eax, \low
    mov dword ptr [r15 + APIC_ICR_LO], eax
.endm

# handler_entry / handler_exit: save rax, rcx, r15 and point r15 at the APIC.
.macro handler_entry
    push rax
    push rcx
    push r15
    mov r15d, APIC
.endm
.macro handler_exit
    mov dword ptr [r15 + APIC_EOI], 0
    pop r15
    pop rcx
    pop rax
    iretq
.endm

main:
    mov r15d, APIC
    mov al, 0xff                           # mask the 8259s: only IPIs interrupt
    out 0x21, al
    out 0xa1, al
    # how many CPUs
    mov dx, FW_CFG_PORT_SEL
    mov ax, FW_CFG_NB_CPUS
    out dx, ax
    mov dx, FW_CFG_PORT_DATA
    xor eax, eax
    in al, dx
    mov [rip + ncpus], rax
    xor ecx, ecx                           # 4 <= N <= MAX_CPUS: the checks below need it
    cmp rax, 4
    setae cl
    xor edx, edx
    cmp rax, MAX_CPUS
    setbe dl
    and ecx, edx
    check_eq rcx, 1, "fw_cfg reports 4 to 8 CPUs"
    set_idt_handler VEC_PONG, pong_handler
    set_idt_handler VEC_BCAST, bcast_handler
    set_idt_handler VEC_LOGICAL, logical_handler
    set_idt_handler VEC_PING, ping_handler
    set_idt_handler 2, nmi_handler
    mov dword ptr [r15 + APIC_SVR], 0x1ff
    mov dword ptr [r15 + APIC_DFR], 0xffffffff
    mov dword ptr [r15 + APIC_LDR], 0x01000000

    # the trampoline and its GDT pointer below 1 MiB
    lea rsi, [rip + ap_tramp]
    mov edi, TRAMPOLINE
    mov ecx, ap_tramp_end - ap_tramp
    rep movsb
    lea rsi, [rip + gdt_ptr]
    mov edi, TRAMP_GDTPTR
    mov ecx, 6
    rep movsb

    icr 0, ICR_ALLBUT_INIT
    mov ecx, 10000                         # a delay between INIT and SIPI, as kernels keep
.Ldelay:
    pause
    loop .Ldelay
    icr 0, ICR_ALLBUT_SIPI + (TRAMPOLINE >> 12)

    mov rbx, [rip + ncpus]
    dec rbx
.Lwait_aps:
    pause
    cmp [rip + arrived], rbx
    jne .Lwait_aps
    check_eq "qword ptr [rip + arrived]", rbx, "every AP arrived"
    mov rax, [rip + ncpus]
    mov rcx, rax
    dec rcx
    imul rax, rcx
    shr rax, 1
    check_eq "qword ptr [rip + id_sum]", rax, "the APs' APIC IDs are 1..N-1"
    check_eq "qword ptr [rip + id_mismatch]", 0, "each AP's CPUID initial APIC ID is its APIC ID"
    check_eq "qword ptr [rip + bsp_flag_seen]", 0, "IA32_APIC_BASE.BSP is clear on every AP"

    # Every CPU increments one counter INCS times with LOCK INC: none is lost.
    mov qword ptr [rip + go_inc], 1
    mov ecx, INCS
.Linc:
    lock inc qword ptr [rip + shared_count]
    loop .Linc
    mov rax, [rip + ncpus]
    imul rax, rax, INCS
.Lwait_inc:
    pause
    cmp [rip + shared_count], rax
    jne .Lwait_inc
    check_eq "qword ptr [rip + shared_count]", rax, "LOCK INC from every CPU loses no increment"
    sti

    # Ping-pong with CPU 1: each ping (fixed IPI) is answered by a pong before the next.
    xor ebx, ebx
.Lping:
    mov rax, [rip + pongs]
    mov [rip + pong_before], rax
    icr 1, ICR_PHYS_FIXED + VEC_PING
.Lwait_pong:
    cli                                    # look, then STI; HLT: no pong slips in between
    mov rax, [rip + pongs]
    cmp rax, [rip + pong_before]
    jne .Lponged
    sti
    hlt
    jmp .Lwait_pong
.Lponged:
    sti
    inc ebx
    cmp ebx, PINGS
    jb .Lping
    check_eq "qword ptr [rip + pings]", PINGS, "CPU 1 took every ping"
    check_eq "qword ptr [rip + pongs]", PINGS, "the boot CPU took every pong"

    # Broadcast to all excluding self: every AP once, not the boot CPU.
    icr 0, ICR_ALLBUT_FIXED + VEC_BCAST
    mov rbx, [rip + ncpus]
    dec rbx
.Lwait_bcast:
    pause
    cmp [rip + bcast_mask_count], rbx
    jne .Lwait_bcast
    mov rcx, [rip + ncpus]
    mov eax, 1
    shl rax, cl
    sub rax, 2                             # bits 1..N-1
    check_eq "qword ptr [rip + bcast_mask]", rax, "all-excluding-self reached each AP, not self"

    # Logical flat destination 0x0C: CPUs 2 and 3 (each AP set LDR = 1 << (24 + id)).
    icr 0x0c, ICR_LOGICAL_FIXED + VEC_LOGICAL
.Lwait_logical:
    pause
    cmp qword ptr [rip + logical_count], 2
    jb .Lwait_logical
    mov ecx, 1000
.Lsettle:
    pause
    loop .Lsettle
    check_eq "qword ptr [rip + logical_mask]", 0x0c, "logical destination 0x0C reached CPUs 2 and 3"

    # NMI to CPU 2.
    icr 2, ICR_PHYS_NMI
.Lwait_nmi:
    pause
    cmp qword ptr [rip + nmi_cpu], 0
    je .Lwait_nmi
    check_eq "qword ptr [rip + nmi_cpu]", 2, "an NMI IPI reached CPU 2's NMI handler"

    # A SIPI to a running AP is ignored: CPU 3 keeps its place (it would print again).
    mov rax, [rip + arrived]
    mov [rip + arrived_before], rax
    icr 3, ICR_PHYS_SIPI + (TRAMPOLINE >> 12)
    mov ecx, 20000
.Lsipi_wait:
    pause
    loop .Lsipi_wait
    mov rax, [rip + arrived_before]
    check_eq "qword ptr [rip + arrived]", rax, "a SIPI to a running AP is ignored"

    # Cross-modification: the boot CPU runs patched_fn until CPU 1 has rewritten it.
    mov qword ptr [rip + go_patch], 1
.Lrun_old:
    call patched_fn
    cmp qword ptr [rip + patch_done], 0
    je .Lrun_old
    call patched_fn
    check_eq rax, 2, "code rewritten by CPU 1 runs as rewritten on the boot CPU"

    # Nested SVM on two CPUs at once. vmcb_init builds a template VMCB (svm.inc) that each L1
    # copies into its own; then the boot CPU and CPU 1 run their L2s concurrently.
    call svm_enable
    lea rdi, [rip + l2_entry]
    call vmcb_init
    mov qword ptr [rip + go_svm], 1
    xor edi, edi
    call l1_run
    mov [rip + svm_exits], rax
.Lwait_svm:
    pause
    cmp qword ptr [rip + svm_exits + 8], 0
    je .Lwait_svm
    check_eq "qword ptr [rip + svm_exits]", SVM_ROUNDS, "the boot CPU's L1 took each VMMCALL of its L2"
    check_eq "qword ptr [rip + svm_exits + 8]", SVM_ROUNDS, "CPU 1's L1 took each VMMCALL of its L2"
    mov rax, [rip + l2_runs]
    mov rcx, [rip + l2_runs + 8]
    shl rcx, 32
    or rax, rcx
    check_eq rax, (SVM_ROUNDS << 32) | SVM_ROUNDS, "each L2 ran on its own CPU, once per VMRUN"
    cli
    ret

# l1_run (edi = CPU): EFER.SVME, this CPU's host-save area and VMCB (the template's copy with
# its own L2 stack), then SVM_ROUNDS VMRUNs, each ending in L2's VMMCALL. Returns in rax the
# VMMCALL exits seen (an exit of another kind ends the loop). L2 clobbers every GPR but RAX and
# RSP: the loop keeps its state on the stack.
l1_run:
    push rbx
    push r12
    push r13
    mov ecx, MSR_EFER
    rdmsr
    or eax, 0x1000
    wrmsr
    mov r12d, edi
    shl r12d, 12
    lea eax, [r12 + CPU_HSAVE]
    xor edx, edx
    mov ecx, MSR_VM_HSAVE_PA
    wrmsr
    lea r13, [r12 + CPU_VMCB]
    mov rdi, r13
    mov esi, VMCB
    mov ecx, 512
    rep movsq
    lea rax, [r12 + CPU_L2_STACK]
    mov [r13 + V_RSP], rax
    push r13                               # [rsp + 8]: the VMCB
    push 0                                 # [rsp]: exits seen
.Ll1_round:
    mov rax, [rsp + 8]
    vmrun
    mov rdi, [rsp + 8]
    cmp dword ptr [rdi + V_EXITCODE], 0x81  # VMMCALL
    jne .Ll1_done
    add qword ptr [rdi + V_RIP], 3
    inc qword ptr [rsp]
    cmp qword ptr [rsp], SVM_ROUNDS
    jb .Ll1_round
.Ll1_done:
    pop rax
    add rsp, 8
    pop r13
    pop r12
    pop rbx
    ret

# L2: count a run on this CPU (CPUID's APIC ID, answered by L0), then VMMCALL to its L1.
l2_entry:
    mov eax, 1
    cpuid
    shr ebx, 24
    lea rcx, [rip + l2_runs]
    lock inc qword ptr [rcx + rbx * 8]
    vmmcall
    jmp l2_entry

patched_fn:
    mov eax, 1
    ret

ping_handler:
    handler_entry
    lock inc qword ptr [rip + pings]
    icr 0, ICR_PHYS_FIXED + VEC_PONG
    handler_exit

pong_handler:
    handler_entry
    lock inc qword ptr [rip + pongs]
    handler_exit

bcast_handler:
    handler_entry
    mov ecx, dword ptr [r15 + APIC_ID]
    shr ecx, 24
    lock bts qword ptr [rip + bcast_mask], rcx
    lock inc qword ptr [rip + bcast_mask_count]
    handler_exit

logical_handler:
    handler_entry
    mov ecx, dword ptr [r15 + APIC_ID]
    shr ecx, 24
    lock bts qword ptr [rip + logical_mask], rcx
    lock inc qword ptr [rip + logical_count]
    handler_exit

nmi_handler:                               # no EOI for an NMI
    push rax
    push r15
    mov r15d, APIC
    mov eax, dword ptr [r15 + APIC_ID]
    shr eax, 24
    mov [rip + nmi_cpu], rax
    pop r15
    pop rax
    iretq

# ---- the application processors ------------------------------------------------------------
# Real mode at 0x7000 (copied there): load the GDT, enter protected mode, jump to the image.
ap_tramp:
    .byte 0xfa                             # cli
    .byte 0x31, 0xc0                       # xor ax, ax
    .byte 0x8e, 0xd8                       # mov ds, ax
    .byte 0x66, 0x0f, 0x01, 0x16           # lgdt [TRAMP_GDTPTR] (32-bit base)
    .word TRAMP_GDTPTR
    .byte 0x0f, 0x20, 0xc0                 # mov eax, cr0
    .byte 0x0c, 0x01                       # or al, 1 (PE)
    .byte 0x0f, 0x22, 0xc0                 # mov cr0, eax
    .byte 0x66, 0xea                       # ljmp SEL_CODE32:ap_start32 (32-bit offset)
    .long ap_start32
    .word SEL_CODE32
ap_tramp_end:

.code32
ap_start32:
    mov ax, SEL_DATA
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov eax, cr4
    or eax, 0x20
    mov cr4, eax
    mov eax, offset pml4
    mov cr3, eax
    mov ecx, MSR_EFER
    rdmsr
    or eax, 0x100
    wrmsr
    mov eax, cr0
    and eax, 0x9fffffff                    # caches on (INIT left CD and NW set)
    or eax, 0x80010001
    mov cr0, eax
    ljmp SEL_CODE64:ap_start64

.code64
ap_start64:
    mov ax, SEL_DATA
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov eax, 1
    cpuid
    shr ebx, 24                            # initial APIC ID
    mov eax, ebx
    inc eax
    shl eax, 12
    lea rsp, [rip + ap_stacks]
    add rsp, rax
    lidt [rip + idt_ptr]
    mov r15d, APIC
    mov r12, rbx
    # CPUID's initial APIC ID is the APIC ID register; BSP flag clear
    mov eax, dword ptr [r15 + APIC_ID]
    shr eax, 24
    cmp rax, r12
    je .Lap_id_ok
    lock inc qword ptr [rip + id_mismatch]
.Lap_id_ok:
    mov ecx, MSR_APIC_BASE
    rdmsr
    test eax, 0x100
    jz .Lap_bsp_ok
    lock inc qword ptr [rip + bsp_flag_seen]
.Lap_bsp_ok:
    mov dword ptr [r15 + APIC_SVR], 0x1ff
    mov dword ptr [r15 + APIC_DFR], 0xffffffff
    mov ecx, r12d
    add ecx, 24
    mov eax, 1
    shl eax, cl
    mov dword ptr [r15 + APIC_LDR], eax
    call ap_lock
    print "# AP "
    mov rdi, r12
    call putdec
    print " up\n"
    call ap_unlock
    lock add [rip + id_sum], r12
    lock inc qword ptr [rip + arrived]
.Lap_wait_inc:
    pause
    cmp qword ptr [rip + go_inc], 0
    je .Lap_wait_inc
    mov ecx, INCS
.Lap_inc:
    lock inc qword ptr [rip + shared_count]
    loop .Lap_inc
    sti
    cmp r12, 1
    je .Lap_patcher
.Lap_idle:
    hlt
    jmp .Lap_idle

# CPU 1 waits (interrupts on: it answers pings meanwhile) for the boot CPU to run patched_fn
# in its loop, then rewrites the immediate of its `mov eax, 1` to 2.
.Lap_patcher:
    pause
    cmp qword ptr [rip + go_patch], 0
    je .Lap_patcher
.Lap_patch:
    mov ecx, 5000
.Lap_patch_delay:
    pause
    loop .Lap_patch_delay
    mov byte ptr [rip + patched_fn + 1], 2
    mov qword ptr [rip + patch_done], 1
.Lap_wait_svm:
    pause
    cmp qword ptr [rip + go_svm], 0
    je .Lap_wait_svm
    mov edi, 1
    call l1_run
    mov [rip + svm_exits + 8], rax
    jmp .Lap_idle

ap_lock:
    mov eax, 1
    xchg [rip + print_lock], rax
    test rax, rax
    jz .Lap_locked
    pause
    jmp ap_lock
.Lap_locked:
    ret

ap_unlock:
    mov qword ptr [rip + print_lock], 0
    ret

.bss
.align 4096
ap_stacks:      .space 4096 * (MAX_CPUS + 1)
.align 8
ncpus:          .space 8
arrived:        .space 8
arrived_before: .space 8
id_sum:         .space 8
id_mismatch:    .space 8
bsp_flag_seen:  .space 8
go_inc:         .space 8
shared_count:   .space 8
pings:          .space 8
pongs:          .space 8
pong_before:    .space 8
bcast_mask:     .space 8
bcast_mask_count: .space 8
logical_mask:   .space 8
logical_count:  .space 8
nmi_cpu:        .space 8
go_patch:       .space 8
patch_done:     .space 8
print_lock:     .space 8
go_svm:         .space 8
svm_exits:      .space 16                  # per CPU (0, 1)
l2_runs:        .space 8 * MAX_CPUS        # per APIC ID
.text
