/* L1's x2APIC writes answered in C: EOI, TPR, the ICR and SELF_IPI when the IPI reaches only
 * this CPU as a fixed interrupt, and IA32_TSC_DEADLINE. emu/core/devices/apic.py and
 * emu/core/irq.py are the reference; each case below is what their Python does, and anything
 * else (a #GP, a level-triggered EOI, another CPU as the target, a timer due now that another
 * path fires) is left to Python with nothing changed. See emu/core/apic_fast.py for when this
 * is armed.
 */
#include <stddef.h>
#include <stdint.h>

#include "apic_fast.h"

#define VECTORS 256
#define FIRST_VALID_VECTOR 16   /* vectors 0-15 are illegal for fixed interrupts */
#define SHORTHAND_NONE 0
#define SHORTHAND_SELF 1
#define SHORTHAND_ALL 2
#define SHORTHAND_OTHERS 3
#define MODE_FIXED 0
#define BROADCAST 0xFFFFFFFFu
#define PRIORITY_CLASS(v) ((v) >> 4)

static int top_bit(const uint64_t v[4])
{
    for (int i = 3; i >= 0; i--)
        if (v[i])
            return 64 * i + 63 - __builtin_clzll(v[i]);
    return -1;
}

static int test_bit(const uint64_t v[4], int n) { return (int)((v[n / 64] >> (n % 64)) & 1); }
static void set_bit(uint64_t v[4], int n) { v[n / 64] |= 1ull << (n % 64); }
static void clear_bit(uint64_t v[4], int n) { v[n / 64] &= ~(1ull << (n % 64)); }

static int irr_any(const struct apic_fast *a)
{
    return (a->irr[0] | a->irr[1] | a->irr[2] | a->irr[3]) != 0;
}

static int deadline_due(const struct apic_fast *a, uint64_t now)
{
    return a->deadline_mode && a->tsc_deadline && a->tsc_deadline <= now;
}

int apic_fast_busy(const struct apic_fast *a, uint64_t now)
{
    return a->enabled && (irr_any(a) || deadline_due(a, now));
}

/* InterruptController.changed on this CPU: open the interrupt window with a kick; stop at once
 * when the window is not enough (_window_not_enough: a run without a bound while a timer is
 * armed, or a nested guest whose interrupts follow the host's IF). When the CPU can take an
 * interrupt at the next boundary the window's exit would come there and do nothing but stop
 * (InterruptController.window_exit), so C stops there without it. */
/* May a change that makes something deliverable be made here? Not while the run has no bound
 * and Python did not look at the other timers (whether `changed` must stop emulation). */
static int can_change(struct apic_fast *a)
{
    if (a->unbounded && !a->always_stop && a->timers_pending == APIC_TIMERS_UNKNOWN) {
        a->wanted_timers = 1;
        return 0;
    }
    return 1;
}

static void changed(struct apic_fast *a, void *uc)
{
    if ((*(const uint64_t *)a->eflags_addr & a->if_mask) &&
        !(*(const uint32_t *)a->hflags_addr & a->hf_inhibit_irq) &&
        (*(const uint32_t *)a->hflags2_addr & a->hf2_gif)) {
        /* the window would exit before the next instruction (window_exit: a kick): stop */
        a->kicked = 1;
        a->emu_stop(uc);
        return;
    }
    *(uint64_t *)a->intercept_addr |= a->intercept_bit;
    *(uint32_t *)a->request_addr |= (uint32_t)a->request_bit;
    *(uint16_t *)a->kick_addr = 0xFFFF;
    a->window_armed = 1;
    if (a->always_stop || (a->unbounded && (a->timers_pending == 1 ||
                                            (a->deadline_mode && a->tsc_deadline)))) {
        a->kicked = 1;
        a->emu_stop(uc);
    }
}

/* LocalApic.accept of an edge-triggered fixed interrupt (the vector is valid). */
static void accept(struct apic_fast *a, void *uc, int vector)
{
    set_bit(a->irr, vector);
    clear_bit(a->tmr, vector);
    a->dirty |= APIC_DIRTY_IRR | APIC_DIRTY_TMR;
    changed(a, uc);
}

