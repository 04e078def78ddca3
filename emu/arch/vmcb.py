"""The VMCB as the AMD APM (vol. 2, appendix B and C) lays it out, under the APM's names.

Pure architecture: the field table, the exit codes, the intercept bits, the EVENTINJ, TLB_CONTROL,
clean-bit and IOIO encodings and the permission-map geometry. L0's own VMCB (vmcb01, which
emu/engine/hostvm.py hands to Unicorn) and nested SVM's vmcb12/vmcb02 (svm_ext) both read their
numbers from here, so the two cannot disagree on where a field lives.

Every offset lives in one table, ``FIELDS``. Two things are generated from it:

* ``Vmcb``: a live view over a buffer (guest RAM, an mmap, a bytearray), one property per field,
  for code that touches a handful of fields (instructions, traces, the debugger, tests).
* ``Vmcb12Cache``: an immutable snapshot of the control area and the save area taken with a
  single ``Struct.unpack_from`` (KVM keeps the same kind of cached copy of vmcb12). VMRUN reads
  vmcb12 once into it and never looks at guest memory again, so a guest that rewrites its VMCB
  while we are deciding cannot make the checks and the loaded state disagree.

Offsets are absolute within the 4 KiB VMCB: the control area starts at 0x000, the state save
area at 0x400 (``SAVE_AREA``). The APM's own offsets inside the save area are the absolute ones
minus 0x400.
"""

from __future__ import annotations

import struct
from collections import namedtuple
from typing import Any, NamedTuple

__all__ = [
    "VMCB_SIZE", "SAVE_AREA", "FIELDS", "OFFSETS", "SEGMENT_PART_OFFSETS", "BITFIELDS", "SEGMENT_NAMES",
    "Segment", "Vmcb", "VmcbSave", "Vmcb12Cache", "read_cache",
    "msrpm_bit_offset", "msrpm_intercepted", "iopm_intercepted", "intercept_misc_bit",
    "eventinj_encode", "eventinj_decode", "ioio_exitinfo1", "exit_name",
]

VMCB_SIZE = 0x1000
SAVE_AREA = 0x400

