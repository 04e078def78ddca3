/* The replay engine: an INTR hook in C that sits in front of the machine's Python one.
 *
 * A world switch handled in Python costs tens of microseconds, almost all of it Python's own
 * overhead; the work itself is a few copies between the CPU context, guest RAM and L0's buffers.
 * Python therefore records, after handling an exit the slow way, a *program*: the checks that make
 * the next exit of that kind provably identical in everything the handler read (guards), followed
 * by the copies the handler's effect reduces to for such an exit. When the next exit arrives, this
 * hook runs the program: if every guard holds, it performs the copies and the exit never reaches
 * Python; if one fails, nothing has been changed and the Python hook handles it as before.
 *
 * The engine knows nothing of SVM or of what the programs mean (emu/engine/replay.py builds and
 * documents them). It holds no pointers into Python objects: every address in a program is guest
 * RAM, the context blob or a buffer Python allocated and keeps alive.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "deliver.h"
#include "apic_fast.h"
#include "svm_insn.h"
#include "l2_msr.h"

enum {
    OP_END = 0,
    OP_CMP,        /* memcmp(a, b, len) == 0, else fall back                   */
    OP_EQ64,       /* (*(u64 *)a & c) == b, else fall back                     */
    OP_COMMIT,     /* guards end: nothing before this point had any effect     */
    OP_COPY,       /* memcpy(a, b, len)                                        */
    OP_SET64,      /* *(u64 *)a = b                                            */
    OP_ADD64,      /* *(u64 *)a += b                                           */
    OP_SAVE,       /* uc_context_save into the engine's context                */
    OP_RESTORE,    /* uc_context_restore from it                               */
    OP_FLUSH,      /* uc_ctl(TLB flush)                                        */
    OP_REGREAD,    /* uc_reg_read(register b) into *(u64 *)a                   */
    OP_REGWRITE,   /* uc_reg_write(register b) from *(u64 *)a                  */
    OP_RDTSC,      /* the fast exits' RDTSC with TSC offset b, ratio c (0: none) */
    OP_MSRPM,      /* guard: the MSR in the u32 at b is intercepted, for a read (len 0) or a
                      write (len 1), by the permission map at a, whose ranges are at c */
};

/* An MSR permission map's ranges (emu/arch/vmcb.py MSRPM_RANGES), as Python lays them out for
 * OP_MSRPM: n, then n times (first MSR, last MSR, byte offset of its bits in the map). */
struct msrpm_ranges {
    uint32_t n;
    uint32_t r[][3];
};

/* vmcb.msrpm_intercepted: two bits per MSR (read, then write); outside every range, always. */
static int msrpm_intercepted(const uint8_t *map, const struct msrpm_ranges *ranges, uint32_t msr,
                             int write)
{
    for (uint32_t i = 0; i < ranges->n; i++) {
        if (ranges->r[i][0] <= msr && msr <= ranges->r[i][1]) {
            uint32_t bit = (msr - ranges->r[i][0]) * 2 + (write ? 1 : 0);
            return (map[ranges->r[i][2] + (bit >> 3)] >> (bit & 7)) & 1;
        }
    }
    return 1;
}

struct op {
    uint32_t code, len;
    uint64_t a, b, c;
};

typedef int (*ctx_fn)(void *uc, void *ctx);
typedef int (*reg_fn)(void *uc, int regid, void *value);
typedef int (*ctl_fn)(void *uc, int control, ...);
typedef void (*intr_fn)(void *uc, uint32_t intno, void *user);
typedef int (*vmem_fn)(void *uc, uint64_t addr, int prot, void *bytes, size_t size);
typedef uint32_t (*in_fn)(void *uc, uint32_t port, int size, void *user);

#define N_INTNO 0x600
#define PER_INTNO 4         /* programs kept per exit: several L2s, or one in several states */

/* Fast exits: L0's own answers to L1's RDTSC and CPUID, computed here instead of in Python
 * (emu/core/fast_exits.py holds the Python side and says why each step is exact). The offsets
 * into the live CPU state come from Python (emu/engine/hw_switch.py, proven at start-up). */
enum {
    FX_OFF_RAX = 0, FX_OFF_RCX, FX_OFF_RDX, FX_OFF_RBX, FX_OFF_EIP, FX_OFF_HFLAGS, FX_OFF_HFLAGS2,
    FX_OFF_CS_BASE, FX_OFF_VM_VMCB, FX_OFF_CR4, FX_OFF_ERROR_CODE, FX_OFF_EFLAGS, FX_N_OFF
};
#define FX_CPUID_SLOTS 64
#define FX_MSR_SLOTS 16
#define FX_EXIT_MSR 0x17C       /* UC exit base 0x100 + VMEXIT_MSR */
#define FX_EXIT_RDTSC 0x16E     /* UC exit base 0x100 + VMEXIT_RDTSC */
#define FX_EXIT_CPUID 0x172     /* UC exit base 0x100 + VMEXIT_CPUID */
#define FX_EXIT_CR8_READ 0x108  /* UC exit base 0x100 + VMEXIT_CR0_READ + 8 */
#define FX_EXIT_CR8_WRITE 0x118 /* UC exit base 0x100 + VMEXIT_CR0_WRITE + 8 */
#define FX_EXIT_CR4_WRITE 0x114 /* UC exit base 0x100 + VMEXIT_CR0_WRITE + 4 */

struct cpuid_slot {
    uint32_t leaf, subleaf;
    uint32_t regs[4];           /* eax, ebx, ecx, edx as Python computed them ... */
    uint64_t cr4;               /* ... with this CR4 */
};

/* An MSR whose RDMSR is a load from the CPU state (MsrFile's CPU-backed readers). */
struct msr_slot {
    uint32_t index, width;      /* width: 4 (zero-extended) or 8 bytes */
    uint64_t env_off;
};

