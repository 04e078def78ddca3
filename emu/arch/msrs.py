"""MSR numbers (AMD APM vol. 2, appendix A "MSR Cross-Reference"), under the APM's names.

Numbers only: which MSRs the presented processor has and what a write to each does is the MSR
table's business (emu/core/msrs_amd.py). L0's boot VMRUN (emu/engine/hostvm.py), the start-up
layout check and nested SVM (svm_ext) need some of the same numbers and take them from here.
"""
from emu.arch import memtype

MSR_TSC = 0x10                         # TSC
MSR_APIC_BASE = 0x1B                   # APIC_BASE
MSR_TSC_DEADLINE = 0x6E0                # IA32_TSC_DEADLINE (the APIC timer's TSC-deadline mode)
MSR_PKRS = 0x6E1                       # IA32_PKRS (supervisor protection keys; Intel's number)
MSR_SPEC_CTRL = 0x48                   # SPEC_CTRL
MSR_PRED_CMD = 0x49                    # PRED_CMD
MSR_PATCH_LEVEL = 0x8B                 # PATCH_LEVEL
MSR_MTRRCAP = memtype.MSR_MTRRCAP        # MTRRcap
MSR_SYSENTER_CS = 0x174
MSR_SYSENTER_ESP = 0x175
MSR_SYSENTER_EIP = 0x176
MSR_MCG_CAP = 0x179
MSR_MCG_STATUS = 0x17A
MSR_MCG_CTL = 0x17B
MSR_DEBUGCTL = 0x1D9                   # DebugCtl
MSR_LAST_BRANCH_FROM_IP = 0x1DB        # LastBranchFromIP
MSR_LAST_BRANCH_TO_IP = 0x1DC          # LastBranchToIP
MSR_LAST_EXCEPTION_FROM_IP = 0x1DD     # LastIntFromIP
MSR_LAST_EXCEPTION_TO_IP = 0x1DE       # LastIntToIP
MSR_PAT = memtype.MSR_PAT
MSR_MTRR_DEF_TYPE = memtype.MSR_MTRRDEFTYPE
MSR_MC0_CTL = 0x400                    # MCi_CTL/STATUS/ADDR/MISC at 0x400 + 4i + 0..3
MSR_XSS = 0xDA0
MSR_EFER = 0xC0000080
MSR_STAR = 0xC0000081
MSR_LSTAR = 0xC0000082
MSR_CSTAR = 0xC0000083
MSR_SFMASK = 0xC0000084
MSR_FS_BASE = 0xC0000100
MSR_GS_BASE = 0xC0000101
MSR_KERNEL_GS_BASE = 0xC0000102
MSR_TSC_AUX = 0xC0000103
MSR_TSC_RATIO = 0xC0000104
MSR_PERF_CTL0 = 0xC0010000             # legacy PerfEvtSel0-3
MSR_PERF_CTR0 = 0xC0010004             # legacy PerfCtr0-3
MSR_SYSCFG = 0xC0010010
MSR_HWCR = 0xC0010015
MSR_NB_CFG = 0xC001001F                # Northbridge configuration (EnableCf8ExtCfg)
MSR_VM_CR = 0xC0010114
MSR_VM_HSAVE_PA = 0xC0010117
MSR_CORE_PERF_CTL0 = 0xC0010200        # PerfEvtSeln at 0xC0010200 + 2n, PerfCtrn at + 2n + 1