# ---------------------------------------------------------------------------------------------
# The table. (name, absolute offset, kind). kind is a struct code, "seg" for a segment register
# (selector u16, attrib u16, limit u32, base u64), or "15s" for the guest instruction bytes.
# Names: control fields as the APM names them, lower-cased; save fields likewise.
# Entries must not overlap: single bits inside a word go in BITFIELDS below, not here.
# ---------------------------------------------------------------------------------------------
FIELDS: tuple[tuple[str, int, str], ...] = (
    # --- control area ---
    ("intercept_cr_read", 0x000, "H"),       # bit n: reads of CRn
    ("intercept_cr_write", 0x002, "H"),      # bit n: writes of CRn
    ("intercept_dr_read", 0x004, "H"),
    ("intercept_dr_write", 0x006, "H"),
    ("intercept_exceptions", 0x008, "I"),    # bit n: exception vector n
    ("intercept_misc1", 0x00C, "I"),         # INTERCEPT_INTR .. INTERCEPT_SHUTDOWN
    ("intercept_misc2", 0x010, "I"),         # INTERCEPT_VMRUN .. + CR write traps in 31:16
    ("intercept_misc3", 0x014, "I"),         # INTERCEPT_INVLPGB ..
    ("pause_filter_threshold", 0x03C, "H"),
    ("pause_filter_count", 0x03E, "H"),
    ("iopm_base_pa", 0x040, "Q"),
    ("msrpm_base_pa", 0x048, "Q"),
    ("tsc_offset", 0x050, "Q"),
    ("guest_asid", 0x058, "I"),
    ("tlb_control", 0x05C, "B"),
    ("vintr", 0x060, "Q"),                   # V_TPR, V_IRQ, V_GIF, ... V_INTR_VECTOR (BITFIELDS)
    ("int_state", 0x068, "Q"),               # INTERRUPT_SHADOW, GUEST_INTERRUPT_MASK
    ("exitcode", 0x070, "Q"),
    ("exitinfo1", 0x078, "Q"),
    ("exitinfo2", 0x080, "Q"),
    ("exitintinfo", 0x088, "Q"),
    ("nested_ctl", 0x090, "Q"),              # NP_ENABLE, SEV, SEV-ES, GMET, ... (BITFIELDS)
    ("avic_apic_bar", 0x098, "Q"),
    ("ghcb_pa", 0x0A0, "Q"),
    ("eventinj", 0x0A8, "Q"),
    ("n_cr3", 0x0B0, "Q"),
    ("virt_ext", 0x0B8, "Q"),                # LBR virtualization, VMLOAD/VMSAVE virtualization
    ("vmcb_clean", 0x0C0, "I"),
    ("nrip", 0x0C8, "Q"),
    ("insn_len", 0x0D0, "B"),                # number of guest instruction bytes fetched
    ("insn_bytes", 0x0D1, "15s"),
    ("avic_backing_page", 0x0E0, "Q"),
    ("avic_logical_table", 0x0F0, "Q"),
    ("avic_physical_table", 0x0F8, "Q"),     # bits 7:0 AVIC_PHYSICAL_MAX_INDEX
    ("vmsa_pa", 0x108, "Q"),
    # --- state save area ---
    ("es", 0x400, "seg"),
    ("cs", 0x410, "seg"),
    ("ss", 0x420, "seg"),
    ("ds", 0x430, "seg"),
    ("fs", 0x440, "seg"),
    ("gs", 0x450, "seg"),
    ("gdtr", 0x460, "seg"),
    ("ldtr", 0x470, "seg"),
    ("idtr", 0x480, "seg"),
    ("tr", 0x490, "seg"),
    ("vmpl", 0x4CA, "B"),
    ("cpl", 0x4CB, "B"),
    ("efer", 0x4D0, "Q"),
    ("cr4", 0x548, "Q"),
    ("cr3", 0x550, "Q"),
    ("cr0", 0x558, "Q"),
    ("dr7", 0x560, "Q"),
    ("dr6", 0x568, "Q"),
    ("rflags", 0x570, "Q"),
    ("rip", 0x578, "Q"),
    ("rsp", 0x5D8, "Q"),
    ("s_cet", 0x5E0, "Q"),
    ("ssp", 0x5E8, "Q"),
    ("isst_addr", 0x5F0, "Q"),
    ("rax", 0x5F8, "Q"),
    ("star", 0x600, "Q"),
    ("lstar", 0x608, "Q"),
    ("cstar", 0x610, "Q"),
    ("sfmask", 0x618, "Q"),
    ("kernel_gs_base", 0x620, "Q"),
    ("sysenter_cs", 0x628, "Q"),
    ("sysenter_esp", 0x630, "Q"),
    ("sysenter_eip", 0x638, "Q"),
    ("cr2", 0x640, "Q"),
    ("g_pat", 0x668, "Q"),
    ("dbgctl", 0x670, "Q"),
    ("br_from", 0x678, "Q"),
    ("br_to", 0x680, "Q"),
    ("lastexcpfrom", 0x688, "Q"),
    ("lastexcpto", 0x690, "Q"),
    ("spec_ctrl", 0x6E0, "Q"),
)
# Field name -> offset, for code that packs several fields at once.
OFFSETS: dict[str, int] = {name: off for name, off, _ in FIELDS}

# (name, word field, lowest bit, width). Derived read-only on the cache, read-modify-write on Vmcb.
BITFIELDS: tuple[tuple[str, str, int, int], ...] = (
    ("v_tpr", "vintr", 0, 8),
    ("v_irq", "vintr", 8, 1),
    ("v_gif", "vintr", 9, 1),
    ("v_nmi", "vintr", 11, 1),
    ("v_nmi_mask", "vintr", 12, 1),
    ("v_intr_prio", "vintr", 16, 4),
    ("v_ign_tpr", "vintr", 20, 1),
    ("v_intr_masking", "vintr", 24, 1),
    ("v_gif_enable", "vintr", 25, 1),
    ("v_nmi_enable", "vintr", 26, 1),
    ("x2avic_enable", "vintr", 30, 1),
    ("avic_enable", "vintr", 31, 1),
    ("v_intr_vector", "vintr", 32, 8),
    ("interrupt_shadow", "int_state", 0, 1),
    ("guest_interrupt_mask", "int_state", 1, 1),
    ("np_enable", "nested_ctl", 0, 1),
    ("sev_enable", "nested_ctl", 1, 1),
    ("sev_es_enable", "nested_ctl", 2, 1),
    ("gmet_enable", "nested_ctl", 3, 1),
    ("sss_check_enable", "nested_ctl", 4, 1),
    ("vte_enable", "nested_ctl", 5, 1),
    ("ro_gpt_enable", "nested_ctl", 6, 1),
    ("invlpgb_enable", "nested_ctl", 7, 1),
    ("lbr_virtualization_enable", "virt_ext", 0, 1),
    ("vmload_vmsave_virtualization_enable", "virt_ext", 1, 1),
)


