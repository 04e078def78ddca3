"""Architectural bit positions shared by several svmemu modules (AMD APM vol. 2).

Kept in one place so that the page walker, the machine, the MSR file and svm_ext's consistency
checks cannot drift apart on what, say, EFER.NXE is. Only bits with an architectural name are
here; anything an emulator invents lives with the code that invents it.
"""

# CR0 (APM vol. 2, 3.1.1)
CR0_PE = 1 << 0
CR0_MP = 1 << 1
CR0_EM = 1 << 2
CR0_TS = 1 << 3
CR0_ET = 1 << 4
CR0_NE = 1 << 5
CR0_WP = 1 << 16
CR0_AM = 1 << 18
CR0_NW = 1 << 29
CR0_CD = 1 << 30
CR0_PG = 1 << 31

# CR3 (APM vol. 2, 3.1.2): page-level cache controls of the top-level table
CR3_PWT = 1 << 3
CR3_PCD = 1 << 4

# CR4 (APM vol. 2, 3.1.3)
CR4_VME = 1 << 0
CR4_PVI = 1 << 1
CR4_TSD = 1 << 2
CR4_DE = 1 << 3
CR4_PSE = 1 << 4
CR4_PAE = 1 << 5
CR4_MCE = 1 << 6
CR4_PGE = 1 << 7
CR4_PCE = 1 << 8
CR4_OSFXSR = 1 << 9
CR4_OSXMMEXCPT = 1 << 10
CR4_UMIP = 1 << 11
CR4_LA57 = 1 << 12
CR4_FSGSBASE = 1 << 16
CR4_PCIDE = 1 << 17
CR4_OSXSAVE = 1 << 18
CR4_SMEP = 1 << 20
CR4_SMAP = 1 << 21
CR4_PKE = 1 << 22
CR4_CET = 1 << 23
CR4_PKS = 1 << 24

# EFER (APM vol. 2, 3.1.7)
EFER_SCE = 1 << 0
EFER_LME = 1 << 8
EFER_LMA = 1 << 10
EFER_NXE = 1 << 11
EFER_SVME = 1 << 12
EFER_LMSLE = 1 << 13
EFER_FFXSR = 1 << 14
EFER_TCE = 1 << 15

# RFLAGS (APM vol. 2, 3.1.6)
RFLAGS_CF = 1 << 0
RFLAGS_FIXED = 1 << 1    # reserved, reads as one
RFLAGS_TF = 1 << 8
RFLAGS_IF = 1 << 9
RFLAGS_DF = 1 << 10
RFLAGS_NT = 1 << 14
RFLAGS_RF = 1 << 16
RFLAGS_VM = 1 << 17
RFLAGS_AC = 1 << 18
RFLAGS_VIF = 1 << 19
RFLAGS_VIP = 1 << 20

# x87 and SSE state as a CPU comes out of reset on QEMU's pc (its x86_cpu_reset): the control
# word FNINIT loads (all exceptions masked, 64-bit precision, round to nearest), every x87
# register empty (the full tag word, 2 bits each, 11b = empty), MXCSR with every SSE exception
# masked and round to nearest
FCW_FNINIT = 0x037F
FTW_ALL_EMPTY = 0xFFFF
MXCSR_RESET = 0x1F80

# Debug registers (APM vol. 2, 13.1.1): the values RESET leaves in DR6 and DR7, and the DR7
# fields of breakpoint 0 (L0, R/W0 in bits 17:16 with 10b = I/O, LEN0 in bits 19:18)
DR6_RESET = 0xFFFF0FF0
DR6_BD = 1 << 13          # the #DB came from general detect (DR7.GD)
DR6_BS = 1 << 14          # the #DB came from single-stepping (RFLAGS.TF)
DR7_RESET = 0x400        # bit 10 is reserved and reads as one
DR7_L0 = 1 << 0
DR7_GD = 1 << 13          # general detect: the next MOV DRn raises #DB
DR7_RW0_SHIFT = 16
DR7_RW_IO = 2
DR7_RW_WRITE = 1          # R/Wn = 01b: break on data writes
DR7_RW_READ_WRITE = 3     # R/Wn = 11b: break on data reads or writes
DR7_LEN0_SHIFT = 18       # LENn in bits 19:18 + 4n: 00b 1 byte, 01b 2, 11b 4, 10b 8
DR7_FIELDS_PER_BP = 4     # R/Wn and LENn take four bits per breakpoint

# The smallest page (APM vol. 2, 5.3): 4 Kbytes
PAGE_SIZE = 1 << 12

# Page-translation-table entry fields (APM vol. 2, 5.4.1 and the entry figures of 5.3)
PTE_P = 1 << 0
PTE_RW = 1 << 1
PTE_US = 1 << 2
PTE_PWT = 1 << 3
PTE_PCD = 1 << 4
PTE_A = 1 << 5
PTE_D = 1 << 6
PTE_PS = 1 << 7
PTE_PAT_4K = 1 << 7  # in a PTE that maps a 4-Kbyte page, bit 7 is PAT, not PS
PTE_G = 1 << 8
PTE_PAT_LARGE = 1 << 12  # in a PDE/PDPE that maps a 2M/4M/1G page
PTE_NX = 1 << 63
PTE_PKEY_SHIFT = 59   # bits 62:59 of a leaf entry: its protection key (APM vol. 2, 5.6.6)
PTE_PKEY_MASK = 0xF << PTE_PKEY_SHIFT

# #PF error code (APM vol. 2, 8.4.2)
PF_P = 1 << 0
PF_W = 1 << 1
PF_U = 1 << 2
PF_RSV = 1 << 3
PF_ID = 1 << 4
PF_PK = 1 << 5
PF_SS = 1 << 6

# #NPF EXITINFO1 beyond the #PF error-code bits (APM vol. 2, 15.25.6)
NPF_GUEST_PAGE = 1 << 32  # fault while translating the final guest physical address
NPF_GUEST_TABLE = 1 << 33  # fault while translating a guest page-table access
