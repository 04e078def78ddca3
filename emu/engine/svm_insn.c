/* L1's VMLOAD, VMSAVE, STGI and CLGI without Python (called from replay.c's fast exits, only
 * while they are armed and only for L1's own exits: the CPU runs under vmcb01 without nested
 * paging). svm_ext/instructions.py is the reference; each step below is one of its steps, and
 * anything it would do beyond them (#GP for a bad rAX, a VMCB outside RAM, an interrupt that
 * STGI lets in) makes this return 0 and leave the exit to it.
 *
 * What reaches here has passed Unicorn's own checks before the intercept: EFER.SVME, protected
 * mode and CPL 0 (translate.c raises #UD and #GP before the helper's intercept check).
 */
#include <stdint.h>
#include <string.h>

#include "svm_insn.h"

#define U64(p) (*(uint64_t *)(p))
#define U32(p) (*(uint32_t *)(p))
#define U16(p) (*(uint16_t *)(p))

/* paging.canonical: bits 63:48 copied from bit 47. */
static uint64_t canonical(uint64_t va)
{
    va &= (1ULL << 48) - 1;
    return (va >> 47) ? va | (0xFFFFULL << 48) : va;
}

/* vmcb_operand for L1: rAX (its low half outside 64-bit code), page-aligned, below
 * 2^maxphyaddr, the VMCB inside RAM. 0 where Python would raise #GP or stop. */
static uint8_t *operand(const struct svm_insn *s, uint64_t env)
{
    uint64_t pa = U64(env + s->off_rax);
    if (!(U32(env + s->off_hflags) & s->hf_cs64))
        pa &= 0xFFFFFFFFu;
    if ((pa & 0xFFF) || (s->maxphyaddr < 64 && (pa >> s->maxphyaddr)))
        return NULL;
    if (pa > s->ram_size || s->ram_size - pa < s->vmcb_size)
        return NULL;
    return (uint8_t *)(uintptr_t)(s->ram + pa);
}

/* VMLOAD: FS, GS, TR, LDTR with their hidden parts (hw_switch.Segment.from_vmcb: attrib bits
 * 7:0 are descriptor bits 15:8 of the high dword, bits 11:8 its bits 23:20; the selector's
 * padding written as zero, as Context.set_seg packs it), and the syscall MSRs as WRMSR stores
 * them. */
static void load(const struct svm_insn *s, uint64_t env, const uint8_t *vmcb)
{
    for (uint64_t i = 0; i < s->n_fields && i < SI_MAX_FIELDS; i++) {
        const struct si_field *f = &s->fields[i];
        const uint8_t *v = vmcb + f->vmcb_off;
        uint8_t *c = (uint8_t *)(uintptr_t)(env + f->env_off);
        switch (f->kind) {
        case SI_SEG: {
            uint32_t attrib = U16(v + s->vseg_attrib);
            U64(c + s->seg_selector) = U16(v + s->vseg_selector);  /* selector, zero padding */
            U64(c + s->seg_base) = canonical(U64(v + s->vseg_base));
            U32(c + s->seg_limit) = U32(v + s->vseg_limit);
            U32(c + s->seg_flags) = ((attrib & 0xFF) << 8) | ((attrib & 0xF00) << 12);
            break;
        }
        case SI_Q:
            U64(c) = U64(v);
            break;
        case SI_Q_CANON:
            U64(c) = canonical(U64(v));
            break;
        case SI_U16_IN_U32:
            U32(c) = U64(v) & 0xFFFF;
            break;
        }
    }
}

/* VMSAVE: the same fields back (hw_switch.Segment.vmcb_attrib; the MSRs as RDMSR reads them). */
static void save(const struct svm_insn *s, uint64_t env, uint8_t *vmcb)
{
    for (uint64_t i = 0; i < s->n_fields && i < SI_MAX_FIELDS; i++) {
        const struct si_field *f = &s->fields[i];
        uint8_t *v = vmcb + f->vmcb_off;
        const uint8_t *c = (const uint8_t *)(uintptr_t)(env + f->env_off);
        switch (f->kind) {
        case SI_SEG: {
            uint32_t flags = U32(c + s->seg_flags);
            U16(v + s->vseg_selector) = (uint16_t)U32(c + s->seg_selector);
            U16(v + s->vseg_attrib) = (uint16_t)(((flags >> 8) & 0xFF) | ((flags >> 12) & 0xF00));
            U32(v + s->vseg_limit) = U32(c + s->seg_limit);
            U64(v + s->vseg_base) = U64(c + s->seg_base);
            break;
        }
        case SI_Q:
        case SI_Q_CANON:
            U64(v) = U64(c);
            break;
        case SI_U16_IN_U32:
            U64(v) = U32(c);
            break;
        }
    }
}

int svm_insn_exit(struct svm_insn *s, uint64_t env, uint32_t intno, uint64_t state)
{
    if (!s->enabled)
        return 0;
    if (intno == s->exit_vmload || intno == s->exit_vmsave) {
        uint8_t *vmcb = operand(s, env);
        /* VMSAVE's selector is a u16 in the VMCB: a wider one (no segment load makes it) is
         * Python's to refuse. */
        if (vmcb == NULL)
            return 0;
        if (intno == s->exit_vmload) {
            load(s, env, vmcb);
            s->vmload++;
        } else {
            for (uint64_t i = 0; i < s->n_fields && i < SI_MAX_FIELDS; i++)
                if (s->fields[i].kind == SI_SEG &&
                    U32(env + s->fields[i].env_off + s->seg_selector) > 0xFFFF)
                    return 0;
            save(s, env, vmcb);
            s->vmsave++;
        }
    } else if (intno == s->exit_stgi || intno == s->exit_clgi) {
        if (state != 0)
            return 0;           /* a replay program stands for GIF: it or Python answers */
        if (intno == s->exit_stgi) {
            if (!s->stgi_ok)
                return 0;       /* something waits for GIF: Python looks for it */
            s->gif = 1;
            s->stgi++;
        } else {
            s->gif = 0;
            s->clgi++;
        }
    } else {
        return 0;
    }
    U64(env + s->off_eip) += s->insn_length;
    return 1;
}