struct fast {
    uint64_t armed;             /* Python: answering here is all the Python path would do */
    uint64_t env;               /* CPUX86State */
    uint64_t l1_vmcb;           /* the VMCB L1 runs under: only L1's exits are answered */
    uint64_t hf_cs64, hf2_npt;  /* hflags bits */
    uint64_t tsc;               /* the machine's TSC when armed (L1's TSC offset is 0) */
    uint64_t tsc_step;          /* what one RDTSC adds */
    /* Time (emu/core/timebase.py): the engine's count of instructions retired lives in the CPU
     * state at off_insns (0: the stock engine, no count). C adds to `ticks` what time moved
     * while it ran without Python: instructions retired since Python last looked (insns_seen),
     * each exit's fixed cost (exit_cost), RDTSC's step. Python takes `ticks` into its TSC and
     * clears it at every entry (Timebase.sync). */
    uint64_t off_insns;
    uint64_t insns_seen;
    uint64_t ticks;
    /* CR8 (the APIC's TPR[7:4]): Python's TPR when armed; C's writes land here and Python takes
     * them at its next entry. Writes only while cr8_write_ok: nothing requested that a lower
     * priority could let in, no timer that could fire (emu/core/fast_exits.py). */
    uint64_t tpr;
    uint64_t cr8_write_ok;
    uint64_t cr8;               /* count of CR8 exits answered here */
    /* The ACPI PM timer's 4 ports (0: not answered here) and its clock (devices/pm_timer.py:
     * each read costs io_cost + pm_read_ticks, then returns tsc * pm_hz / tsc_hz mod 2^24). */
    uint64_t pm_port;
    uint64_t io_cost, pm_read_ticks, pm_hz, tsc_hz;
    uint64_t pm_reads;          /* count of PM timer reads answered here */
    /* MOV to CR4 (control_regs.Cr4Writes): the bits the model lets software set, the CR4 and
     * CR4.PAE numbers, Unicorn's register id for CR4 and uc_reg_write (which does what a MOV
     * CR4 does to Unicorn's CPU: hflags, TLB flush). */
    uint64_t cr4_allowed, cr4_pae, cr4_pcide, cr4_regid;
    reg_fn reg_write;
    uint64_t cr4;               /* count of CR4 writes answered here */
    uint64_t deadline_by_time;  /* the run's instruction deadline stands for a time: spend */
    uint64_t rdtsc, cpuid;      /* counts of exits answered here */
    uint64_t off[FX_N_OFF];
    vmem_fn vmem_read;
    uint64_t n_cpuid;
    struct cpuid_slot cpuid_slots[FX_CPUID_SLOTS];
    uint64_t rdmsr;             /* count of RDMSRs answered here */
    uint64_t n_msr;
    struct msr_slot msr_slots[FX_MSR_SLOTS];
    /* RFLAGS.TF: an exit of an instruction run with it set owes a single-step trap once the
     * instruction completes, which only the Python handlers raise. */
    uint64_t eflags_tf;
    /* This CPU's own TSC is the machine's time plus tsc_adjust (Machine._read_tsc: a write of
     * the TSC on a machine of several CPUs moves only the writer's). */
    uint64_t tsc_adjust;
};

struct engine {
    void *uc;
    void *ctx;
    ctx_fn save, restore;
    reg_fn reg_read, reg_write;
    ctl_fn ctl;
    int64_t flush_control;
    intr_fn fallback;
    uint64_t enabled;
    uint64_t replays;
    uint64_t fallbacks;
    uint64_t seq;           /* bumped by every completed program: Python syncs when it moved */
    uint64_t state;         /* programs guard on it and set it; Python clears it when it runs */
    struct fast fx;
    const struct op *programs[N_INTNO][PER_INTNO];
    uint32_t exit_cost[N_INTNO];    /* ticks each exit costs (emu/core/timebase.py) */
    in_fn in_fallback;              /* the machine's Python IN hook */
    struct svm_insn svm;            /* L1's VMLOAD/VMSAVE/STGI/CLGI (svm_insn.c) */
    struct deliver dl;              /* L1's exceptions through its IDT (deliver.c) */
    struct apic_fast apic;          /* L1's x2APIC writes (apic_fast.c) */
    struct l2_msr l2;               /* L2's MSR accesses L0 answers with #GP (l2_msr.c) */
};

#define ENV64(f, name) (*(uint64_t *)((f)->env + (f)->off[name]))
#define ENV32(f, name) (*(uint32_t *)((f)->env + (f)->off[name]))

/* Ticks that are not instructions (an exit's cost, RDTSC's step, a PM-timer read): they are
 * time, so an instruction deadline the run loop set from a time (the next timer's) comes
 * nearer by as much; at the count itself the run stops at the next block. The deadline word
 * follows the count in the CPU state (patch 0005); all ones: none. */
static void spend(struct fast *f, uint64_t t)
{
    f->ticks += t;
    if (f->off_insns && t && f->deadline_by_time) {
        uint64_t *deadline = (uint64_t *)(f->env + f->off_insns + 8);
        uint64_t n = *(const uint64_t *)(f->env + f->off_insns);
        if (*deadline != UINT64_MAX)
            *deadline = *deadline - n > t ? *deadline - t : n;
    }
}

/* Instructions retired since Python or C last looked become ticks. */
static void fold_insns(struct fast *f)
{
    if (f->off_insns) {
        uint64_t n = *(const uint64_t *)(f->env + f->off_insns);
        f->ticks += n - f->insns_seen;
        f->insns_seen = n;
    }
}

/* RDTSC's effect, as Machine._exit_rdtsc: the TSC moves one step, RDX:EAX get it plus the
 * world's TSC offset, RIP moves past the two bytes. Only while the fast exits are armed (the
 * TSC is C's then): callers check. */
static void do_rdtsc(struct fast *f, uint64_t offset, uint64_t rip)
{
    uint64_t t;
    fold_insns(f);
    spend(f, f->tsc_step);
    t = f->tsc + f->ticks + f->tsc_adjust + offset;
    ENV64(f, FX_OFF_RAX) = t & 0xFFFFFFFFu;
    ENV64(f, FX_OFF_RDX) = t >> 32;
    ENV64(f, FX_OFF_EIP) = rip + 2;
    f->rdtsc++;
}

/* A guest's TSC under a TSC ratio (APM vol. 2, 15.30.5, 8.32 fixed point): do_rdtsc left its
 * own TSC plus the offset in RDX:EAX; the guest reads the own TSC scaled, plus the offset, as
 * Machine._read_tsc computes it. */
static void scale_tsc(struct fast *f, uint64_t offset, uint64_t ratio)
{
    uint64_t own = ((ENV64(f, FX_OFF_RDX) << 32) | (ENV64(f, FX_OFF_RAX) & 0xFFFFFFFFu)) - offset;
    uint64_t t = (uint64_t)(((unsigned __int128)own * ratio) >> 32) + offset;
    ENV64(f, FX_OFF_RAX) = t & 0xFFFFFFFFu;
    ENV64(f, FX_OFF_RDX) = t >> 32;
}

