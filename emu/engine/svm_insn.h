/* L1's VMLOAD, VMSAVE, STGI and CLGI answered in C (svm_insn.c), in front of svm_ext/instructions.py.
 *
 * The layout below is reported by replay_abi() (replay.c) and mirrored by emu/engine/replay.py;
 * every number in it (the VMCB's field offsets, the CPU state's, the fields' kinds) comes from
 * Python (svm_ext/fast_insn.py), which takes them from emu/arch/vmcb.py and
 * emu/engine/hw_switch.py: nothing of the VMCB layout is written down here.
 */
#ifndef SVMEMU_SVM_INSN_H
#define SVMEMU_SVM_INSN_H

#include <stdint.h>

#define SI_MAX_FIELDS 16

/* How one VMCB field and its place in the CPU state correspond. */
enum {
    SI_SEG = 1,     /* a segment: VMCB (selector, attrib, limit, base) <-> descriptor cache */
    SI_Q,           /* a u64 both ways */
    SI_Q_CANON,     /* a u64, made canonical (bit 47 copied up) when VMLOAD loads it */
    SI_U16_IN_U32,  /* VMLOAD keeps bits 15:0 in a u32 (as WRMSR does), VMSAVE zero-extends it */
};

struct si_field {
    uint32_t kind;
    uint32_t env_off;           /* offset in CPUX86State */
    uint64_t vmcb_off;          /* offset in the VMCB */
};

struct svm_insn {
    uint64_t enabled;           /* Python: an SVM extension handles these exits */
    uint64_t ram, ram_size;     /* host address and size of guest RAM below 4 GiB */
    uint64_t vmcb_size;         /* bytes of the VMCB that must lie inside RAM */
    uint64_t maxphyaddr;        /* rAX at or above 2^maxphyaddr: #GP, left to Python */
    uint64_t hf_cs64;           /* hflags: 64-bit code (rAX is used whole, else its low half) */
    uint64_t off_eip, off_rax, off_hflags;
    /* The descriptor cache's layout (hw_switch._SEG) and the VMCB segment's (vmcb._SEG_STRUCT). */
    uint64_t seg_selector, seg_base, seg_limit, seg_flags;
    uint64_t vseg_selector, vseg_attrib, vseg_limit, vseg_base;
    uint64_t insn_length;       /* 3: 0F 01 DA..DD */
    uint64_t exit_vmload, exit_vmsave, exit_stgi, exit_clgi;   /* their INTR hook numbers */
    /* GIF while armed: Python's at the arming, C's changes taken back at the next entry. STGI
     * is answered only while nothing waits that GIF=1 would let in (stgi_ok), and STGI/CLGI
     * only while no replay program stands for the Python state (the engine's state word is 0:
     * the programs' ids include GIF). */
    uint64_t gif, stgi_ok;
    uint64_t vmload, vmsave, stgi, clgi;    /* counts of exits answered here */
    uint64_t n_fields;
    struct si_field fields[SI_MAX_FIELDS];
};

/* intno's exit if it is one of the four and L1's answer is exactly the Python path's: returns 1
 * with the CPU state and guest RAM changed, else 0 with nothing changed. `env` is the live
 * CPUX86State, `state` the replay engine's state word. */
int svm_insn_exit(struct svm_insn *s, uint64_t env, uint32_t intno, uint64_t state);

#endif