def bitfield_mask(name: str) -> int:
    """The mask of BITFIELDS entry `name` within its control word, for code that composes the
    word whole (vmcb02's nested_ctl) rather than through a Vmcb property."""
    for field, _word, shift, width in BITFIELDS:
        if field == name:
            return ((1 << width) - 1) << shift
    raise KeyError(name)


SEGMENT_NAMES = ("es", "cs", "ss", "ds", "fs", "gs", "gdtr", "ldtr", "idtr", "tr")


class Segment(NamedTuple):
    """A segment register as the VMCB stores it; attrib packs descriptor bits 47:40 and 55:52."""

    selector: int
    attrib: int
    limit: int
    base: int


# Segment attrib bits (the VMCB's compressed form of the descriptor's access bytes).
SEG_ATTR_TYPE_MASK = 0x00F
SEG_ATTR_S = 1 << 4
SEG_ATTR_DPL_SHIFT = 5
SEG_ATTR_DPL_MASK = 3 << 5
SEG_ATTR_P = 1 << 7
SEG_ATTR_AVL = 1 << 8
SEG_ATTR_L = 1 << 9
SEG_ATTR_DB = 1 << 10
SEG_ATTR_G = 1 << 11

# ---------------------------------------------------------------------------------------------
# Intercept bits. Masks within their own 32-bit word (misc1 at 0x0C, misc2 at 0x10, misc3 at 0x14).
# ---------------------------------------------------------------------------------------------
INTERCEPT_INTR = 1 << 0
INTERCEPT_NMI = 1 << 1
INTERCEPT_SMI = 1 << 2
INTERCEPT_INIT = 1 << 3
INTERCEPT_VINTR = 1 << 4
INTERCEPT_CR0_SEL_WRITE = 1 << 5     # CR0 writes that change bits other than TS or MP
INTERCEPT_IDTR_READ = 1 << 6
INTERCEPT_GDTR_READ = 1 << 7
INTERCEPT_LDTR_READ = 1 << 8
INTERCEPT_TR_READ = 1 << 9
INTERCEPT_IDTR_WRITE = 1 << 10
INTERCEPT_GDTR_WRITE = 1 << 11
INTERCEPT_LDTR_WRITE = 1 << 12
INTERCEPT_TR_WRITE = 1 << 13
INTERCEPT_RDTSC = 1 << 14
INTERCEPT_RDPMC = 1 << 15
INTERCEPT_PUSHF = 1 << 16
INTERCEPT_POPF = 1 << 17
INTERCEPT_CPUID = 1 << 18
INTERCEPT_RSM = 1 << 19
INTERCEPT_IRET = 1 << 20
INTERCEPT_INTN = 1 << 21
INTERCEPT_INVD = 1 << 22
INTERCEPT_PAUSE = 1 << 23
INTERCEPT_HLT = 1 << 24
INTERCEPT_INVLPG = 1 << 25
INTERCEPT_INVLPGA = 1 << 26
INTERCEPT_IOIO_PROT = 1 << 27
INTERCEPT_MSR_PROT = 1 << 28
INTERCEPT_TASK_SWITCH = 1 << 29
INTERCEPT_FERR_FREEZE = 1 << 30
INTERCEPT_SHUTDOWN = 1 << 31

INTERCEPT_VMRUN = 1 << 0
INTERCEPT_VMMCALL = 1 << 1
INTERCEPT_VMLOAD = 1 << 2
INTERCEPT_VMSAVE = 1 << 3
INTERCEPT_STGI = 1 << 4
INTERCEPT_CLGI = 1 << 5
INTERCEPT_SKINIT = 1 << 6
INTERCEPT_RDTSCP = 1 << 7
INTERCEPT_ICEBP = 1 << 8
INTERCEPT_WBINVD = 1 << 9
INTERCEPT_MONITOR = 1 << 10
INTERCEPT_MWAIT = 1 << 11
INTERCEPT_MWAIT_CONDITIONAL = 1 << 12
INTERCEPT_XSETBV = 1 << 13
INTERCEPT_RDPRU = 1 << 14
INTERCEPT_EFER_WRITE_TRAP = 1 << 15
INTERCEPT_CR_WRITE_TRAP_SHIFT = 16   # bit 16+n: trap after a write of CRn

# Intercept vectors 3 and 4 (0x00C, 0x010) list their bits in exit-code order: bit n of the
# 64-bit word at 0x00C intercepts exit code VMEXIT_INTR + n (0x060 .. 0x09F).
INTERCEPT_MISC_FIRST_EXIT = 0x060


