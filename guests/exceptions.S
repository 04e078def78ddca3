# exceptions.S: exception and interrupt delivery through the 64-bit IDT.
# Checks: #PF on a read of a not-present page (error code 0, CR2, RIP of the faulting
# instruction); #PF on a write to a read-only page with CR0.WP (error code P|W = 3, CR2); a read
# of that page does not fault; #GP(0) from a non-canonical address; #UD from ud2; #DE from a
# division by zero; int3 resumes at the next instruction; `int 0x80` reaches its gate and
# resumes after itself; a gate with IST 2 switches to the IST2 stack; a #PF whose delivery
# faults (the #PF gate is not present -> #NP -> #DF) reaches the #DF handler on IST1 with error
# code 0.
.include "prelude.inc"

.equ NP_PAGE, 0x4000000           # 2 MiB page (RAM at 64 MiB) made not present
.equ RO_PAGE, 0x4200000           # 2 MiB page (RAM at 66 MiB) made read-only

# pd_entry ADDR -> rdi = address of the PD entry mapping ADDR (the PDs are contiguous).
.macro pd_entry addr
    lea rdi, [rip + pd0]
    add rdi, \addr >> 18                 # (addr >> 21) * 8 for 2 MiB-aligned addr
.endm

main:
    pd_entry NP_PAGE
    and qword ptr [rdi], -2                 # clear P
    pd_entry RO_PAGE
    and qword ptr [rdi], -3                 # clear RW
    mov rax, cr3
    mov cr3, rax                            # flush the TLB

    # #PF, read, not present
    mov rbx, NP_PAGE + 0x123
    expect_fault .Lpf_read_done
.Lpf_read:
    mov rax, [rbx]
.Lpf_read_done:
    check_eq [fault_vector], 14, "#PF on a read of a not-present page"
    check_eq [fault_err], 0, "#PF error code 0 (not present, read, supervisor)"
    check_eq [fault_cr2], NP_PAGE + 0x123, "#PF CR2 is the faulting address"
    lea rax, [rip + .Lpf_read]
    check_eq [fault_rip], rax, "#PF RIP is the faulting instruction"

    # #PF, write, read-only
    mov rbx, RO_PAGE + 0x808
    expect_fault .Lro_read_done
    mov rax, [rbx]
.Lro_read_done:
    check_eq [fault_vector], -1, "read of a read-only page does not fault"
    expect_fault .Lpf_write_done
    mov qword ptr [rbx], 1
.Lpf_write_done:
    check_eq [fault_vector], 14, "#PF on a write to a read-only page (CR0.WP)"
    check_eq [fault_err], 3, "#PF error code 3 (present, write)"
    check_eq [fault_cr2], RO_PAGE + 0x808, "#PF CR2 on the write fault"

    # #GP(0), non-canonical
    mov rbx, 0x8000000000000000
    expect_fault .Lgp_done
    mov rax, [rbx]
.Lgp_done:
    check_eq [fault_vector], 13, "#GP on a non-canonical address"
    check_eq [fault_err], 0, "#GP error code 0"

    # #UD
    expect_fault .Lud_done
.Lud:
    ud2
.Lud_done:
    check_eq [fault_vector], 6, "#UD from ud2"
    lea rax, [rip + .Lud]
    check_eq [fault_rip], rax, "#UD RIP is the ud2"

    # #DE
    xor ecx, ecx
    mov eax, 1
    xor edx, edx
    expect_fault .Lde_done
    div ecx
.Lde_done:
    check_eq [fault_vector], 0, "#DE from a division by zero"

    # int3: a trap, resumes after itself
    set_idt_handler 3, record_handler
    mov qword ptr [rip + record_count], 0
    int3
.Lint3_next:
    check_eq [record_count], 1, "int3 handler ran once"
    lea rax, [rip + .Lint3_next]
    check_eq [record_rip], rax, "int3 returns to the next instruction"

    # int 0x80
    set_idt_handler 0x80, record_handler
    int 0x80
.Lint80_next:
    check_eq [record_count], 2, "int 0x80 reaches its gate"
    lea rax, [rip + .Lint80_next]
    check_eq [record_rip], rax, "int 0x80 returns to the next instruction"

    # IST: a gate with IST 2 runs on the IST2 stack (5-qword frame below its top)
    set_idt_handler 0x81, record_handler, 2
    int 0x81
    lea rax, [rip + ist2_stack_top - 40]
    check_eq [record_rsp], rax, "IST2 gate switches to the IST2 stack"
    check_ne [record_rsp], rsp, "IST handler is not on the interrupted stack"

    # #DF: #PF delivery finds its gate not present (#NP, contributory) -> #DF on IST1
    set_idt_handler 8, df_handler, 1
    lea rdi, [rip + idt + 14 * 16 + 5]
    and byte ptr [rdi], 0x7f                # #PF gate not present
    mov qword ptr [rip + df_count], 0
    mov rbx, NP_PAGE
    mov rax, [rbx]
.Ldf_resume:
    lea rdi, [rip + idt + 14 * 16 + 5]
    or byte ptr [rdi], 0x80
    check_eq [df_count], 1, "#DF handler runs when #PF delivery faults"
    check_eq [df_err], 0, "#DF error code 0"
    lea rax, [rip + ist1_stack_top - 48]
    check_eq [df_rsp], rax, "#DF runs on the IST1 stack"
    ret

# record_handler: counts, and records the interrupted RIP and its own RSP.
record_handler:
    mov [rip + record_rsp], rsp
    push rax
    mov rax, [rsp + 8]
    mov [rip + record_rip], rax
    inc qword ptr [rip + record_count]
    pop rax
    iretq

# df_handler: records its RSP and error code, then resumes at .Ldf_resume.
df_handler:
    mov [rip + df_rsp], rsp
    push rax
    mov rax, [rsp + 8]
    mov [rip + df_err], rax
    inc qword ptr [rip + df_count]
    lea rax, [rip + .Ldf_resume]
    mov [rsp + 16], rax                     # frame RIP (above the error code)
    pop rax
    add rsp, 8                              # drop the error code
    iretq

.bss
record_count:   .space 8
record_rip:     .space 8
record_rsp:     .space 8
df_count:       .space 8
df_err:         .space 8
df_rsp:         .space 8
.text
