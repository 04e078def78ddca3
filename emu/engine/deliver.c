/* Event delivery (exceptions, INT n, interrupts) through a 64-bit IDT gate in long mode (AMD
 * APM vol. 2, 8.9), in C.
 *
 * A kernel that takes an exception per step (kvm-unit-tests probing MSRs with rdmsr_safe, a
 * fuzzer's faulting inputs) paid a stop of the engine and ~100 us of Python per delivery for a
 * few loads and one 40-byte store. This does the common case inside the INTR hook: an
 * interrupt or trap gate in 64-bit mode, a 64-bit code segment, with or without a privilege
 * change or an IST stack. It is exact by construction rather than by imitation: every step the
 * reference (emu/core/interrupts.py, Deliverer._long_mode) could end in a fault, and every page
 * walk after which the reference would set an Accessed or Dirty bit, makes this return 0 before
 * anything is changed, and the reference then delivers it, #DF rules and all. So the only
 * deliveries done here are those whose every access hits a present, accessed, permitted page and
 * whose every check passes, and for those both paths write the same bytes and registers.
 */
#include <stdint.h>
#include <string.h>

#include "deliver.h"

#define U64(env, off) (*(uint64_t *)((env) + (off)))
#define U32(env, off) (*(uint32_t *)((env) + (off)))
#define PAGE 4096u
#define MAX_CHUNKS 2

struct seg {
    uint32_t selector;
    uint64_t base;
    uint32_t limit, flags;
};

static uint64_t seg_at(const struct deliver *d, uint64_t env, uint64_t index)
{
    return env + d->off_segs + index * d->seg_size;
}

static struct seg seg_read(const struct deliver *d, uint64_t env, uint64_t index)
{
    uint64_t s = seg_at(d, env, index);
    struct seg r = {U32(s, d->seg_selector), U64(s, d->seg_base), U32(s, d->seg_limit),
                    U32(s, d->seg_flags)};
    return r;
}

static void seg_write(const struct deliver *d, uint64_t env, uint64_t index, struct seg v)
{
    uint64_t s = seg_at(d, env, index);
    U32(s, d->seg_selector) = v.selector;
    U64(s, d->seg_base) = v.base;
    U32(s, d->seg_limit) = v.limit;
    U32(s, d->seg_flags) = v.flags;
}

/* 48-bit canonical: bits 63:47 all equal (paging.is_canonical; 5-level paging falls back). */
static int canonical(uint64_t va)
{
    return (uint64_t)((int64_t)(va << 16) >> 16) == va;
}

/* One 4-level walk as the reference's _walk_core does it, when it succeeds *and* changes
 * nothing: every entry present, accessed, free of reserved bits, the rights allowing the access
 * (a user access needs U/S everywhere and R/W to write; a supervisor one is refused a user page
 * under SMAP, and a read-only page to write under WP), a write's page already dirty. With
 * `ncr3` (nested paging: `table` and the result are guest-physical), each table entry's
 * address goes through the nested walk as a user write (paging.GUEST_TABLE_ACCESS) and so does
 * the final address with the access's own kind; nested walks are user accesses. Anything else:
 * 0, and the reference walks (and faults, or sets the bits). */
