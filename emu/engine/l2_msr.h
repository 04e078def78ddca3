/* L2's RDMSR and WRMSR that L1 does not intercept and L0 answers with #GP(0), in C
 * (l2_msr.c), in front of the router (svm_ext/extension.py on_exit) and Machine._exit_msr.
 *
 * The layout below is reported by replay_abi() (replay.c) and mirrored by emu/engine/replay.py;
 * svm_ext/fast_l2_msr.py fills it and says why each step is exact.
 */
#ifndef SVMEMU_L2_MSR_H
#define SVMEMU_L2_MSR_H

#include <stdint.h>

#include "deliver.h"

#define L2_MSRPM_RANGES 3

/* What one replay state (the engine's state word, svm_ext/fast_switch.py) fixes of L1's
 * intercepts: the vmcb12 VMRUN cached, which the state's id stands for. */
struct l2_state {
    uint64_t in_l2;             /* the state is L2 running under a cached vmcb12 */
    uint64_t msr_prot;          /* vmcb12 intercepts MSR accesses through its MSRPM ... */
    uint64_t msrpm;             /* ... at this guest-physical address (4 KiB-aligned) */
    uint64_t gp_intercepted;    /* vmcb12 intercepts #GP */
};

struct l2_msr {
    uint64_t enabled;           /* Python: the SVM extension and the MSR file's table are there */
    uint64_t exit_msr;          /* the MSR exit's INTR hook number */
    uint64_t l2_vmcb;           /* the VMCB L2 runs under (vmcb02) */
    uint64_t off_vm_vmcb, off_rcx, off_error_code, off_eip;    /* CPUX86State offsets */
    uint64_t msrpm_size;        /* bytes of the map that must lie inside RAM */
    uint32_t ranges[L2_MSRPM_RANGES][3];    /* vmcb.MSRPM_RANGES: first, last, byte offset */
    uint64_t n_states;          /* entries of `states`, indexed by state id */
    uint64_t states;            /* host address of struct l2_state[n_states] */
    uint64_t msr_gp;            /* count of #GPs delivered here */
};

/* The exit `intno` if it is L2's MSR access that L0 answers with #GP(0), delivered through
 * L2's IDT: returns 1 with the CPU state and guest RAM changed, else 0 with nothing changed.
 * `state` is the replay engine's state word, `d` the delivery's layout and MSR table. */
int l2_msr_exit(struct l2_msr *l, struct deliver *d, void *uc, uint64_t env, uint32_t intno,
                uint64_t state);

#endif