static int eoi(struct apic_fast *a, void *uc, uint64_t value)
{
    int vector;
    if (value)
        return 0;                   /* #GP */
    vector = top_bit(a->isr);
    if (vector >= 0) {
        if (test_bit(a->tmr, vector))
            return 0;               /* level-triggered: the I/O APIC hears it */
        if (irr_any(a) && !can_change(a))
            return 0;
        clear_bit(a->isr, vector);
        a->dirty |= APIC_DIRTY_ISR;
        if (irr_any(a))             /* only a request can be let in by a lower priority */
            changed(a, uc);
    }
    a->eoi++;
    return 1;
}

static int write_tpr(struct apic_fast *a, void *uc, uint64_t value, uint64_t *tpr,
                     const struct apic_time *t)
{
    if (value >> 32 || !a->tick_ok || deadline_due(a, t->now))
        return 0;                   /* #GP, or a timer the write's tick would fire */
    if (irr_any(a) && !can_change(a))
        return 0;
    *tpr = value & 0xFF;
    if (irr_any(a))
        changed(a, uc);
    a->tpr++;
    return 1;
}

/* A fixed IPI to one other APIC: Python's delivery (ApicBus.deliver) makes the target's IRR
 * change and ends this CPU's turn here (Machine.wake kicks the sender); C ends the turn the same
 * way and leaves the delivery to the next Python entry, which runs before anything else can look
 * at the target (no instruction runs after this one before emulation stops). */
static int send_other(struct apic_fast *a, void *uc, uint64_t icr, int vector, uint64_t dest)
{
    a->icr = icr;
    a->dirty |= APIC_DIRTY_ICR;
    a->sent = 1;
    a->sent_vector = (uint64_t)vector;
    a->sent_dest = dest;
    a->kicked = 1;
    a->emu_stop(uc);
    a->icr_sent++;
    return 1;
}

/* The ICR: a fixed IPI whose only target is this APIC or one other, or none at all. */
static int write_icr(struct apic_fast *a, void *uc, uint64_t value, const struct apic_time *t)
{
    uint64_t icr = value & a->icr_writable;
    int vector = (int)(icr & 0xFF), self;
    uint64_t dest = icr >> 32;
    if (((icr >> a->icr_mode_shift) & 7) != MODE_FIXED || vector < FIRST_VALID_VECTOR)
        return 0;
    switch ((icr >> a->icr_shorthand_shift) & 3) {
    case SHORTHAND_SELF:
        self = 1;
        break;
    case SHORTHAND_ALL:
        if (!a->one_cpu)
            return 0;
        self = 1;
        break;
    case SHORTHAND_OTHERS:
        if (!a->one_cpu)
            return 0;
        self = 0;
        break;
    default:
        if (icr & a->icr_dest_logical)
            return 0;
        if (dest == BROADCAST)
            self = 1;
        else
            self = dest == a->apic_id;
        if (!self && dest < 64 && (a->others >> dest) & 1 && !a->sent)
            return send_other(a, uc, icr, vector, dest);
        if (!a->one_cpu && (!self || dest == BROADCAST))
            return 0;
    }
    if (self && !can_change(a))
        return 0;
    a->icr = icr;
    a->dirty |= APIC_DIRTY_ICR;
    if (self)
        accept(a, uc, vector);
    a->icr_sent++;
    return 1;
}

static int self_ipi(struct apic_fast *a, void *uc, uint64_t value, const struct apic_time *t)
{
    if (value & ~0xFFull || value < FIRST_VALID_VECTOR)
        return 0;                   /* #GP, or the send-illegal-vector error */
    if (!can_change(a))
        return 0;
    accept(a, uc, (int)value);
    a->icr_sent++;
    return 1;
}

static int interruptible(const struct apic_fast *a)
{
    return (*(const uint64_t *)a->eflags_addr & a->if_mask) &&
           !(*(const uint32_t *)a->hflags_addr & a->hf_inhibit_irq) &&
           (*(const uint32_t *)a->hflags2_addr & a->hf2_gif);
}

static int takeable(const struct apic_fast *a, int vector, uint64_t tpr);

/* LocalApic.write_tsc_deadline in TSC-deadline mode: a deadline already past fires at once
 * (the LVT's vector into IRR unless masked); a later one bounds the run so that it stops when
 * the machine's time reaches it (Timebase.bound's deadline, as InterruptController.timer_moved
 * does in Python). */