/* The exit's fixed cost, when it is handled here: once per exit, before its effects (the Python
 * path adds it before its handler runs, so an RDTSC in the handling sees it). */
static void charge(struct engine *e, uint32_t intno)
{
    fold_insns(&e->fx);
    spend(&e->fx, e->exit_cost[intno]);
}

static int run(struct engine *e, const struct op *op, uint32_t intno)
{
    uint64_t v;
    int charged = 0;
    for (;; op++) {
        switch (op->code) {
        case OP_END:
            if (!charged)
                charge(e, intno);
            return 1;
        case OP_CMP:
            if (memcmp((const void *)op->a, (const void *)op->b, op->len) != 0)
                return 0;
            break;
        case OP_EQ64:
            memcpy(&v, (const void *)op->a, 8);
            if ((v & op->c) != op->b)
                return 0;
            break;
        case OP_COMMIT:
            if (!charged)
                charge(e, intno);
            charged = 1;
            break;
        case OP_COPY:
            memmove((void *)op->a, (const void *)op->b, op->len);
            break;
        case OP_SET64:
            memcpy((void *)op->a, &op->b, 8);
            break;
        case OP_ADD64:
            memcpy(&v, (const void *)op->a, 8);
            v += op->b;
            memcpy((void *)op->a, &v, 8);
            break;
        case OP_SAVE:
            e->save(e->uc, e->ctx);
            break;
        case OP_RESTORE:
            e->restore(e->uc, e->ctx);
            break;
        case OP_FLUSH:
            e->ctl(e->uc, (int)e->flush_control);
            break;
        case OP_REGREAD:
            e->reg_read(e->uc, (int)op->b, (void *)op->a);
            break;
        case OP_REGWRITE:
            e->reg_write(e->uc, (int)op->b, (void *)op->a);
            break;
        case OP_MSRPM:
            if (!msrpm_intercepted((const uint8_t *)op->a, (const struct msrpm_ranges *)op->c,
                                   *(const uint32_t *)op->b, op->len != 0))
                return 0;
            break;
        case OP_RDTSC:
            do_rdtsc(&e->fx, op->b, ENV64(&e->fx, FX_OFF_EIP));
            if (op->c)
                scale_tsc(&e->fx, op->b, op->c);
            break;
        default:
            return 0;
        }
    }
}


/* L1's RDTSC, as Machine._exit_rdtsc does it: RDTSCP (which Unicorn reports as RDTSC) and a
 * code read that fails are left to Python. Returns 1 if answered. */
static int fast_rdtsc(void *uc, struct fast *f)
{
    uint64_t rip = ENV64(f, FX_OFF_EIP), va;
    uint8_t code[3];
    va = (ENV32(f, FX_OFF_HFLAGS) & f->hf_cs64) ? rip : ENV64(f, FX_OFF_CS_BASE) + rip;
    if (f->vmem_read(uc, va, 1 /* UC_PROT_READ */, code, 3) != 0)
        return 0;
    if (code[0] == 0x0F && code[1] == 0x01 && code[2] == 0xF9)
        return 0;
    do_rdtsc(f, 0, rip);
    return 1;
}

/* L1's CPUID from the results Python computed since it last ran (Machine._exit_cpuid). */
static int fast_cpuid(struct fast *f)
{
    uint32_t leaf = (uint32_t)ENV64(f, FX_OFF_RAX), sub = (uint32_t)ENV64(f, FX_OFF_RCX);
    for (uint64_t i = 0; i < f->n_cpuid && i < FX_CPUID_SLOTS; i++) {
        const struct cpuid_slot *c = &f->cpuid_slots[i];
        if (c->leaf == leaf && c->subleaf == sub && c->cr4 == ENV64(f, FX_OFF_CR4)) {
            ENV64(f, FX_OFF_RAX) = c->regs[0];
            ENV64(f, FX_OFF_RBX) = c->regs[1];
            ENV64(f, FX_OFF_RCX) = c->regs[2];
            ENV64(f, FX_OFF_RDX) = c->regs[3];
            ENV64(f, FX_OFF_EIP) += 2;
            f->cpuid++;
            return 1;
        }
    }
    return 0;
}

/* MOV to/from CR8 in 64-bit mode in the one spelling compilers emit, REX (R set: CR8) 0F 20/22
 * with a register operand (Machine's irq._cr8_exit is the reference; every other spelling, a
 * write of bits 63:4 (#GP), or a write while cr8_write_ok is 0 goes to Python). */
static int fast_cr8(void *uc, struct engine *e, int write)
{
    struct fast *f = &e->fx;
    uint64_t rip = ENV64(f, FX_OFF_EIP), *reg;
    uint8_t code[4];
    if (!(ENV32(f, FX_OFF_HFLAGS) & f->hf_cs64))
        return 0;
    if (f->vmem_read(uc, rip, 1 /* UC_PROT_READ */, code, 4) != 0)
        return 0;
    if ((code[0] & 0xF4) != 0x44 || code[1] != 0x0F || code[2] != (write ? 0x22 : 0x20) ||
        (code[3] & 0xF8) != 0xC0)
        return 0;
    /* REX.W is ignored (64-bit operand either way), REX.X unused, REX.B extends the register */
    reg = (uint64_t *)(f->env + f->off[FX_OFF_RAX]) + ((code[3] & 7) | ((code[0] & 1) << 3));
    if (write) {
        if (!f->cr8_write_ok || (*reg >> 4) != 0 || apic_fast_busy(&e->apic, f->tsc + f->ticks))
            return 0;
        f->tpr = *reg << 4;
    } else {
        *reg = (f->tpr & 0xFF) >> 4;
    }
    ENV64(f, FX_OFF_EIP) = rip + 4;
    f->cr8++;
    return 1;
}

/* MOV CR4, reg at CPL 0 in 64-bit mode, spelled 0F 22 /4 with a register operand and at most
 * a REX prefix without R, that Cr4Writes would perform (no reserved bit, PAE kept, PCIDE not
 * set: any of those, another spelling, or another mode goes to Python). */
