# svm_event_inject.S: event injection through VMCB.EVENTINJ (AMD APM vol. 2, 15.20) into an L2
# with its own IDT.  L2's handlers record the vector, the error code (if one was pushed) and the
# return RIP, then IRET to the injection site, whose VMMCALL ends the run.  Injected: #GP and #PF
# with error codes, #UD without, NMI, a software INT 0x30 (return RIP = NRIP when NRIP save is
# reported), an external interrupt 0x40; an injected #GP that L1 also intercepts still reaches L2
# (an injected event is not checked against intercepts); EVENTINJ reads back clear after the
# #VMEXIT.  Then delivery faults that L1 intercepts, with the injected event in EXITINTINFO: an
# external interrupt through a not-present IDT entry (#NP, error code = IDT index | EXT), and a
# #GP whose frame push hits a not-present stack page (#PF).
.include "prelude.inc"
.include "svm.inc"

.equ L2_NP_VECTOR, 0x41
.equ SEEN_NONE, 0xEE                        # seen_err when the handler popped no error code

# inject TAG, EVENTINJ (low 32 bits), ERROR CODE: run L2 at l2_site with the event.
.macro inject tag, event, err
    lea rdi, [rip + l2_site]
    call l2_vmcb
    mov dword ptr [rdi + V_EVENTINJ], \event
    mov dword ptr [rdi + V_EVENTINJ + 4], \err
    mov qword ptr [rip + seen_vec], -1
    mov qword ptr [rip + seen_err], SEEN_NONE
    mov qword ptr [rip + seen_rip], 0
    run_l2 "\tag"
.endm

main:
    call svm_enable
    call l2_idt_init

    # ---- exception with an error code: #GP(0x1234)
    inject 1, EV_VALID | EV_EXC | EV_ERR | 13, 0x1234
    check_exit EXIT_VMMCALL, "injected #GP: L2 returned to the site"
    check_eq [seen_vec], 13, "injected #GP: L2's handler 13 ran"
    check_eq [seen_err], 0x1234, "injected #GP: error code pushed"
    lea rax, [rip + l2_site]
    check_eq [seen_rip], rax, "injected #GP: return RIP is VMCB.RIP"
    mov rdi, VMCB
    check_mask "qword ptr [rdi + V_EVENTINJ]", EV_VALID, 0, "EVENTINJ.V is clear after the #VMEXIT"
    check_mask "qword ptr [rdi + V_EXITINTINFO]", EV_VALID, 0, "EXITINTINFO.V is 0: nothing was interrupted"

    # ---- #PF with an error code; CR2 is what L1 put in the VMCB
    lea rdi, [rip + l2_site]
    call l2_vmcb
    mov qword ptr [rdi + V_CR2], 0xDEAD000
    mov dword ptr [rdi + V_EVENTINJ], EV_VALID | EV_EXC | EV_ERR | 14
    mov dword ptr [rdi + V_EVENTINJ + 4], 0x6
    mov qword ptr [rip + seen_vec], -1
    run_l2 2
    check_exit EXIT_VMMCALL, "injected #PF: L2 returned to the site"
    check_eq [seen_vec], 14, "injected #PF: L2's handler 14 ran"
    check_eq [seen_err], 6, "injected #PF: error code pushed"
    check_eq [seen_cr2], 0xDEAD000, "injected #PF: CR2 is VMCB.CR2"

    # ---- exception without an error code
    inject 3, EV_VALID | EV_EXC | 6, 0
    check_exit EXIT_VMMCALL, "injected #UD: L2 returned to the site"
    check_eq [seen_vec], 6, "injected #UD: L2's handler 6 ran"
    check_eq [seen_err], SEEN_NONE, "injected #UD: no error code (handler 6 pops none)"
    lea rax, [rip + l2_site]
    check_eq [seen_rip], rax, "injected #UD: return RIP is VMCB.RIP"

    # ---- NMI
    inject 4, EV_VALID | EV_NMI | 2, 0
    check_exit EXIT_VMMCALL, "injected NMI: L2 returned to the site"
    check_eq [seen_vec], 2, "injected NMI: L2's handler 2 ran"
    lea rax, [rip + l2_site]
    check_eq [seen_rip], rax, "injected NMI: return RIP is VMCB.RIP"

    # ---- software interrupt INT 0x30, as a hypervisor re-injects one it intercepted: RIP at
    # the INT (two NOPs here), NRIP after it; the return RIP is NRIP when the CPU reports NRIP save.
    lea rdi, [rip + l2_swint]
    call l2_vmcb
    lea rax, [rip + l2_swint_end]
    mov [rdi + V_NRIP], rax
    mov dword ptr [rdi + V_EVENTINJ], EV_VALID | EV_SOFT | 0x30
    mov qword ptr [rip + seen_vec], -1
    run_l2 5
    check_exit EXIT_VMMCALL, "injected INT 0x30: L2 ran on"
    check_eq [seen_vec], 0x30, "injected INT 0x30: L2's handler 0x30 ran"
    lea rax, [rip + l2_swint]
    test dword ptr [rip + svm_features], SVM_FEAT_NRIPS
    jz .Lno_nrips
    lea rax, [rip + l2_swint_end]