def intercept_misc_bit(exit_code: int) -> int:
    """The bit of the 64-bit intercept word at 0x00C that makes exit_code (0x060..0x09F) exit."""
    if not INTERCEPT_MISC_FIRST_EXIT <= exit_code < INTERCEPT_MISC_FIRST_EXIT + 64:
        raise ValueError(f"exit code {exit_code:#x} has no bit in intercept vectors 3-4")
    return 1 << (exit_code - INTERCEPT_MISC_FIRST_EXIT)


INTERCEPT_INVLPGB = 1 << 0
INTERCEPT_INVLPGB_ILLEGAL = 1 << 1
INTERCEPT_INVPCID = 1 << 2
INTERCEPT_MCOMMIT = 1 << 3
INTERCEPT_TLBSYNC = 1 << 4
INTERCEPT_BUS_LOCK = 1 << 5
INTERCEPT_IDLE_HLT = 1 << 6

# ---------------------------------------------------------------------------------------------
# Exit codes (APM vol. 2, appendix C).
# ---------------------------------------------------------------------------------------------
VMEXIT_CR0_READ = 0x000              # .. VMEXIT_CR15_READ 0x00F
VMEXIT_CR0_WRITE = 0x010             # .. 0x01F
VMEXIT_DR0_READ = 0x020              # .. 0x02F
VMEXIT_DR0_WRITE = 0x030             # .. 0x03F
VMEXIT_DR7_WRITE = VMEXIT_DR0_WRITE + 7
VMEXIT_EXCP0 = 0x040                 # .. VMEXIT_EXCP31 0x05F
VMEXIT_INTR = 0x060
VMEXIT_NMI = 0x061
VMEXIT_SMI = 0x062
VMEXIT_INIT = 0x063
VMEXIT_VINTR = 0x064
VMEXIT_CR0_SEL_WRITE = 0x065
VMEXIT_IDTR_READ = 0x066
VMEXIT_GDTR_READ = 0x067
VMEXIT_LDTR_READ = 0x068
VMEXIT_TR_READ = 0x069
VMEXIT_IDTR_WRITE = 0x06A
VMEXIT_GDTR_WRITE = 0x06B
VMEXIT_LDTR_WRITE = 0x06C
VMEXIT_TR_WRITE = 0x06D
VMEXIT_RDTSC = 0x06E
VMEXIT_RDPMC = 0x06F
VMEXIT_PUSHF = 0x070
VMEXIT_POPF = 0x071
VMEXIT_CPUID = 0x072
VMEXIT_RSM = 0x073
VMEXIT_IRET = 0x074
VMEXIT_SWINT = 0x075
VMEXIT_INVD = 0x076
VMEXIT_PAUSE = 0x077
VMEXIT_HLT = 0x078
VMEXIT_INVLPG = 0x079
VMEXIT_INVLPGA = 0x07A
VMEXIT_IOIO = 0x07B
VMEXIT_MSR = 0x07C
VMEXIT_TASK_SWITCH = 0x07D
VMEXIT_FERR_FREEZE = 0x07E
VMEXIT_SHUTDOWN = 0x07F
VMEXIT_VMRUN = 0x080
VMEXIT_VMMCALL = 0x081
VMEXIT_VMLOAD = 0x082
VMEXIT_VMSAVE = 0x083
VMEXIT_STGI = 0x084
VMEXIT_CLGI = 0x085
VMEXIT_SKINIT = 0x086
VMEXIT_RDTSCP = 0x087
VMEXIT_ICEBP = 0x088
VMEXIT_WBINVD = 0x089
VMEXIT_MONITOR = 0x08A
VMEXIT_MWAIT = 0x08B
VMEXIT_MWAIT_CONDITIONAL = 0x08C
VMEXIT_XSETBV = 0x08D
VMEXIT_RDPRU = 0x08E
VMEXIT_EFER_WRITE_TRAP = 0x08F
VMEXIT_CR0_WRITE_TRAP = 0x090        # .. VMEXIT_CR15_WRITE_TRAP 0x09F
VMEXIT_INVLPGB = 0x0A0
VMEXIT_INVLPGB_ILLEGAL = 0x0A1
VMEXIT_INVPCID = 0x0A2
VMEXIT_MCOMMIT = 0x0A3
VMEXIT_TLBSYNC = 0x0A4
VMEXIT_BUSLOCK = 0x0A5
VMEXIT_IDLE_HLT = 0x0A6
VMEXIT_NPF = 0x400
VMEXIT_AVIC_INCOMPLETE_IPI = 0x401
VMEXIT_AVIC_NOACCEL = 0x402
VMEXIT_VMGEXIT = 0x403
VMEXIT_INVALID = 0xFFFF_FFFF_FFFF_FFFF   # -1 as the u64 EXITCODE field holds it
VMEXIT_BUSY = 0xFFFF_FFFF_FFFF_FFFE      # -2