static int fast_cr4(void *uc, struct fast *f)
{
    uint64_t rip = ENV64(f, FX_OFF_EIP), value;
    uint8_t code[4];
    int n = 0, rex = 0;
    if (!(ENV32(f, FX_OFF_HFLAGS) & f->hf_cs64) || (ENV32(f, FX_OFF_HFLAGS) & 3) != 0)
        return 0;
    if (f->vmem_read(uc, rip, 1 /* UC_PROT_READ */, code, 4) != 0)
        return 0;
    if ((code[0] & 0xF0) == 0x40) {
        if (code[0] & 4)
            return 0;
        rex = code[0];
        n = 1;
    }
    if (code[n] != 0x0F || code[n + 1] != 0x22 || (code[n + 2] & 0xF8) != 0xE0)
        return 0;
    value = *((uint64_t *)(f->env + f->off[FX_OFF_RAX]) + ((code[n + 2] & 7) | ((rex & 1) << 3)));
    if ((value & ~f->cr4_allowed) || !(value & f->cr4_pae) || (value & f->cr4_pcide))
        return 0;
    if (f->reg_write(uc, (int)f->cr4_regid, &value) != 0)
        return 0;
    ENV64(f, FX_OFF_EIP) = rip + (uint64_t)n + 3;
    f->cr4++;
    return 1;
}

/* L1's RDMSR (EXITINFO1 0; WRMSR is 1) of an MSR Python reads from the CPU state itself
 * (Machine._exit_msr with a CPU-backed reader): EDX:EAX get it, RIP moves past 0F 32. */
static int fast_rdmsr(struct fast *f)
{
    uint32_t index = (uint32_t)ENV64(f, FX_OFF_RCX);
    if (ENV32(f, FX_OFF_ERROR_CODE) != 0)
        return 0;
    for (uint64_t i = 0; i < f->n_msr && i < FX_MSR_SLOTS; i++) {
        const struct msr_slot *m = &f->msr_slots[i];
        if (m->index == index) {
            uint64_t v = m->width == 4 ? *(const uint32_t *)(f->env + m->env_off)
                                       : *(const uint64_t *)(f->env + m->env_off);
            ENV64(f, FX_OFF_RAX) = v & 0xFFFFFFFFu;
            ENV64(f, FX_OFF_RDX) = v >> 32;
            ENV64(f, FX_OFF_EIP) += 2;
            f->rdmsr++;
            return 1;
        }
    }
    return 0;
}

/* L1's RDMSR or WRMSR of an MSR the MSR file does not implement: #GP(0) at the instruction
 * (Machine._exit_msr), delivered by deliver.c. */
static int msr_gp(void *uc, struct engine *e)
{
    struct deliver *d = &e->dl;
    uint32_t index = (uint32_t)ENV64(&e->fx, FX_OFF_RCX);
    if (!d->enabled || !d->n_msrs || deliver_msr_known(d, index))
        return 0;
    if (!deliver_exception(d, uc, e->fx.env, (uint32_t)d->gp, DL_EXCEPTION, 1, 0,
                           ENV64(&e->fx, FX_OFF_EIP), 0, 0))
        return 0;
    d->msr_gp++;
    return 1;
}

/* Whether `intno` is the exit of an exception deliver.c may deliver in L1. */
static int dl_exception(const struct deliver *d, uint32_t intno)
{
    return d->enabled && intno >= d->exit_excp0 && intno < d->exit_excp0 + 32 &&
           ((d->vectors >> (intno - d->exit_excp0)) & 1);
}

/* One-byte opcodes whose only memory reference is their ModRM operand (ALU r/m forms, MOVSXD,
 * IMUL, group 1/2/3, MOV, TEST, XCHG, INC/DEC r/m): bit n set for opcode n. Group 5 (FF) is
 * not here: its /2../6 forms are CALL, JMP and PUSH, which also touch the stack. */
static const uint64_t modrm_only_1[4] = {
    0x0F0F0F0F0F0F0F0Full, 0x00000A0800000000ull, 0x0000000000000FFFull, 0x40C00000000F00C3ull};
/* Two-byte opcodes (0F xx) of the same kind: MOVUPS..MOVHPD (10-17), MOVAPS..COMISD (28-2F),
 * CMOVcc (40-4F), MOVQ/MOVDQ (6F, 7F), BT* (A3 AB B3 BB), IMUL (AF), CMPXCHG (B0 B1), MOVZX and
 * MOVSX (B6 B7 BE BF), XADD (C0 C1). */
static const uint64_t modrm_only_0f[4] = {
    0x0000FF0000FF0000ull, 0x800080000000FFFFull, 0xC8CB880800000000ull, 0x0000000000000003ull};

static int in_set(const uint64_t set[4], uint8_t op)
{
    return (set[op >> 6] >> (op & 63)) & 1;
}

/* Whether a #GP(0) the engine raised could be the APM's #SS(0) instead: a non-canonical address
 * through the SS segment (emu/arch/stack_segment.py decides, in Python). A 64-bit address
 * base + index * scale + disp32 is canonical whenever every register lies within +-2^43 (the
 * sum stays within +-2^47), and so is a stack access near such an RSP: then only an SS override
 * (36; MOV with a 64-bit absolute offset names its address without registers) can make it one.
 * Otherwise the instruction is decoded as far as needed: an opcode whose only memory reference
 * is its ModRM operand, with a DS, ES, CS, FS or GS override or a base other than RSP/RBP (or
 * none: RIP-relative, disp32), is a plain #GP(0) and stays here; anything else goes to Python.
 * Code whose bytes cannot be read stays here: Python keeps the #GP for it too. */
static int may_be_stack_fault(void *uc, const struct fast *f)
{
    const uint64_t *regs = (const uint64_t *)(f->env + f->off[FX_OFF_RAX]);
    uint64_t rip = ENV64(f, FX_OFF_EIP);
    uint8_t b, rex = 0, modrm, sib, base;
    int large = 0, other_seg = 0, i = 0;
    for (int r = 0; r < 16; r++)
        large |= (uint64_t)((int64_t)(regs[r] << 20) >> 20) != regs[r];
    for (;; i++) {
        if (i == 14 || f->vmem_read(uc, rip + i, 1 /* UC_PROT_READ */, &b, 1) != 0)
            return 0;
        if (b == 0x36)
            return 1;
        if (b == 0x26 || b == 0x2E || b == 0x3E || b == 0x64 || b == 0x65)
            other_seg = 1;
        else if (b != 0x66 && b != 0x67 && b != 0xF0 && b != 0xF2 && b != 0xF3)
            break;
    }
    if (!large)
        return 0;
    if ((b & 0xF0) == 0x40) {
        rex = b;
        if (f->vmem_read(uc, rip + ++i, 1, &b, 1) != 0)
            return 0;
    }
    if (b == 0x0F) {
        if (f->vmem_read(uc, rip + ++i, 1, &b, 1) != 0)
            return 0;
        if (!in_set(modrm_only_0f, b))
            return 1;
    } else if (!in_set(modrm_only_1, b)) {
        return 1;
    }
    if (f->vmem_read(uc, rip + ++i, 1, &modrm, 1) != 0)
        return 0;
    if ((modrm >> 6) == 3 || other_seg)
        return 0;                               /* no memory operand, or not SS's */
    base = modrm & 7;
    if (base == 4) {
        if (f->vmem_read(uc, rip + ++i, 1, &sib, 1) != 0)
            return 0;
        base = sib & 7;
    }
    if (base == 5 && (modrm >> 6) == 0)
        return 0;                               /* RIP-relative or disp32: DS */
    return (base == 4 || base == 5) && !(rex & 1);
}