static int write_deadline(struct apic_fast *a, void *uc, uint64_t value, uint64_t tpr,
                          struct apic_time *t)
{
    int masked = (a->lvt_timer & a->lvt_masked) != 0, vector = (int)(a->lvt_timer & 0xFF);
    if (!a->deadline_mode || !a->deadline_ok || !t->count || !a->tick_ok)
        return 0;
    if (value && value <= t->now) {
        if (!masked && (vector < FIRST_VALID_VECTOR || !can_change(a)))
            return 0;
        a->tsc_deadline = 0;
        a->dirty |= APIC_DIRTY_DEADLINE;
        if (!masked && takeable(a, vector, tpr))
            a->take_vector = (uint64_t)vector + 1;      /* delivered after the WRMSR */
        else if (!masked)
            accept(a, uc, vector);
    } else {
        a->tsc_deadline = value;
        a->dirty |= APIC_DIRTY_DEADLINE;
        if (value && !masked) {
            uint64_t want = *t->count + (value - t->now);
            if (*t->deadline == UINT64_MAX || want < *t->deadline)
                *t->deadline = want;
            *t->by_time = 1;
            a->unbounded = 0;
            if (!a->deadline_moved || value < a->bound_time)
                a->bound_time = value;
            a->deadline_moved = 1;
        }
    }
    a->deadline++;
    return 1;
}

int apic_fast_wrmsr(struct apic_fast *a, void *uc, uint32_t index, uint64_t value,
                    uint64_t *tpr, struct apic_time *t)
{
    int done;
    if (!a->enabled || deadline_due(a, t->now))
        return 0;                   /* a due deadline: Python fires it first */
    if (index == a->msr_eoi)
        done = eoi(a, uc, value);
    else if (index == a->msr_tsc_deadline)
        done = write_deadline(a, uc, value, *tpr, t);
    else if (index == a->msr_tpr)
        done = write_tpr(a, uc, value, tpr, t);
    else if (index == a->msr_icr)
        done = write_icr(a, uc, value, t);
    else if (index == a->msr_self_ipi)
        done = self_ipi(a, uc, value, t);
    else
        return 0;
    if (done)
        a->changed = 1;
    return done;
}

/* Would the interrupt point deliver the timer's `vector` now and do nothing else: it the only
 * request, above the PPR class (LocalApic.ppr), the CPU interruptible, no stop or window of
 * C's own under way? */
static int takeable(const struct apic_fast *a, int vector, uint64_t tpr)
{
    int isrv = top_bit(a->isr);
    uint64_t ppr;
    if (!a->fire_ok || vector < FIRST_VALID_VECTOR || irr_any(a) || a->window_armed ||
        a->kicked || a->halted || a->sent || !interruptible(a))
        return 0;
    if (isrv < 0)
        isrv = 0;
    ppr = PRIORITY_CLASS(tpr & 0xFF) >= PRIORITY_CLASS((uint64_t)isrv) ? tpr & 0xFF
                                                                    : (uint64_t)isrv & 0xF0;
    return PRIORITY_CLASS((uint64_t)vector) > PRIORITY_CLASS(ppr);
}

int apic_fast_timer_due(const struct apic_fast *a, uint64_t now, uint64_t tpr)
{
    int vector = (int)(a->lvt_timer & 0xFF);
    if (!a->enabled || !deadline_due(a, now) || (a->lvt_timer & a->lvt_masked) ||
        !takeable(a, vector, tpr))
        return -1;
    return vector;
}

void apic_fast_take_now(struct apic_fast *a, int vector)
{
    set_bit(a->isr, vector);
    clear_bit(a->tmr, vector);
    a->dirty |= APIC_DIRTY_ISR | APIC_DIRTY_TMR;
    a->changed = 1;
    a->taken_now++;
}

void apic_fast_take_later(struct apic_fast *a, void *uc, int vector)
{
    accept(a, uc, vector);
}

void apic_fast_timer_taken(struct apic_fast *a, int vector)
{
    a->tsc_deadline = 0;
    set_bit(a->isr, vector);
    clear_bit(a->tmr, vector);
    a->dirty |= APIC_DIRTY_ISR | APIC_DIRTY_TMR | APIC_DIRTY_DEADLINE;
    a->changed = 1;
    a->deadline_moved = 0;      /* every bound C set before has passed */
    a->unbounded = 1;
    a->timers_pending = 0;      /* fire_ok: no other timer */
    a->fired++;
}