.Lno_nrips:
    check_eq [seen_rip], rax, "injected INT 0x30: return RIP is NRIP (VMCB.RIP without NRIP save)"

    # ---- external interrupt 0x40, with RFLAGS.IF clear: injection ignores IF
    inject 6, EV_VALID | EV_INTR | 0x40, 0
    check_exit EXIT_VMMCALL, "injected INTR 0x40: L2 returned to the site"
    check_eq [seen_vec], 0x40, "injected INTR 0x40: L2's handler 0x40 ran"
    check_eq [seen_err], SEEN_NONE, "injected INTR 0x40: no error code"
    lea rax, [rip + l2_site]
    check_eq [seen_rip], rax, "injected INTR 0x40: return RIP is VMCB.RIP"

    # ---- an injected event is not checked against L1's intercepts
    lea rdi, [rip + l2_site]
    call l2_vmcb
    mov dword ptr [rdi + V_INTERCEPT_EXC], 0x2000       # #GP
    mov dword ptr [rdi + V_EVENTINJ], EV_VALID | EV_EXC | EV_ERR | 13
    mov dword ptr [rdi + V_EVENTINJ + 4], 0x10
    mov qword ptr [rip + seen_vec], -1
    run_l2 7
    check_exit EXIT_VMMCALL, "injected #GP with #GP intercepted still reaches L2"
    check_eq [seen_vec], 13, "... L2's handler 13 ran"

    # ---- delivery fault: INTR 0x41 through a not-present IDT entry, #NP intercepted
    lea rdi, [rip + l2_site]
    call l2_vmcb
    mov dword ptr [rdi + V_INTERCEPT_EXC], 0x800        # #NP
    mov dword ptr [rdi + V_EVENTINJ], EV_VALID | EV_INTR | L2_NP_VECTOR
    mov qword ptr [rip + seen_vec], -1
    run_l2 8
    check_exit EXIT_EXCP0 + 11, "INTR through a not-present gate: #NP exit"
    mov rdi, VMCB
    check_eq "qword ptr [rdi + V_EXITINFO1]", L2_NP_VECTOR*8+3, "#NP exit: EXITINFO1 = IDT index | IDT | EXT"
    mov eax, EV_VALID | EV_INTR | L2_NP_VECTOR
    check_eq "qword ptr [rdi + V_EXITINTINFO]", rax, "#NP exit: EXITINTINFO is the injected INTR 0x41"
    lea rax, [rip + l2_site]
    check_eq "qword ptr [rdi + V_RIP]", rax, "#NP exit: guest RIP is still the site"
    check_eq [seen_vec], -1, "#NP exit: no L2 handler ran"

    # ---- delivery fault: #GP(0x10) pushed onto a not-present stack page, #PF intercepted
    lea rdi, [rip + l2_site]
    call l2_vmcb
    mov dword ptr [rdi + V_INTERCEPT_EXC], 0x4000       # #PF
    mov rax, 0x100001000
    mov [rdi + V_RSP], rax
    mov dword ptr [rdi + V_EVENTINJ], EV_VALID | EV_EXC | EV_ERR | 13
    mov dword ptr [rdi + V_EVENTINJ + 4], 0x10
    mov qword ptr [rip + seen_vec], -1
    run_l2 9
    check_exit EXIT_EXCP0 + 14, "#GP frame on a not-present stack: #PF exit"
    mov rdi, VMCB
    check_eq "qword ptr [rdi + V_EXITINFO1]", 2, "#PF exit: error code 2 (a supervisor write, not present)"
    mov rax, [rdi + V_EXITINFO2]
    shr rax, 12
    mov rcx, 0x100000
    check_eq rax, rcx, "#PF exit: EXITINFO2 is in the stack page below RSP"
    mov rax, 0x0000001080000B0D
    check_eq "qword ptr [rdi + V_EXITINTINFO]", rax, "#PF exit: EXITINTINFO is the injected #GP(0x10)"
    check_eq [seen_vec], -1, "#PF exit: no L2 handler ran"
    ret