static int walk4(const struct deliver *d, uint64_t table, uint64_t va, int write, int user,
                 int smap, int wp, int nxe, const uint64_t *ncr3, int nnxe, uint64_t *pa,
                 uint32_t pkru, uint32_t pkrs)
{
    int user_ok = 1, write_ok = 1;
    uint64_t entry, size, ea;
    for (int level = DL_LEVELS; level >= 1; level--) {
        int large;
        ea = table | (((va >> (12 + 9 * (level - 1))) & 0x1FF) << 3);
        if (ncr3 && !walk4(d, *ncr3, ea, 1, 1, 0, 0, nnxe, NULL, 0, &ea, 0, 0))
            return 0;
        if (ea + 8 > d->ram_size)
            return 0;
        memcpy(&entry, (const void *)(d->ram + ea), 8);
        if (!(entry & d->pte_p) || !(entry & d->pte_a))
            return 0;
        large = ((d->large_levels >> level) & 1) && (entry & d->pte_ps);
        if (entry & (large ? d->rsvd_large[nxe][level - 1] : d->rsvd[nxe][level - 1]))
            return 0;
        user_ok = user_ok && (entry & d->pte_us);
        write_ok = write_ok && (entry & d->pte_rw);
        if (level == 1 || large) {
            if (user) {
                if (!user_ok || (write && !write_ok))
                    return 0;
            } else {
                if (user_ok && smap)                /* implicit access: AC does not help */
                    return 0;
                if (write && !write_ok && wp)
                    return 0;
            }
            if (write && !(entry & d->pte_d))
                return 0;
            /* a key with any right withheld: the reference decides */
            if (((user_ok ? pkru : pkrs) >> (2 * ((entry >> d->pte_pkey_shift) & 0xF))) & 3)
                return 0;
            size = (uint64_t)1 << (12 + 9 * (level - 1));
            *pa = (entry & d->addr_mask & ~(size - 1)) | (va & (size - 1));
            return ncr3 ? walk4(d, *ncr3, *pa, write, 1, 0, 0, nnxe, NULL, 0, pa, 0, 0) : 1;
        }
        table = entry & d->addr_mask;
    }
    return 0;
}

/* Linear -> physical for a data access of the CPU in `env` (its own paging, and nested paging
 * when it runs an L2). */
static int translate(const struct deliver *d, uint64_t env, uint64_t va, int write, int user,
                     uint64_t *pa)
{
    uint64_t cr0 = U64(env, d->off_cr), cr3 = U64(env, d->off_cr + 3 * 8);
    uint64_t cr4 = U64(env, d->off_cr + 4 * 8), efer = U64(env, d->off_efer), ncr3 = 0;
    int nested = (U32(env, d->off_hflags2) & d->hf2_npt) != 0, nnxe = 0;
    if (!(cr0 & d->cr0_pg) || (cr4 & d->cr4_la57) || !canonical(va) ||
        (cr3 & ~d->addr_mask & 0x000FFFFFFFFFF000ull))
        return 0;
    if (nested) {
        uint32_t mode = U32(env, d->off_nested_pg_mode);
        ncr3 = U64(env, d->off_nested_cr3) & d->addr_mask;
        if ((mode & d->npt_long) != d->npt_long ||
            (U64(env, d->off_nested_cr3) & ~d->addr_mask & 0x000FFFFFFFFFF000ull))
            return 0;
        nnxe = (mode & d->npt_nxe) != 0;
    }
    return walk4(d, cr3 & d->addr_mask, va, write, user, (cr4 & d->cr4_smap) != 0,
                 (cr0 & d->cr0_wp) != 0, (efer & d->efer_nxe) != 0, nested ? &ncr3 : NULL,
                 nnxe, pa, (cr4 & d->cr4_pke) ? U32(env, d->off_pkru) : 0,
                 (cr4 & d->cr4_pks) ? U32(env, d->off_pkrs) : 0);
}

/* Split [va, va+n) at page boundaries and translate each piece (n <= PAGE). */
static int translate_range(const struct deliver *d, uint64_t env, uint64_t va, uint32_t n,
                           int write, int user, uint64_t pa[MAX_CHUNKS], uint32_t len[MAX_CHUNKS])
{
    uint32_t first = PAGE - (uint32_t)(va & (PAGE - 1));
    len[0] = n < first ? n : first;
    len[1] = n - len[0];
    for (int i = 0; i < MAX_CHUNKS; i++) {
        if (len[i] && (!translate(d, env, va + (i ? len[0] : 0), write, user, &pa[i]) ||
                       pa[i] + len[i] > d->ram_size))
            return 0;
    }
    return 1;
}

