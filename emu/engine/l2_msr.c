/* L2's RDMSR or WRMSR of an MSR that L1 lets through and that L0's MSR file does not implement:
 * #GP(0) in L2, without Python (svm_ext/fast_l2_msr.py is the Python side and says why).
 *
 * The Python path is the reference: the router asks L1's intercepts (MSR_PROT and the MSRPM
 * bit of the vmcb12 VMRUN cached), Machine._exit_msr finds no owner and raises #GP(0), the
 * router finds #GP not intercepted and the delivery goes through L2's IDT (deliver.c, which
 * refuses anything that could fault or set an A/D bit). Each of those answers is here, read
 * from the table Python keeps per replay state; any other answer returns 0 and the exit goes
 * on to the replay programs and Python.
 */
#include <stdint.h>

#include "l2_msr.h"

#define U64(env, off) (*(const uint64_t *)((env) + (off)))
#define U32(env, off) (*(const uint32_t *)((env) + (off)))

/* vmcb.msrpm_intercepted: two bits per MSR (read, then write); outside every range, always. */
static int intercepted(const struct l2_msr *l, const uint8_t *map, uint32_t msr, int write)
{
    for (int i = 0; i < L2_MSRPM_RANGES; i++) {
        if (l->ranges[i][0] <= msr && msr <= l->ranges[i][1]) {
            uint32_t bit = (msr - l->ranges[i][0]) * 2 + (write ? 1 : 0);
            return (map[l->ranges[i][2] + (bit >> 3)] >> (bit & 7)) & 1;
        }
    }
    return 1;
}

int l2_msr_exit(struct l2_msr *l, struct deliver *d, void *uc, uint64_t env, uint32_t intno,
                uint64_t state)
{
    const struct l2_state *s;
    uint32_t index;
    int write;
    if (!l->enabled || intno != l->exit_msr || !d->enabled || !d->n_msrs || state == 0 ||
        state >= l->n_states || U64(env, l->off_vm_vmcb) != l->l2_vmcb)
        return 0;
    s = (const struct l2_state *)(uintptr_t)l->states + state;
    if (!s->in_l2 || s->gp_intercepted)
        return 0;
    index = (uint32_t)U64(env, l->off_rcx);
    write = U32(env, l->off_error_code) == 1;
    if (s->msr_prot) {
        if (s->msrpm > d->ram_size || d->ram_size - s->msrpm < l->msrpm_size)
            return 0;
        if (intercepted(l, (const uint8_t *)(uintptr_t)(d->ram + s->msrpm), index, write))
            return 0;
    }
    if (deliver_msr_known(d, index))
        return 0;
    if (!deliver_exception(d, uc, env, (uint32_t)d->gp, DL_EXCEPTION, 1, 0,
                           U64(env, l->off_eip), 0, 0))
        return 0;
    l->msr_gp++;
    return 1;
}