def _build_exit_names() -> dict[int, str]:
    names: dict[int, str] = {}
    for n in range(16):
        names[VMEXIT_CR0_READ + n] = f"CR{n}_READ"
        names[VMEXIT_CR0_WRITE + n] = f"CR{n}_WRITE"
        names[VMEXIT_DR0_READ + n] = f"DR{n}_READ"
        names[VMEXIT_DR0_WRITE + n] = f"DR{n}_WRITE"
        names[VMEXIT_CR0_WRITE_TRAP + n] = f"CR{n}_WRITE_TRAP"
    for n in range(32):
        names[VMEXIT_EXCP0 + n] = f"EXCP{n}"
    for key, value in globals().items():
        if key.startswith("VMEXIT_") and isinstance(value, int) and value not in names:
            names[value] = key[len("VMEXIT_"):]
    return names


EXIT_NAMES: dict[int, str] = _build_exit_names()


def exit_name(code: int) -> str:
    """Traces print exit codes the way the APM spells them; unknown codes stay readable as hex."""
    code &= 0xFFFF_FFFF_FFFF_FFFF
    return EXIT_NAMES.get(code, f"{code:#x}")


# ---------------------------------------------------------------------------------------------
# EVENTINJ / EXITINTINFO (same encoding).
# ---------------------------------------------------------------------------------------------
EVENTINJ_VECTOR_MASK = 0xFF
EVENTINJ_TYPE_SHIFT = 8
EVENTINJ_TYPE_MASK = 7 << 8
EVENTINJ_TYPE_INTR = 0
EVENTINJ_TYPE_NMI = 2
EVENTINJ_TYPE_EXCEPTION = 3
EVENTINJ_TYPE_SOFT_INT = 4
EVENTINJ_EV = 1 << 11                # an error code is pushed
EVENTINJ_V = 1 << 31                 # valid
EVENTINJ_ERRORCODE_SHIFT = 32


def eventinj_encode(vector: int, type_: int, error_code: int | None = None) -> int:
    """One place that knows the layout, so EVENTINJ and EXITINTINFO writers cannot drift apart."""
    value = (vector & 0xFF) | ((type_ & 7) << EVENTINJ_TYPE_SHIFT) | EVENTINJ_V
    if error_code is not None:
        value |= EVENTINJ_EV | ((error_code & 0xFFFF_FFFF) << EVENTINJ_ERRORCODE_SHIFT)
    return value


def eventinj_decode(value: int) -> tuple[bool, int, int, int | None]:
    """(valid, vector, type, error code or None when EV is clear)."""
    err = (value >> EVENTINJ_ERRORCODE_SHIFT) & 0xFFFF_FFFF if value & EVENTINJ_EV else None
    return bool(value & EVENTINJ_V), value & 0xFF, (value >> EVENTINJ_TYPE_SHIFT) & 7, err


# TLB_CONTROL (byte at 0x5C). Other encodings are reserved.
TLB_CONTROL_DO_NOTHING = 0x00
TLB_CONTROL_FLUSH_ALL = 0x01
TLB_CONTROL_FLUSH_GUEST = 0x03
TLB_CONTROL_FLUSH_GUEST_NONGLOBAL = 0x07

# VMCB clean bits (0xC0): a set bit tells the CPU it may keep its cached copy of that group.
CLEAN_INTERCEPTS = 1 << 0    # intercept vectors, TSC_OFFSET, pause filter
CLEAN_IOPM = 1 << 1          # IOPM_BASE_PA, MSRPM_BASE_PA
CLEAN_ASID = 1 << 2
CLEAN_TPR = 1 << 3           # V_TPR, V_IRQ, V_INTR_PRIO, V_IGN_TPR, V_INTR_MASKING, V_INTR_VECTOR
CLEAN_NP = 1 << 4            # NP_ENABLE, N_CR3, G_PAT
CLEAN_CRX = 1 << 5           # CR0, CR3, CR4, EFER
CLEAN_DRX = 1 << 6           # DR6, DR7
CLEAN_DT = 1 << 7            # GDTR, IDTR
CLEAN_SEG = 1 << 8           # CS, DS, SS, ES, CPL
CLEAN_CR2 = 1 << 9
CLEAN_LBR = 1 << 10          # DBGCTL, BR_FROM, BR_TO, LASTEXCPFROM, LASTEXCPTO
CLEAN_AVIC = 1 << 11
CLEAN_CET = 1 << 12          # S_CET, SSP, ISST_ADDR

