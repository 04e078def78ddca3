"""MSR numbers (AMD APM vol. 2, appendix A), under the APM's names.

The MSR file (emu/core/msr.py) gives each one its behaviour; L0's boot VMRUN (emu/engine/hostvm.py)
and nested SVM (svm_ext) need some of the same numbers, and all of them take them from here.
The PAT and MTRR numbers live with the memory-type rules that read them (emu/arch/memtype.py).
"""

MSR_TSC = 0x0000_0010
MSR_APIC_BASE = 0x0000_001B
MSR_SYSENTER_CS = 0x0000_0174
MSR_SYSENTER_ESP = 0x0000_0175
MSR_SYSENTER_EIP = 0x0000_0176
MSR_EFER = 0xC000_0080
MSR_STAR = 0xC000_0081
MSR_LSTAR = 0xC000_0082
MSR_CSTAR = 0xC000_0083
MSR_SFMASK = 0xC000_0084
MSR_FS_BASE = 0xC000_0100
MSR_GS_BASE = 0xC000_0101
MSR_KERNEL_GS_BASE = 0xC000_0102
MSR_TSC_AUX = 0xC000_0103
MSR_VM_CR = 0xC001_0114
MSR_VM_HSAVE_PA = 0xC001_0117
