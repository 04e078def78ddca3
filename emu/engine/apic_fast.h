/* L1's x2APIC writes answered in C (apic_fast.c), in front of emu/core/devices/apic.py.
 *
 * The struct holds the local APIC state these writes touch, copied in by Python at each arming
 * (emu/core/apic_fast.py) and taken back by it at the next Python entry when `changed` is set.
 * Every number (MSR indices, register bits, the addresses of the interrupt window's words) comes
 * from Python; replay_abi() (replay.c) reports the layout, emu/engine/replay.py mirrors it.
 */
#ifndef SVMEMU_APIC_FAST_H
#define SVMEMU_APIC_FAST_H

#include <stdint.h>

typedef void (*stop_fn)(void *uc);

#define APIC_TIMERS_UNKNOWN 2
#define APIC_DIRTY_ISR 1
#define APIC_DIRTY_IRR 2
#define APIC_DIRTY_TMR 4
#define APIC_DIRTY_ICR 8
#define APIC_DIRTY_DEADLINE 16

struct apic_fast {
    uint64_t enabled;           /* Python: x2APIC mode and nothing but IRR could be requested */
    uint64_t changed;           /* out: C changed the state below */
    uint64_t isr[4], irr[4], tmr[4];    /* 256 bits each, vector v at bit v % 64 of word v / 64 */
    uint64_t icr;
    uint64_t apic_id;
    uint64_t tsc_deadline;      /* IA32_TSC_DEADLINE in the machine's time (0: disarmed) */
    uint64_t deadline_mode;     /* the LVT timer is in TSC-deadline mode */
    uint64_t lvt_timer;         /* the LVT timer entry (vector, mask) */
    uint64_t deadline_ok;       /* Python: a deadline write may bound the run here (one CPU) */
    uint64_t one_cpu;           /* no other APIC: "all" and "all but self" name only this one */
    uint64_t others;            /* Python: bit n: exactly one other APIC has ID n (n < 64) */
    uint64_t sent, sent_vector, sent_dest;  /* out: a fixed IPI to that APIC, for Python */
    uint64_t timers_pending;    /* Python: another timer has a deadline (devices, APIC count);
                                 * APIC_TIMERS_UNKNOWN: not looked at (then a change that must
                                 * know, in a run without a bound, goes to Python) */
    uint64_t wanted_timers;     /* out: a write went to Python for want of timers_pending */
    uint64_t dirty;             /* out: APIC_DIRTY_* of the words C changed */
    uint64_t always_stop;       /* Python: a deliverable change must stop emulation at once */
    uint64_t unbounded;         /* the run has no time bound (InterruptController._unbounded) */
    uint64_t tick_ok;           /* Python: the APIC timer is idle or in TSC-deadline mode */
    /* The interrupt window (emu/engine/irq_window.py): the words its arming writes. */
    uint64_t request_addr, request_bit, kick_addr, intercept_addr, intercept_bit;
    /* Where the window would exit at once (RFLAGS.IF, no interrupt shadow, GIF): the CPU
     * state's words and bits, so that C stops there itself instead. */
    uint64_t eflags_addr, if_mask, hflags_addr, hflags2_addr, hf2_gif;
    uint64_t window_armed;      /* out: C armed the window */
    uint64_t kicked;            /* out: C stopped emulation for an interrupt */
    uint64_t deadline_moved;    /* out: C bounded the run by a TSC deadline ... */
    uint64_t bound_time;        /* ... the earliest it bounded it by (the machine's time) */
    /* Numbers from Python: MSR indices, LVT and ICR fields. */
    uint64_t msr_tpr, msr_eoi, msr_icr, msr_self_ipi, msr_tsc_deadline;
    uint64_t lvt_masked, icr_writable, icr_mode_shift, icr_dest_logical, icr_shorthand_shift;
    stop_fn emu_stop;
    uint64_t eoi, tpr, icr_sent, deadline;   /* counts of writes answered here */
    /* HLT in L1 (Machine._exit_hlt, InterruptController.halt): RIP past it, an STI shadow
     * ended, the CPU halted until the next interrupt point, emulation stopped there. */
    uint64_t exit_hlt;          /* its INTR hook number */
    uint64_t hlt_ok;            /* Python: the machine's own handler takes it */
    uint64_t hf_inhibit_irq;    /* hflags: the interrupt shadow */
    uint64_t halted;            /* out: C halted the CPU */
    uint64_t hlts;              /* count of HLTs answered here */
    /* The TSC-deadline timer's expiry at the run's deadline (patch 0028, replay.c
     * `replay_deadline`): taken here, vector into ISR, when it is the only request and the CPU
     * takes it at once (InterruptController.point would deliver it and nothing else). */
    uint64_t fire_ok;           /* Python: one CPU, no device timer, APIC software-enabled
                                 * (also for take_vector below) */
    uint64_t fired;             /* count of expiries taken here */
    uint64_t take_vector;       /* out: a deadline written in the past: vector + 1 to take
                                 * right after the WRMSR (replay.c), not yet in IRR */
    uint64_t taken_now;         /* count of those taken at the WRMSR */
};

/* The instruction counter's words (patch 0005): count, then deadline, and whether the deadline
 * stands for a time (replay.c `spend`). NULL count: no counter. */
struct apic_time {
    const uint64_t *count;
    uint64_t *deadline;
    uint64_t *by_time;
    uint64_t now;               /* the machine's TSC (L1's: no offset) at this exit */
};

/* WRMSR of `index` with `value` in L1: 1 if answered here with the APIC state (and `*tpr`, the
 * TPR C shares with MOV CR8) changed exactly as the Python path would, else 0 with nothing
 * changed. */
int apic_fast_wrmsr(struct apic_fast *a, void *uc, uint32_t index, uint64_t value,
                    uint64_t *tpr, struct apic_time *t);

/* The vector the TSC-deadline timer delivers now, at machine time `now` with TPR `tpr`, if
 * taking it is all the interrupt point would do (the deadline due, its vector the only request
 * and above the PPR class, RFLAGS.IF set, no interrupt shadow, GIF set); else -1, nothing
 * changed. */
int apic_fast_timer_due(const struct apic_fast *a, uint64_t now, uint64_t tpr);

/* The CPU took `vector` from apic_fast_timer_due: LocalApic.tick then acknowledge (the deadline
 * disarmed, the vector in ISR as edge-triggered). The run has no time bound from here on. */
void apic_fast_timer_taken(struct apic_fast *a, int vector);

/* The interrupt take_vector names was delivered after the WRMSR: into ISR. */
void apic_fast_take_now(struct apic_fast *a, int vector);

/* It was not: into IRR, as the Python path (the window, or a stop). */
void apic_fast_take_later(struct apic_fast *a, void *uc, int vector);

/* Is anything requested (IRR) or a TSC deadline due by `now`? The other fast exits that would
 * let an interrupt in (MOV CR8, STGI) go to Python then. */
int apic_fast_busy(const struct apic_fast *a, uint64_t now);

#endif