# ---------------------------------------------------------------------------------------------
# IOIO intercept: EXITINFO1 encoding.
# ---------------------------------------------------------------------------------------------
IOIO_TYPE_IN = 1 << 0        # clear: OUT
IOIO_STR = 1 << 2
IOIO_REP = 1 << 3
IOIO_SZ8 = 1 << 4
IOIO_SZ16 = 1 << 5
IOIO_SZ32 = 1 << 6
IOIO_A16 = 1 << 7
IOIO_A32 = 1 << 8
IOIO_A64 = 1 << 9
IOIO_SEG_SHIFT = 10          # 12:10 effective segment of a string OUTS (0 ES .. 5 GS)
IOIO_SEG_MASK = 7 << 10
IOIO_PORT_SHIFT = 16         # 31:16 port

_IOIO_SZ = {1: IOIO_SZ8, 2: IOIO_SZ16, 4: IOIO_SZ32}
_IOIO_A = {16: IOIO_A16, 32: IOIO_A32, 64: IOIO_A64}


def ioio_exitinfo1(port: int, size: int, is_in: bool, addr_size: int = 64, string: bool = False,
                   rep: bool = False, seg: int = 0) -> int:
    """EXITINFO1 for an intercepted IN/OUT/INS/OUTS; size in bytes (1, 2, 4), addr_size in bits."""
    value = ((port & 0xFFFF) << IOIO_PORT_SHIFT) | _IOIO_SZ[size] | _IOIO_A[addr_size]
    if is_in:
        value |= IOIO_TYPE_IN
    if string:
        value |= IOIO_STR
    if rep:
        value |= IOIO_REP
    return value | ((seg & 7) << IOIO_SEG_SHIFT)


# ---------------------------------------------------------------------------------------------
# MSR and IO permission maps.
# ---------------------------------------------------------------------------------------------
MSRPM_SIZE = 0x2000          # 8 KiB
IOPM_SIZE = 0x3000           # 12 KiB: 64 Ki port bits plus room for accesses that run past 0xFFFF
# The IOPM bytes a port access can read: 64 Ki port bits and the byte a multi-byte access at
# port 0xFFFF runs into ("2 contiguous 4KB pages + 1 byte"); VMRUN's range check covers these.
IOPM_EXTENT = 0x2001
# (first MSR, last MSR, byte offset of its vector in the map). Two bits per MSR: read, then write.
MSRPM_RANGES: tuple[tuple[int, int, int], ...] = (
    (0x0000_0000, 0x0000_1FFF, 0x0000),
    (0xC000_0000, 0xC000_1FFF, 0x0800),
    (0xC001_0000, 0xC001_1FFF, 0x1000),
)


def msrpm_bit_offset(msr: int) -> tuple[int, int] | None:
    """(byte, bit) of the MSR's read-intercept bit; the write bit is the next one (bit + 1, same
    byte, since each MSR's pair starts at an even bit). None: the MSR lies outside every range the
    map covers, and accesses to it are always intercepted."""
    for first, last, base in MSRPM_RANGES:
        if first <= msr <= last:
            bitno = (msr - first) * 2
            return base + (bitno >> 3), bitno & 7
    return None


def msrpm_intercepted(msrpm: Any, msr: int, write: bool) -> bool:
    """Whether an RDMSR (write=False) or WRMSR of msr exits, given the 8 KiB map's bytes."""
    where = msrpm_bit_offset(msr)
    if where is None:
        return True
    byte, bit = where
    return bool((msrpm[byte] >> (bit + int(write))) & 1)


def iopm_intercepted(iopm_bytes: Any, port: int, size: int) -> bool:
    """Whether an access of size bytes at port exits: the CPU checks the bit of every byte the
    access touches. An access that starts near 0xFFFF does not wrap to port 0: its upper bytes are
    looked up at bit 0x10000 and beyond, which is why the map is 12 KiB and not 8."""
    first = port & 0xFFFF
    last = first + size - 1
    for byte in range(first >> 3, (last >> 3) + 1):
        bits = iopm_bytes[byte]
        if not bits:
            continue
        lo = first - byte * 8 if byte * 8 < first else 0
        hi = last - byte * 8 if last < byte * 8 + 8 else 7
        if bits & (((1 << (hi - lo + 1)) - 1) << lo):
            return True
    return False


# ---------------------------------------------------------------------------------------------
# Generated accessors.
# ---------------------------------------------------------------------------------------------
_SEG_STRUCT = struct.Struct("<HHIQ")
# Where each part of a "seg" field lies inside it, by Segment's names (for code outside Python).
SEGMENT_PART_OFFSETS: dict[str, int] = {
    name: struct.calcsize("<" + _SEG_STRUCT.format[1:1 + i]) for i, name in enumerate(Segment._fields)}