/* L1's exception, as Machine._exit_exception raises it: the error code the exit left for the
 * vectors that have one, CR2 from EXITINFO2 for #PF (set only if delivery happens here). */
static int fast_exception(void *uc, struct engine *e, uint32_t intno)
{
    struct deliver *d = &e->dl;
    uint32_t vector = intno - (uint32_t)d->exit_excp0;
    int has_error = (d->error_code_vectors >> vector) & 1;
    if (vector == d->gp && ENV32(&e->fx, FX_OFF_ERROR_CODE) == 0 && may_be_stack_fault(uc, &e->fx))
        return 0;
    return deliver_exception(d, uc, e->fx.env, vector, DL_EXCEPTION, has_error,
                             has_error ? ENV32(&e->fx, FX_OFF_ERROR_CODE) : 0,
                             ENV64(&e->fx, FX_OFF_EIP), vector == d->pf,
                             vector == d->pf ? *(const uint64_t *)d->pf_cr2 : 0);
}

/* A TSC deadline written in the past fires at once (apic_fast.c `take_vector`): its interrupt
 * is delivered here, after the WRMSR, as the interrupt point right after it would; when
 * deliver.c leaves it to the reference, it waits in IRR and the run stops as before. */
static void take_timer_now(void *uc, struct engine *e)
{
    struct apic_fast *a = &e->apic;
    int vector = (int)a->take_vector - 1;
    if (!a->take_vector)
        return;
    a->take_vector = 0;
    if (e->dl.enabled && !e->dl.window &&
        deliver_exception(&e->dl, uc, e->fx.env, (uint32_t)vector, DL_EXTERNAL, 0, 0,
                          ENV64(&e->fx, FX_OFF_EIP), 0, 0))
        apic_fast_take_now(a, vector);
    else
        apic_fast_take_later(a, uc, vector);
}

/* L1's WRMSR (EXITINFO1 1) of an x2APIC register or IA32_TSC_DEADLINE (apic_fast.c): RIP moves
 * past 0F 30 when answered. A request it leaves in IRR keeps STGI, MOV CR8 and the exceptions
 * deliver.c would deliver in Python. */
static int fast_wrmsr(void *uc, struct engine *e)
{
    struct fast *f = &e->fx;
    struct apic_time t;
    uint64_t value = (ENV64(f, FX_OFF_RDX) << 32) | (ENV64(f, FX_OFF_RAX) & 0xFFFFFFFFu);
    if (!f->off_insns)
        return 0;
    t.count = (const uint64_t *)(f->env + f->off_insns);
    t.deadline = (uint64_t *)(f->env + f->off_insns + 8);
    t.by_time = &f->deadline_by_time;
    t.now = f->tsc + f->ticks;
    if (!apic_fast_wrmsr(&e->apic, uc, (uint32_t)ENV64(f, FX_OFF_RCX), value, &f->tpr, &t))
        return 0;
    ENV64(f, FX_OFF_EIP) += 2;
    take_timer_now(uc, e);
    if (apic_fast_busy(&e->apic, t.now)) {
        e->svm.stgi_ok = 0;
        e->dl.enabled = 0;      /* deliver.c runs only while the APIC signals nothing */
    }
    return 1;
}

/* L1's HLT (struct apic_fast: Machine._exit_hlt and InterruptController.halt do the same). */
static int fast_hlt(void *uc, struct engine *e)
{
    struct fast *f = &e->fx;
    struct apic_fast *a = &e->apic;
    ENV64(f, FX_OFF_EIP) += 1;
    ENV32(f, FX_OFF_HFLAGS) &= ~(uint32_t)a->hf_inhibit_irq;
    a->halted = a->kicked = a->changed = 1;
    a->hlts++;
    a->emu_stop(uc);
    return 1;
}

/* L1's INT3 (CC) or INT n (CD ib) without prefixes, as Machine._exit_intn decodes it: a
 * software event returning past the instruction. Other spellings (prefixes, INTO, INT1) and a
 * code read that fails go to Python. */
static int fast_swint(void *uc, struct engine *e)
{
    struct fast *f = &e->fx;
    uint64_t rip = ENV64(f, FX_OFF_EIP);
    uint8_t code[2];
    uint32_t vector, len;
    if (!(ENV32(f, FX_OFF_HFLAGS) & f->hf_cs64))
        return 0;
    if (f->vmem_read(uc, rip, 1 /* UC_PROT_READ */, code, 1) != 0)
        return 0;
    if (code[0] == 0xCC) {
        vector = 3;
        len = 1;
    } else if (code[0] == 0xCD && f->vmem_read(uc, rip + 1, 1 /* UC_PROT_READ */, code + 1, 1) == 0) {
        vector = code[1];
        len = 2;
    } else {
        return 0;
    }
    if (!deliver_exception(&e->dl, uc, f->env, vector, DL_SOFTWARE, 0, 0, rip + len, 0, 0))
        return 0;
    e->dl.swint++;
    return 1;
}

