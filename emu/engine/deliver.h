/* Event delivery through a 64-bit IDT gate in long mode, in C (deliver.c), in front of
 * emu/core/interrupts.py, which stays the reference and takes every case this does not.
 *
 * The layout below is reported by replay_abi() (replay.c) and mirrored by emu/engine/replay.py;
 * every number in it (the CPU state's offsets and flag bits, the paging reserved-bit masks, the
 * vectors delivered here, the implemented MSRs) comes from Python (emu/core/fast_deliver.py),
 * which takes them from emu/arch and emu/engine/hw_switch.py.
 */
#ifndef SVMEMU_DELIVER_H
#define SVMEMU_DELIVER_H

#include <stdint.h>

#define DL_MAX_MSRS 1024
#define DL_LEVELS 4

typedef int (*dl_reg_fn)(void *uc, int regid, void *value);
typedef int (*dl_mem_write_fn)(void *uc, uint64_t address, const void *bytes, uint64_t size);
typedef void (*dl_code_written_fn)(void *uc, uint64_t host, uint64_t size);

struct deliver {
    uint64_t enabled;           /* Python: deliver here while the fast exits are armed */
    uint64_t ram, ram_size;     /* host address and size of guest RAM from physical 0 */
    /* The CPU state's layout (hw_switch): general registers, RIP, hflags, the segment caches
     * (ES..GS, LDTR, TR, GDTR, IDTR) and their fields, CR0..CR4, EFER, the exit's error code. */
    uint64_t off_regs, off_eip, off_hflags, off_segs, seg_size;
    uint64_t seg_selector, seg_base, seg_limit, seg_flags;
    uint64_t off_cr, off_efer, off_error_code;
    /* Nested paging (an L2): hflags2 and its bit, nCR3 and the host paging mode VMRUN recorded
     * (only 4-level hosts are walked here: both mode bits of npt_long). */
    uint64_t off_hflags2, hf2_npt, off_nested_cr3, off_nested_pg_mode, npt_long, npt_nxe;
    uint64_t seg_cs, seg_ss, seg_ldtr, seg_tr, seg_gdtr, seg_idtr;
    /* hflags bits */
    uint64_t hf_cpl_mask, hf_lma, hf_cs32, hf_ss32, hf_cs64, hf_addseg;
    /* descriptor-cache flag bits, as QEMU keeps them (the descriptor's high dword) */
    uint64_t desc_s, desc_p, desc_l, desc_b, desc_dpl_shift, desc_type_shift, desc_flag_mask;
    uint64_t desc_g;
    /* architectural bits: CR0.PG, CR0.WP, CR4.SMAP, CR4.LA57, EFER.NXE; RFLAGS' */
    uint64_t cr0_pg, cr0_wp, cr4_smap, cr4_la57, efer_nxe;
    /* protection keys: CR4.PKE, CR4.PKS, where PKRU and PKRS lie (u32 each), a leaf entry's
     * key position */
    uint64_t cr4_pke, cr4_pks, off_pkru, off_pkrs, pte_pkey_shift;
    uint64_t rflags_if, rflags_tf, rflags_nt, rflags_rf, rflags_vm;
    uint64_t gate_int, gate_trap;   /* 64-bit interrupt and trap gate types */
    /* Paging entries: bits and per-level reserved masks [EFER.NXE][level - 1] for a table
     * pointer (rsvd) and for a page (rsvd_large, levels in large_levels only). */
    uint64_t pte_p, pte_rw, pte_us, pte_ps, pte_a, pte_d;
    uint64_t addr_mask;         /* physical-address bits of an entry (51:12 below MAXPHYADDR) */
    uint64_t large_levels;      /* bit n: PS=1 at level n maps a page */
    uint64_t rsvd[2][DL_LEVELS], rsvd_large[2][DL_LEVELS];
    /* Which exceptions: vectors delivered when their intercept exit arrives in L1 (bit per
     * vector), those that push an error code, the fault class (RF set in the pushed image). */
    uint64_t vectors, error_code_vectors, fault_vectors;
    uint64_t exit_excp0;        /* INTR hook number of the first exception exit */
    uint64_t exit_swint;        /* INTR hook number of the INT n exit (0: not answered here) */
    uint64_t gp;                /* #GP's vector */
    uint64_t rflags_regid;      /* Unicorn's register id of RFLAGS (its lazy flags folded) */
    dl_reg_fn reg_read, reg_write;
    dl_mem_write_fn mem_write;  /* uc_mem_write: invalidates translated code it overwrites */
    /* Several CPUs: the code group's log of the emulator's own stores (emu/engine/code_group.py),
     * so the other CPUs' engines drop code the frame overwrote; NULL with one CPU. */
    dl_code_written_fn code_written;
    uint64_t pf, pf_cr2, off_cr2;   /* #PF's vector; host address of its EXITINFO2 */
    /* The MSR indices the MSR file implements (sorted): an RDMSR or WRMSR of any other in L1
     * raises #GP(0), delivered here. n_msrs == 0: no table, Python decides. */
    uint64_t n_msrs;
    uint32_t msrs[DL_MAX_MSRS];
    /* Python: an interrupt waits for RFLAGS.IF (the interrupt window is armed). The reference
     * looks at interrupts right after each delivery; with IF clear in the handler it finds
     * nothing to do, so only such deliveries are made here meanwhile. */
    uint64_t window;
    uint64_t delivered, msr_gp, swint;      /* counts */
};

/* Deliver event `vector` (error code `error` if `has_error`) at return RIP `rip` through the
 * IDT of the CPU in `env` (64-bit mode, long mode), setting CR2 to `cr2` first if `set_cr2`.
 * `kind`: DL_EXCEPTION (RF set in the pushed image for the fault class), DL_SOFTWARE (INT n,
 * INT3: the gate's DPL is checked against the CPL) or DL_EXTERNAL. Returns 1 with the CPU
 * state and guest RAM changed as the reference would, 0 with nothing changed (the reference
 * then takes it). */
enum { DL_EXCEPTION = 0, DL_SOFTWARE, DL_EXTERNAL };
int deliver_exception(struct deliver *d, void *uc, uint64_t env, uint32_t vector, int kind,
                      int has_error, uint64_t error, uint64_t rip, int set_cr2, uint64_t cr2);

/* Whether the MSR file implements `index` (only when n_msrs != 0). */
int deliver_msr_known(const struct deliver *d, uint32_t index);

#endif