_SCALAR_STRUCTS: dict[str, struct.Struct] = {
    k: struct.Struct("<" + k) for k in ("B", "H", "I", "Q", "15s")
}
_FIELD_INDEX: dict[str, tuple[int, str]] = {name: (off, kind) for name, off, kind in FIELDS}


def _kind_size(kind: str) -> int:
    return _SEG_STRUCT.size if kind == "seg" else _SCALAR_STRUCTS[kind].size


def _check_table() -> None:
    """Overlapping or out-of-page entries would silently corrupt neighbours; refuse at import."""
    end = 0
    prev = ""
    for name, off, kind in sorted(FIELDS, key=lambda f: f[1]):
        if off < end:
            raise AssertionError(f"VMCB field {name} at {off:#x} overlaps {prev}")
        end = off + _kind_size(kind)
        prev = name
    if end > VMCB_SIZE:
        raise AssertionError("VMCB table runs past 4 KiB")
    names = [f[0] for f in FIELDS] + [b[0] for b in BITFIELDS]
    if len(set(names)) != len(names):
        raise AssertionError("duplicate VMCB field name")
    for _, word, _, _ in BITFIELDS:
        if word not in _FIELD_INDEX:
            raise AssertionError(f"bitfield on unknown word {word}")


_check_table()


class _Access:
    """Reads and writes through the buffer protocol when it can (no copy), else through slices,
    so a Vmcb can sit on guest RAM, a bytearray, or an object that only offers __getitem__."""

    __slots__ = ("_buf", "_base", "_direct")

    def __init__(self, buf: Any, base: int = 0) -> None:
        self._buf = buf
        self._base = base
        try:
            memoryview(buf)
            self._direct = True
        except TypeError:
            self._direct = False

    @property
    def location(self) -> tuple[Any, int]:
        """(buffer, offset of the VMCB in it), for code that packs several fields in one call."""
        return self._buf, self._base

    def _get(self, st: struct.Struct, off: int) -> tuple[Any, ...]:
        off += self._base
        if self._direct:
            return st.unpack_from(self._buf, off)
        return st.unpack(bytes(self._buf[off:off + st.size]))

    def _put(self, st: struct.Struct, off: int, *values: Any) -> None:
        off += self._base
        if self._direct:
            st.pack_into(self._buf, off, *values)
        else:
            self._buf[off:off + st.size] = st.pack(*values)


def _scalar_property(off: int, st: struct.Struct, doc: str) -> property:
    def get(self: _Access) -> Any:
        return self._get(st, off)[0]

    def put(self: _Access, value: Any) -> None:
        self._put(st, off, value)

    return property(get, put, doc=doc)


def _segment_property(off: int, doc: str) -> property:
    def get(self: _Access) -> Segment:
        return Segment._make(self._get(_SEG_STRUCT, off))

    def put(self: _Access, value: tuple[int, int, int, int]) -> None:
        self._put(_SEG_STRUCT, off, *value)

    return property(get, put, doc=doc)


def _bit_property(word: str, shift: int, width: int, doc: str) -> property:
    off, kind = _FIELD_INDEX[word]
    st = _SCALAR_STRUCTS[kind]
    mask = ((1 << width) - 1) << shift

    def get(self: _Access) -> int:
        return (self._get(st, off)[0] & mask) >> shift

    def put(self: _Access, value: int) -> None:
        old = self._get(st, off)[0]
        self._put(st, off, (old & ~mask) | ((int(value) << shift) & mask))

    return property(get, put, doc=doc)


class VmcbSave(_Access):
    """The state save area (0x400..) of a Vmcb; reached as ``vmcb.save``."""

    __slots__ = ()


class Vmcb(_Access):
    """A live view of one VMCB. Control fields are attributes (``vmcb.exitcode``), save-area fields
    live under ``vmcb.save`` (``vmcb.save.rip``, ``vmcb.save.cs`` -> Segment). Nothing is cached:
    every read goes to the buffer, so this is for occasional access, not the VMRUN path (use
    ``read_cache`` there)."""

    __slots__ = ("save",)

    def __init__(self, buf: Any, base: int = 0) -> None:
        super().__init__(buf, base)
        self.save = VmcbSave(buf, base)

    def clear(self) -> None:
        """Zero the whole 4 KiB, which is what a freshly allocated VMCB must look like."""
        zero = bytes(VMCB_SIZE)
        if self._direct:
            memoryview(self._buf).cast("B")[self._base:self._base + VMCB_SIZE] = zero
        else:
            self._buf[self._base:self._base + VMCB_SIZE] = zero