static int fast_exit(void *uc, struct engine *e, uint32_t intno)
{
    struct fast *f = &e->fx;
    uint64_t ticks = f->ticks, seen = f->insns_seen, deadline = 0;
    if (f->off_insns)
        deadline = *(const uint64_t *)(f->env + f->off_insns + 8);
    const struct svm_insn *si = &e->svm;
    int svm = si->enabled && (intno == si->exit_vmload || intno == si->exit_vmsave ||
                              intno == si->exit_stgi || intno == si->exit_clgi);
    if (ENV64(f, FX_OFF_VM_VMCB) != f->l1_vmcb || (ENV32(f, FX_OFF_HFLAGS2) & f->hf2_npt))
        return 0;
    if (e->apic.hlt_ok && e->apic.enabled && intno == e->apic.exit_hlt) {
        charge(e, intno);
        return fast_hlt(uc, e);
    }
    int exc = dl_exception(&e->dl, intno);
    int swint = e->dl.enabled && e->dl.exit_swint && intno == e->dl.exit_swint;
    if (!svm && !exc && !swint && intno != FX_EXIT_RDTSC && intno != FX_EXIT_CPUID &&
        intno != FX_EXIT_CR8_READ && intno != FX_EXIT_CR8_WRITE && intno != FX_EXIT_CR4_WRITE &&
        intno != FX_EXIT_MSR)
        return 0;
    charge(e, intno);
    if (svm ? svm_insn_exit(&e->svm, f->env, intno, e->state) :
        exc ? fast_exception(uc, e, intno) :
        swint ? fast_swint(uc, e) :
        intno == FX_EXIT_RDTSC ? fast_rdtsc(uc, f) :
        intno == FX_EXIT_CPUID ? fast_cpuid(f) :
        intno == FX_EXIT_CR4_WRITE ? fast_cr4(uc, f) :
        intno == FX_EXIT_MSR ? (ENV32(f, FX_OFF_ERROR_CODE) == 1 ? fast_wrmsr(uc, e)
                                                                  : fast_rdmsr(f))
                               || msr_gp(uc, e) :
        fast_cr8(uc, e, intno == FX_EXIT_CR8_WRITE))
        return 1;
    f->ticks = ticks;           /* not answered: Python handles the exit and charges it */
    f->insns_seen = seen;
    if (f->off_insns)
        *(uint64_t *)(f->env + f->off_insns + 8) = deadline;
    return 0;
}

/* L2's exits L0 answers without L1 or Python (l2_msr.c): charged as every exit answered here
 * (after the answer, which reads no time). */
static int fast_l2_exit(void *uc, struct engine *e, uint32_t intno)
{
    if (!l2_msr_exit(&e->l2, &e->dl, uc, e->fx.env, intno, e->state))
        return 0;
    charge(e, intno);
    return 1;
}

/* The UC_HOOK_INTR callback; user data is the engine. */
void replay_intr(void *uc, uint32_t intno, void *user)
{
    struct engine *e = (struct engine *)user;
    int stepping = e->fx.env && (ENV64(&e->fx, FX_OFF_EFLAGS) & e->fx.eflags_tf);
    if (e->fx.armed && e->enabled && !stepping && fast_exit(uc, e, intno))
        return;
    if (e->fx.armed && e->enabled && !stepping && fast_l2_exit(uc, e, intno))
        return;
    if (e->enabled && !stepping && intno < N_INTNO) {
        for (int i = 0; i < PER_INTNO && e->programs[intno][i] != NULL; i++) {
            if (run(e, e->programs[intno][i], intno)) {
                e->replays++;
                e->seq++;
                return;
            }
        }
    }
    e->fallbacks++;
    e->fallback(uc, intno, user);
}

/* The UC_HOOK_INSN callback for IN; user data is the engine. L1's reads of the PM timer while
 * armed, as Machine._on_in and PmBlock.read do them (the port cost, the read's time step, the
 * counter from the TSC); everything else goes to Python. */
uint32_t replay_in(void *uc, uint32_t port, int size, void *user)
{
    struct engine *e = (struct engine *)user;
    struct fast *f = &e->fx;
    if (e->enabled && f->armed && f->pm_port && port >= f->pm_port && port < f->pm_port + 4 &&
        ENV64(f, FX_OFF_VM_VMCB) == f->l1_vmcb && size >= 1 && size <= 4) {
        uint64_t now, value;
        fold_insns(f);
        spend(f, f->io_cost + f->pm_read_ticks);
        now = f->tsc + f->ticks;
        value = (uint64_t)(((unsigned __int128)now * f->pm_hz) / f->tsc_hz) & 0xFFFFFF;
        f->pm_reads++;
        value >>= 8 * (port - f->pm_port);
        return (uint32_t)(size == 4 ? value & 0xFFFFFFFFu : value & ((1u << (8 * size)) - 1));
    }
    return e->in_fallback(uc, port, size, user);
}

/* Patch 0028's callback at the run's instruction deadline; user data is the engine. The
 * deadline stands for L1's TSC-deadline timer: take its interrupt here (apic_fast.c
 * `apic_fast_timer_due`, delivered by deliver.c as Machine.deliver_now would) and run on
 * without a bound. Anything else (another world, a trap owed, a delivery deliver.c leaves to
 * the reference) returns 0: the run stops and Python's interrupt point does it. */
int replay_deadline(void *uc, void *user)
{
    struct engine *e = (struct engine *)user;
    struct fast *f = &e->fx;
    uint64_t now;
    int vector;
    if (!e->enabled || !f->armed || !f->off_insns || !e->dl.enabled || e->dl.window ||
        ENV64(f, FX_OFF_VM_VMCB) != f->l1_vmcb || (ENV32(f, FX_OFF_HFLAGS2) & f->hf2_npt) ||
        (ENV64(f, FX_OFF_EFLAGS) & f->eflags_tf))
        return 0;
    now = f->tsc + f->ticks + (*(const uint64_t *)(f->env + f->off_insns) - f->insns_seen);
    vector = apic_fast_timer_due(&e->apic, now, f->tpr);
    if (vector < 0 || !deliver_exception(&e->dl, uc, f->env, (uint32_t)vector, DL_EXTERNAL, 0, 0,
                                         ENV64(f, FX_OFF_EIP), 0, 0))
        return 0;
    apic_fast_timer_taken(&e->apic, vector);
    *(uint64_t *)(f->env + f->off_insns + 8) = UINT64_MAX;
    f->deadline_by_time = 0;
    return 1;
}

/* The layout and numbers Python must agree on, as "name=value" words: replay.py compares them
 * with its own ctypes declarations when it loads the library and refuses a library built from a
 * different replay.c, so the two sides cannot drift apart silently. */
#define ABI(name, value) \
    n += snprintf(abi + n, sizeof abi - (size_t)n, "%s=%llu ", name, (unsigned long long)(value))