# l2_vmcb: rdi = L2 entry; a fresh VMCB whose L2 has its own IDT; returns rdi = VMCB.
l2_vmcb:
    call vmcb_init
    mov rdi, VMCB
    mov dword ptr [rdi + V_IDTR + 4], 256 * 16 - 1
    lea rax, [rip + l2_idt]
    mov [rdi + V_IDTR + 8], rax
    ret

# L2's IDT: every vector -> l2_unexpected; 2, 6, 13, 14, 0x30, 0x40 -> recording handlers;
# 0x41 not present.
l2_idt_init:
    xor ebx, ebx
.Lfill:
    mov edi, ebx
    lea rsi, [rip + l2_unexpected]
    call l2_gate
    inc ebx
    cmp ebx, 256
    jb .Lfill
    mov edi, 2
    lea rsi, [rip + l2h_nmi]
    call l2_gate
    mov edi, 6
    lea rsi, [rip + l2h_ud]
    call l2_gate
    mov edi, 13
    lea rsi, [rip + l2h_gp]
    call l2_gate
    mov edi, 14
    lea rsi, [rip + l2h_pf]
    call l2_gate
    mov edi, 0x30
    lea rsi, [rip + l2h_30]
    call l2_gate
    mov edi, 0x40
    lea rsi, [rip + l2h_40]
    call l2_gate
    lea rax, [rip + l2_idt]
    add rax, L2_NP_VECTOR * 16
    mov byte ptr [rax + 5], 0x0E            # type 0xE, P=0
    ret

# l2_gate: edi = vector, rsi = handler: a present 64-bit interrupt gate in l2_idt.
l2_gate:
    lea rax, [rip + l2_idt]
    shl edi, 4
    add rdi, rax
    mov rax, rsi
    mov [rdi], ax
    mov word ptr [rdi + 2], SEL_CODE64
    mov word ptr [rdi + 4], 0x8E00
    shr rax, 16
    mov [rdi + 6], ax
    shr rax, 16
    mov [rdi + 8], eax
    mov dword ptr [rdi + 12], 0
    ret

# ---------------------------------------------------------------- L2
l2_site:
    vmmcall
    hlt
l2_swint:                                   # stands for an intercepted 2-byte INT 0x30
    nop
    nop
l2_swint_end:
    vmmcall
    hlt

l2h_gp:
    mov qword ptr [rip + seen_vec], 13
    jmp l2h_with_err
l2h_pf:
    mov qword ptr [rip + seen_vec], 14
    mov rax, cr2
    mov [rip + seen_cr2], rax
    jmp l2h_with_err
l2h_ud:
    mov qword ptr [rip + seen_vec], 6
    jmp l2h_no_err
l2h_nmi:
    mov qword ptr [rip + seen_vec], 2
    jmp l2h_no_err
l2h_30:
    mov qword ptr [rip + seen_vec], 0x30
    jmp l2h_no_err
l2h_40:
    mov qword ptr [rip + seen_vec], 0x40
    jmp l2h_no_err
l2h_with_err:
    pop rax
    mov [rip + seen_err], rax
l2h_no_err:
    mov rax, [rsp]
    mov [rip + seen_rip], rax
    iretq
l2_unexpected:
    mov qword ptr [rip + seen_vec], 0xFF
    vmmcall
    hlt

.bss
.align 16
l2_idt:         .space 256 * 16
seen_vec:       .space 8
seen_err:       .space 8
seen_rip:       .space 8
seen_cr2:       .space 8
.text