def _install_properties() -> None:
    for name, off, kind in FIELDS:
        cls = VmcbSave if off >= SAVE_AREA else Vmcb
        doc = f"VMCB offset {off:#05x}"
        if off >= SAVE_AREA:
            doc += f" (save area +{off - SAVE_AREA:#05x})"
        if kind == "seg":
            setattr(cls, name, _segment_property(off, doc))
        else:
            setattr(cls, name, _scalar_property(off, _SCALAR_STRUCTS[kind], doc))
    for name, word, shift, width in BITFIELDS:
        off, _ = _FIELD_INDEX[word]
        cls = VmcbSave if off >= SAVE_AREA else Vmcb
        setattr(cls, name, _bit_property(word, shift, width, f"{word} bits {shift + width - 1}:{shift}"))


_install_properties()

# ---------------------------------------------------------------------------------------------
# The cached snapshot: one Struct over control area + save area, pads for the reserved gaps.
# ---------------------------------------------------------------------------------------------


def _build_cache_layout() -> tuple[str, list[str]]:
    fmt = ["<"]
    names: list[str] = []
    pos = 0
    for name, off, kind in sorted(FIELDS, key=lambda f: f[1]):
        if off > pos:
            fmt.append(f"{off - pos}x")
        if kind == "seg":
            fmt.append("HHIQ")
            names += [f"{name}_selector", f"{name}_attrib", f"{name}_limit", f"{name}_base"]
        else:
            fmt.append(kind)
            names.append(name)
        pos = off + _kind_size(kind)
    return "".join(fmt), names


_CACHE_FORMAT, _CACHE_NAMES = _build_cache_layout()
CACHE_STRUCT = struct.Struct(_CACHE_FORMAT)
"""Reads every field in the table in one call; its size is the span from 0x000 to the last field."""

_Vmcb12CacheBase = namedtuple("_Vmcb12CacheBase", _CACHE_NAMES)  # type: ignore[misc]


class Vmcb12Cache(_Vmcb12CacheBase):
    """Snapshot of a whole VMCB, flat: control and save fields share one namespace (``c.exitcode``,
    ``c.cr0``, ``c.rip``); segments are flattened (``c.cs_attrib``) and also offered whole
    (``c.cs`` -> Segment); the BITFIELDS are read-only properties (``c.np_enable``).
    Immutable on purpose: it is what VMRUN checked, so it must be what VMRUN loads. Change a copy
    with ``_replace``; write one out with ``pack_into``."""

    __slots__ = ()

    def pack_into(self, buf: Any, offset: int = 0) -> None:
        """Write every field back. The reserved gaps in between are written as zeros."""
        CACHE_STRUCT.pack_into(buf, offset, *self)

    def to_bytes(self) -> bytes:
        """The snapshot as a full 4 KiB VMCB image (reserved bytes zero)."""
        return CACHE_STRUCT.pack(*self).ljust(VMCB_SIZE, b"\0")

    @classmethod
    def zero(cls) -> "Vmcb12Cache":
        """An all-zero VMCB: the starting point for building one field by field (tests, vmcb02)."""
        return cls._make(CACHE_STRUCT.unpack(bytes(CACHE_STRUCT.size)))


def _install_cache_properties() -> None:
    for seg in SEGMENT_NAMES:
        idx = _CACHE_NAMES.index(f"{seg}_selector")

        def get(self: tuple, _i: int = idx) -> Segment:
            return Segment(self[_i], self[_i + 1], self[_i + 2], self[_i + 3])

        setattr(Vmcb12Cache, seg, property(get, doc=f"{seg} as a Segment"))
    for name, word, shift, width in BITFIELDS:
        idx = _CACHE_NAMES.index(word)
        mask = (1 << width) - 1

        def bget(self: tuple, _i: int = idx, _s: int = shift, _m: int = mask) -> int:
            return (self[_i] >> _s) & _m

        setattr(Vmcb12Cache, name, property(bget, doc=f"{word} bits {shift + width - 1}:{shift}"))


_install_cache_properties()

_tuple_new = tuple.__new__
_unpack_from = CACHE_STRUCT.unpack_from
_unpack = CACHE_STRUCT.unpack


def read_cache(buf: Any, offset: int = 0) -> Vmcb12Cache:
    """Snapshot the VMCB at buf[offset:]: one unpack, one tuple. This is the VMRUN hot path."""
    try:
        return _tuple_new(Vmcb12Cache, _unpack_from(buf, offset))
    except TypeError:
        return _tuple_new(Vmcb12Cache, _unpack(bytes(buf[offset:offset + CACHE_STRUCT.size])))
