# hpet.S: the HPET at 0xFED00000 as QEMU's pc machine has it: its capability words (vendor
# 0x8086, three 64-bit timers, legacy replacement, 10 ns per count; each timer periodic-capable
# and routable to GSI 2 only), a main counter that is writable and frozen while halted and counts
# while enabled, a one-shot and a periodic timer 0 on IRQ 0 in legacy replacement mode (through
# I/O APIC pin 2, the PIT cut off), the comparator advancing by whole periods, and a
# level-triggered timer's status bit (set with its pin masked, cleared by writing 1).
# Written to hold on QEMU too, whose HPET follows the host's clock: the guest waits for events
# and checks counts and flags, never how long anything took.
.include "prelude.inc"

.equ APIC, 0xfee00000
.equ APIC_EOI, 0xb0
.equ IOAPIC, 0xfec00000
.equ HPET, 0xfed00000
.equ GCAP_ID, 0x000
.equ GEN_CONF, 0x010
.equ GINTR_STA, 0x020
.equ MAIN_CNT, 0x0f0
.equ T0_CONF, 0x100
.equ T0_CMP, 0x108
.equ T1_CONF, 0x120
.equ T2_CONF, 0x140
.equ CONF_ENABLE, 1
.equ CONF_LEGACY, 2
.equ TN_LEVEL, 0x2
.equ TN_INT_ENB, 0x4
.equ TN_PERIODIC, 0x8
.equ TN_VAL_SET, 0x40
.equ TN_ROUTE_GSI2, 0x400
.equ VEC_HPET, 0x62
.equ RTE_PIN2, 0x14                          # I/O APIC redirection register of pin 2
.equ PERIOD, 100000                          # 1 ms in 10 ns counts

main:
    set_idt_handler VEC_HPET, hpet_handler
    mov r15, APIC
    mov r14, IOAPIC
    mov r13, HPET
    mov al, 0xff                             # the 8259s stay out of it
    out 0x21, al
    out 0xa1, al
    mov dword ptr [r14], RTE_PIN2 + 1
    mov dword ptr [r14 + 0x10], 0
    mov dword ptr [r14], RTE_PIN2
    mov dword ptr [r14 + 0x10], VEC_HPET     # fixed, edge, unmasked

    # --- capabilities ---
    mov eax, dword ptr [r13 + GCAP_ID]
    check_eq rax, 0x8086a201, "GCAP_ID: vendor 8086, 3 timers, 64-bit, legacy route, rev 1"
    mov eax, dword ptr [r13 + GCAP_ID + 4]
    check_eq rax, 10000000, "counter period 10,000,000 fs (100 MHz)"
    mov rax, qword ptr [r13 + T0_CONF]
    check_eq rax, 0x400000030, "timer 0: periodic-capable, 64-bit, GSI 2 only"
    mov rax, qword ptr [r13 + T2_CONF]
    check_eq rax, 0x400000030, "timer 2: the same capabilities"
    mov rax, qword ptr [r13 + GEN_CONF]
    check_eq rax, 0, "halted, no legacy routing at boot"

    # --- the main counter: writable and frozen while halted ---
    mov qword ptr [r13 + MAIN_CNT], 0x1234
    mov rax, qword ptr [r13 + MAIN_CNT]
    check_eq rax, 0x1234, "the halted counter holds what was written"
    mov rax, qword ptr [r13 + MAIN_CNT]
    check_eq rax, 0x1234, "and does not count"
    mov qword ptr [r13 + GEN_CONF], CONF_ENABLE
    mov rbx, qword ptr [r13 + MAIN_CNT]
    mov rcx, 1000
.Lspin:
    pause
    dec rcx
    jnz .Lspin
    mov rax, qword ptr [r13 + MAIN_CNT]
    cmp rax, rbx
    seta al
    movzx eax, al
    check_eq rax, 1, "the enabled counter counts up"

    # --- one-shot timer 0 in legacy replacement mode: IRQ 0 through I/O APIC pin 2 ---
    mov qword ptr [r13 + GEN_CONF], CONF_ENABLE | CONF_LEGACY
    mov qword ptr [r13 + T0_CONF], TN_INT_ENB
    mov rax, qword ptr [r13 + MAIN_CNT]
    add rax, PERIOD
    mov qword ptr [r13 + T0_CMP], rax
    wait_count hpet_count, 1
    check_eq "qword ptr [hpet_count]", 1, "the one-shot timer 0 interrupts on IRQ 0"

    # --- periodic timer 0: three interrupts, the comparator moves by whole periods ---
    mov qword ptr [r13 + T0_CONF], TN_INT_ENB | TN_PERIODIC | TN_VAL_SET
    mov rax, qword ptr [r13 + MAIN_CNT]
    add rax, PERIOD
    mov [first_cmp], rax
    mov qword ptr [r13 + T0_CMP], rax        # VAL_SET: the comparator ...
    mov qword ptr [r13 + T0_CMP], PERIOD     # ... then the period
    mov qword ptr [hpet_count], 0
    wait_count hpet_count, 3
    mov qword ptr [r13 + T0_CONF], 0         # stop it before looking
    check_eq "qword ptr [hpet_count]", 3, "the periodic timer 0 interrupts again and again"
    mov rax, qword ptr [r13 + T0_CMP]
    sub rax, [first_cmp]
    xor edx, edx
    mov rcx, PERIOD
    div rcx
    check_eq rdx, 0, "the comparator advanced by whole periods"
    mov rax, qword ptr [r13 + T0_CMP]
    sub rax, [first_cmp]
    check_ne rax, 0, "the comparator advanced"

    # --- a level-triggered timer 0 on GSI 2 with the pin masked: only the status bit ---
    mov qword ptr [r13 + GEN_CONF], CONF_ENABLE
    mov dword ptr [r14], RTE_PIN2
    mov dword ptr [r14 + 0x10], 0x10000 | VEC_HPET
    mov qword ptr [r13 + T0_CONF], TN_INT_ENB | TN_LEVEL | TN_ROUTE_GSI2
    mov rax, qword ptr [r13 + T0_CONF]
    check_eq rax, 0x400000436, "the route and the level type read back"
    mov rax, qword ptr [r13 + MAIN_CNT]
    add rax, 1000
    mov qword ptr [r13 + T0_CMP], rax
    mov ecx, 1000000
.Lpoll:
    test qword ptr [r13 + GINTR_STA], 1
    jnz .Lpolled
    dec ecx
    jnz .Lpoll
.Lpolled:
    mov rax, qword ptr [r13 + GINTR_STA]
    check_eq rax, 1, "the level-triggered timer's status bit is set"
    mov qword ptr [r13 + GINTR_STA], 1
    mov rax, qword ptr [r13 + GINTR_STA]
    check_eq rax, 0, "writing 1 clears it"
    mov qword ptr [r13 + T0_CONF], 0

    # --- halting freezes the counter ---
    mov qword ptr [r13 + GEN_CONF], 0
    mov rbx, qword ptr [r13 + MAIN_CNT]
    mov rax, qword ptr [r13 + MAIN_CNT]
    check_eq rax, rbx, "the halted counter stands still"
    jmp report

hpet_handler:
    inc qword ptr [hpet_count]
    mov dword ptr [r15 + APIC_EOI], 0
    iretq

.align 8
hpet_count:      .quad 0
first_cmp:       .quad 0