static int read_linear(const struct deliver *d, uint64_t env, uint64_t va, void *out, uint32_t n)
{
    uint64_t pa[MAX_CHUNKS];
    uint32_t len[MAX_CHUNKS];
    if (!translate_range(d, env, va, n, 0, 0, pa, len))
        return 0;
    memcpy(out, (const void *)(d->ram + pa[0]), len[0]);
    if (len[1])
        memcpy((uint8_t *)out + len[0], (const void *)(d->ram + pa[1]), len[1]);
    return 1;
}

static uint64_t bit(uint64_t mask, uint32_t n)
{
    return n < 64 ? (mask >> n) & 1 : 0;
}

int deliver_exception(struct deliver *d, void *uc, uint64_t env, uint32_t vector, int kind,
                      int has_error, uint64_t error, uint64_t rip, int set_cr2, uint64_t cr2)
{
    uint64_t hf = U32(env, d->off_hflags), rflags = 0, gate[2], raw, sp, target, rsp;
    uint64_t frame[6], stack_pa[MAX_CHUNKS];
    uint32_t stack_len[MAX_CHUNKS], cpl, new_cpl, gtype, selector, ist, dpl, type, n;
    struct seg idtr, table, cs, tss, old_cs, old_ss;

    if (!(hf & d->hf_lma) || !(hf & d->hf_cs64) || vector > 255)
        return 0;                                   /* compatibility mode: the reference */
    if (d->reg_read(uc, (int)d->rflags_regid, &rflags) != 0 || (rflags & d->rflags_vm))
        return 0;
    cpl = (uint32_t)(hf & d->hf_cpl_mask);
    if (kind == DL_EXCEPTION && bit(d->fault_vectors, vector))
        rflags |= d->rflags_rf;
    rsp = U64(env, d->off_regs + 4 * 8);

    /* The gate: 16 bytes at IDTR.base + vector * 16, inside the limit (APM 8.9.1, Figure 4-24). */
    idtr = seg_read(d, env, d->seg_idtr);
    if ((uint64_t)vector * 16 + 15 > idtr.limit ||
        !read_linear(d, env, idtr.base + (uint64_t)vector * 16, gate, 16))
        return 0;
    gtype = (uint32_t)(gate[0] >> 40) & 0xF;
    if (!((gate[0] >> 47) & 1) || (gtype != d->gate_int && gtype != d->gate_trap) ||
        (kind == DL_SOFTWARE && ((gate[0] >> 45) & 3) < cpl))
        return 0;                                   /* #NP, #GP: the reference */
    target = (gate[0] & 0xFFFF) | ((gate[0] >> 32) & 0xFFFF0000) | ((gate[1] & 0xFFFFFFFF) << 32);
    selector = (uint32_t)(gate[0] >> 16) & 0xFFFF;
    ist = (uint32_t)(gate[0] >> 32) & 7;
    if (!canonical(target))
        return 0;

    /* The target code segment's descriptor, from the GDT or LDT. */
    if ((selector & ~3u) == 0)
        return 0;
    table = seg_read(d, env, (selector & 4) ? d->seg_ldtr : d->seg_gdtr);
    if ((uint64_t)(selector & ~7u) + 7 > table.limit ||
        !read_linear(d, env, table.base + (selector & ~7u), &raw, 8))
        return 0;
    {
        uint32_t lo = (uint32_t)raw, hi = (uint32_t)(raw >> 32);
        cs.selector = selector;
        cs.base = (lo >> 16) | ((uint64_t)(hi & 0xFF) << 16) | (hi & 0xFF000000u);
        cs.limit = (lo & 0xFFFF) | (hi & 0xF0000);
        if (hi & d->desc_g)
            cs.limit = (cs.limit << 12) | 0xFFF;
        cs.flags = hi & (uint32_t)d->desc_flag_mask;
    }
    dpl = (cs.flags >> d->desc_dpl_shift) & 3;
    type = (cs.flags >> d->desc_type_shift) & 0xF;
    if (!(cs.flags & d->desc_s) || !(type & 8) || dpl > cpl || !(cs.flags & d->desc_p) ||
        !(cs.flags & d->desc_l) || (cs.flags & d->desc_b))
        return 0;
    new_cpl = (type & 4) ? cpl : dpl;                 /* conforming: the CPL stays */

    /* The stack: RSP0..2 or an IST entry from the TSS, else the current one; 16-byte aligned. */
    if (ist || new_cpl < cpl) {
        uint64_t off = ist ? 36 + 8 * (uint64_t)(ist - 1) : 4 + 8 * (uint64_t)new_cpl;
        tss = seg_read(d, env, d->seg_tr);
        if (off + 7 > tss.limit || !read_linear(d, env, tss.base + off, &sp, 8))
            return 0;
    } else {
        sp = rsp;
    }
    if (!canonical(sp))
        return 0;
    sp &= ~(uint64_t)0xF;
    old_cs = seg_read(d, env, d->seg_cs);
    old_ss = seg_read(d, env, d->seg_ss);
    n = 0;
    if (has_error)
        frame[n++] = error;
    frame[n++] = rip;
    frame[n++] = old_cs.selector;
    frame[n++] = rflags;
    frame[n++] = rsp;
    frame[n++] = old_ss.selector;
    sp -= 8 * (uint64_t)n;
    if (!translate_range(d, env, sp, 8 * n, 1, new_cpl == 3, stack_pa, stack_len))
        return 0;

    rflags &= ~(d->rflags_tf | d->rflags_nt | d->rflags_rf | d->rflags_vm);
    if (gtype == d->gate_int)
        rflags &= ~d->rflags_if;
    if (d->window && (rflags & d->rflags_if))
        return 0;

    /* Nothing can fail from here on. */
    if (set_cr2)
        U64(env, d->off_cr2) = cr2;
    for (int i = 0; i < MAX_CHUNKS; i++) {
        if (!stack_len[i])
            continue;
        if (d->mem_write(uc, stack_pa[i], (uint8_t *)frame + (i ? stack_len[0] : 0),
                         stack_len[i]) != 0)
            return 0;                               /* only the first piece can have landed */
        if (d->code_written)
            d->code_written(uc, d->ram + stack_pa[i], stack_len[i]);
    }
    cs.selector = (selector & ~3u) | new_cpl;
    seg_write(d, env, d->seg_cs, cs);
    if (new_cpl != cpl) {
        struct seg ss = {new_cpl, 0, 0, new_cpl << d->desc_dpl_shift};
        seg_write(d, env, d->seg_ss, ss);
        old_ss = ss;
    }
    hf &= ~(d->hf_cpl_mask | d->hf_cs32 | d->hf_ss32 | d->hf_cs64 | d->hf_addseg);
    hf |= ((old_ss.flags >> d->desc_dpl_shift) & 3) | d->hf_cs32 | d->hf_ss32 | d->hf_cs64;
    U32(env, d->off_hflags) = (uint32_t)hf;
    d->reg_write(uc, (int)d->rflags_regid, &rflags);
    U64(env, d->off_regs + 4 * 8) = sp;
    U64(env, d->off_eip) = target;
    d->delivered++;
    return 1;
}

int deliver_msr_known(const struct deliver *d, uint32_t index)
{
    uint64_t lo = 0, hi = d->n_msrs < DL_MAX_MSRS ? d->n_msrs : DL_MAX_MSRS;
    while (lo < hi) {
        uint64_t mid = (lo + hi) / 2;
        if (d->msrs[mid] == index)
            return 1;
        if (d->msrs[mid] < index)
            lo = mid + 1;
        else
            hi = mid;
    }
    return 0;
}