#define ABI_FIELD(type, field) ABI(#type "." #field, offsetof(struct type, field))

const char *replay_abi(void)
{
    static char abi[8192];
    int n = 0;
    if (abi[0])
        return abi;
    ABI("sizeof(op)", sizeof(struct op));
    ABI_FIELD(op, code); ABI_FIELD(op, len); ABI_FIELD(op, a); ABI_FIELD(op, b); ABI_FIELD(op, c);
    ABI("sizeof(engine)", sizeof(struct engine));
    ABI_FIELD(engine, uc); ABI_FIELD(engine, ctx); ABI_FIELD(engine, save);
    ABI_FIELD(engine, restore); ABI_FIELD(engine, reg_read); ABI_FIELD(engine, reg_write);
    ABI_FIELD(engine, ctl); ABI_FIELD(engine, flush_control); ABI_FIELD(engine, fallback);
    ABI_FIELD(engine, enabled); ABI_FIELD(engine, replays); ABI_FIELD(engine, fallbacks);
    ABI_FIELD(engine, seq); ABI_FIELD(engine, state); ABI_FIELD(engine, fx);
    ABI_FIELD(engine, programs); ABI_FIELD(engine, exit_cost); ABI_FIELD(engine, in_fallback);
    ABI_FIELD(engine, svm); ABI_FIELD(engine, dl);
    ABI("sizeof(deliver)", sizeof(struct deliver)); ABI("DL_MAX_MSRS", DL_MAX_MSRS);
    ABI("DL_LEVELS", DL_LEVELS); ABI("DL_EXCEPTION", DL_EXCEPTION);
    ABI("DL_SOFTWARE", DL_SOFTWARE); ABI("DL_EXTERNAL", DL_EXTERNAL);
#define DELIVER_FIELDS(X) X(enabled) X(ram) X(ram_size) X(off_regs) X(off_eip) X(off_hflags) \
    X(off_segs) X(seg_size) X(seg_selector) X(seg_base) X(seg_limit) X(seg_flags) X(off_cr) \
    X(off_efer) X(off_error_code) X(off_hflags2) X(hf2_npt) X(off_nested_cr3) \
    X(off_nested_pg_mode) X(npt_long) X(npt_nxe) X(seg_cs) X(seg_ss) X(seg_ldtr) X(seg_tr) \
    X(seg_gdtr) X(seg_idtr) X(hf_cpl_mask) X(hf_lma) X(hf_cs32) X(hf_ss32) X(hf_cs64) \
    X(hf_addseg) X(desc_s) X(desc_p) X(desc_l) X(desc_b) X(desc_dpl_shift) X(desc_type_shift) \
    X(desc_flag_mask) X(desc_g) X(cr0_pg) X(cr0_wp) X(cr4_smap) X(cr4_la57) X(efer_nxe) \
    X(cr4_pke) X(cr4_pks) X(off_pkru) X(off_pkrs) X(pte_pkey_shift) \
    X(rflags_if) X(rflags_tf) X(rflags_nt) X(rflags_rf) X(rflags_vm) X(gate_int) X(gate_trap) \
    X(pte_p) X(pte_rw) X(pte_us) X(pte_ps) X(pte_a) X(pte_d) X(addr_mask) X(large_levels) \
    X(rsvd) X(rsvd_large) X(vectors) X(error_code_vectors) X(fault_vectors) X(exit_excp0) \
    X(exit_swint) X(gp) X(rflags_regid) X(reg_read) X(reg_write) X(mem_write) X(code_written) \
    X(pf) X(pf_cr2) X(off_cr2) X(n_msrs) X(msrs) X(window) X(delivered) X(msr_gp) X(swint)
#define DELIVER_ABI(field) ABI_FIELD(deliver, field);
    DELIVER_FIELDS(DELIVER_ABI)
    ABI_FIELD(engine, apic);
    ABI("sizeof(apic_fast)", sizeof(struct apic_fast));
    ABI("APIC_TIMERS_UNKNOWN", APIC_TIMERS_UNKNOWN); ABI("APIC_DIRTY_ISR", APIC_DIRTY_ISR);
    ABI("APIC_DIRTY_IRR", APIC_DIRTY_IRR); ABI("APIC_DIRTY_TMR", APIC_DIRTY_TMR);
    ABI("APIC_DIRTY_ICR", APIC_DIRTY_ICR); ABI("APIC_DIRTY_DEADLINE", APIC_DIRTY_DEADLINE);
#define APIC_FIELDS(X) X(enabled) X(changed) X(isr) X(irr) X(tmr) X(icr) X(apic_id) \
    X(tsc_deadline) X(deadline_mode) X(lvt_timer) X(deadline_ok) X(one_cpu) X(others) X(sent) \
    X(sent_vector) X(sent_dest) X(timers_pending) X(wanted_timers) X(dirty) \
    X(always_stop) X(unbounded) X(tick_ok) X(request_addr) X(request_bit) X(kick_addr) \
    X(intercept_addr) X(intercept_bit) X(eflags_addr) X(if_mask) X(hflags_addr) X(hflags2_addr) \
    X(hf2_gif) X(window_armed) X(kicked) X(deadline_moved) \
    X(bound_time) X(msr_tpr) X(msr_eoi) X(msr_icr) X(msr_self_ipi) X(msr_tsc_deadline) \
    X(lvt_masked) X(icr_writable) X(icr_mode_shift) X(icr_dest_logical) X(icr_shorthand_shift) \
    X(emu_stop) X(eoi) X(tpr) X(icr_sent) X(deadline) X(exit_hlt) X(hlt_ok) X(hf_inhibit_irq) \
    X(halted) X(hlts) X(fire_ok) X(fired) X(take_vector) \
    X(taken_now)
#define APIC_ABI(field) ABI_FIELD(apic_fast, field);
    APIC_FIELDS(APIC_ABI)
    ABI_FIELD(engine, l2);
    ABI("sizeof(l2_msr)", sizeof(struct l2_msr)); ABI("sizeof(l2_state)", sizeof(struct l2_state));
    ABI("L2_MSRPM_RANGES", L2_MSRPM_RANGES);
#define L2_MSR_FIELDS(X) X(enabled) X(exit_msr) X(l2_vmcb) X(off_vm_vmcb) X(off_rcx) \
    X(off_error_code) X(off_eip) X(msrpm_size) X(ranges) X(n_states) X(states) X(msr_gp)
#define L2_MSR_ABI(field) ABI_FIELD(l2_msr, field);
    L2_MSR_FIELDS(L2_MSR_ABI)
#define L2_STATE_ABI(field) ABI_FIELD(l2_state, field);
    L2_STATE_ABI(in_l2) L2_STATE_ABI(msr_prot) L2_STATE_ABI(msrpm) L2_STATE_ABI(gp_intercepted)
    ABI("sizeof(svm_insn)", sizeof(struct svm_insn));
    ABI_FIELD(svm_insn, enabled); ABI_FIELD(svm_insn, ram); ABI_FIELD(svm_insn, ram_size);
    ABI_FIELD(svm_insn, vmcb_size); ABI_FIELD(svm_insn, maxphyaddr); ABI_FIELD(svm_insn, hf_cs64);
    ABI_FIELD(svm_insn, off_eip); ABI_FIELD(svm_insn, off_rax); ABI_FIELD(svm_insn, off_hflags);
    ABI_FIELD(svm_insn, seg_selector); ABI_FIELD(svm_insn, seg_base);
    ABI_FIELD(svm_insn, seg_limit); ABI_FIELD(svm_insn, seg_flags);
    ABI_FIELD(svm_insn, vseg_selector); ABI_FIELD(svm_insn, vseg_attrib);
    ABI_FIELD(svm_insn, vseg_limit); ABI_FIELD(svm_insn, vseg_base);
    ABI_FIELD(svm_insn, insn_length); ABI_FIELD(svm_insn, exit_vmload);
    ABI_FIELD(svm_insn, exit_vmsave); ABI_FIELD(svm_insn, exit_stgi);
    ABI_FIELD(svm_insn, exit_clgi); ABI_FIELD(svm_insn, gif); ABI_FIELD(svm_insn, stgi_ok);
    ABI_FIELD(svm_insn, vmload); ABI_FIELD(svm_insn, vmsave); ABI_FIELD(svm_insn, stgi);
    ABI_FIELD(svm_insn, clgi); ABI_FIELD(svm_insn, n_fields); ABI_FIELD(svm_insn, fields);
    ABI("sizeof(si_field)", sizeof(struct si_field));
    ABI_FIELD(si_field, kind); ABI_FIELD(si_field, env_off); ABI_FIELD(si_field, vmcb_off);
    ABI("SI_MAX_FIELDS", SI_MAX_FIELDS); ABI("SI_SEG", SI_SEG); ABI("SI_Q", SI_Q);
    ABI("SI_Q_CANON", SI_Q_CANON); ABI("SI_U16_IN_U32", SI_U16_IN_U32);
    ABI("sizeof(fast)", sizeof(struct fast));
    ABI_FIELD(fast, armed); ABI_FIELD(fast, env); ABI_FIELD(fast, l1_vmcb);
    ABI_FIELD(fast, hf_cs64); ABI_FIELD(fast, hf2_npt); ABI_FIELD(fast, tsc);
    ABI_FIELD(fast, tsc_step); ABI_FIELD(fast, off_insns); ABI_FIELD(fast, insns_seen);
    ABI_FIELD(fast, ticks); ABI_FIELD(fast, tpr); ABI_FIELD(fast, cr8_write_ok);
    ABI_FIELD(fast, cr8); ABI_FIELD(fast, pm_port); ABI_FIELD(fast, io_cost);
    ABI_FIELD(fast, pm_read_ticks); ABI_FIELD(fast, pm_hz); ABI_FIELD(fast, tsc_hz);
    ABI_FIELD(fast, pm_reads); ABI_FIELD(fast, cr4_allowed); ABI_FIELD(fast, cr4_pae);
    ABI_FIELD(fast, cr4_pcide); ABI_FIELD(fast, cr4_regid); ABI_FIELD(fast, reg_write);
    ABI_FIELD(fast, cr4); ABI_FIELD(fast, deadline_by_time); ABI_FIELD(fast, rdtsc);
    ABI_FIELD(fast, cpuid);
    ABI_FIELD(fast, off); ABI_FIELD(fast, vmem_read); ABI_FIELD(fast, n_cpuid);
    ABI_FIELD(fast, cpuid_slots); ABI_FIELD(fast, rdmsr); ABI_FIELD(fast, n_msr);
    ABI_FIELD(fast, msr_slots); ABI_FIELD(fast, eflags_tf); ABI_FIELD(fast, tsc_adjust);
    ABI("sizeof(msr_slot)", sizeof(struct msr_slot)); ABI("FX_MSR_SLOTS", FX_MSR_SLOTS);
    ABI("FX_EXIT_MSR", FX_EXIT_MSR);
    ABI("sizeof(cpuid_slot)", sizeof(struct cpuid_slot));
    ABI("FX_N_OFF", FX_N_OFF); ABI("FX_CPUID_SLOTS", FX_CPUID_SLOTS);
    ABI("FX_EXIT_RDTSC", FX_EXIT_RDTSC); ABI("FX_EXIT_CPUID", FX_EXIT_CPUID);
    ABI("FX_EXIT_CR8_READ", FX_EXIT_CR8_READ); ABI("FX_EXIT_CR8_WRITE", FX_EXIT_CR8_WRITE);
    ABI("FX_EXIT_CR4_WRITE", FX_EXIT_CR4_WRITE);
    ABI("N_INTNO", N_INTNO);
    ABI("PER_INTNO", PER_INTNO);
    ABI("OP_END", OP_END); ABI("OP_CMP", OP_CMP); ABI("OP_EQ64", OP_EQ64);
    ABI("OP_COMMIT", OP_COMMIT); ABI("OP_COPY", OP_COPY); ABI("OP_SET64", OP_SET64);
    ABI("OP_ADD64", OP_ADD64); ABI("OP_SAVE", OP_SAVE); ABI("OP_RESTORE", OP_RESTORE);
    ABI("OP_FLUSH", OP_FLUSH); ABI("OP_REGREAD", OP_REGREAD); ABI("OP_REGWRITE", OP_REGWRITE);
    ABI("OP_RDTSC", OP_RDTSC); ABI("OP_MSRPM", OP_MSRPM);
    return abi;
}

/* A CPython module only so that setuptools builds and installs the library; it is loaded with
 * ctypes (emu/engine/replay.py) and exports nothing to Python. */
static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "creplay", NULL, -1, NULL};

PyMODINIT_FUNC PyInit_creplay(void)
{
    return PyModule_Create(&module);
}
