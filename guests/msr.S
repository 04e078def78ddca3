# msr.S: the MSR file, as a real AMD CPU behaves.
# Checks: PAT reset value 0x0007040600070406; a valid PAT write reads back; WRMSR(PAT) with a
# reserved memory type (2, 3, or > 7, in any byte) raises #GP and leaves PAT unchanged; RDMSR and
# WRMSR of unimplemented MSRs raise #GP; EFER.NXE can be set and cleared; MTRRcap reads (VCNT > 0);
# MTRRdefType writes and reads back; the TSC increases.
# QEMU TCG (7.2) is known wrong here: it takes reserved PAT types silently and reads/ignores
# unimplemented MSRs without #GP; tests/test_guests_qemu.py lists those checks.
.include "prelude.inc"

.equ MSR_PAT, 0x277
.equ MSR_MTRRCAP, 0xfe
.equ MSR_MTRR_DEF_TYPE, 0x2ff
.equ PAT_DEFAULT, 0x0007040600070406

# pat_reserved VALUE, "name", "name2": WRMSR(PAT, VALUE) must #GP and leave PAT as it was.
.macro pat_reserved value, name, name2
    expect_fault .Lpat_resume\@
    wrmsr64 MSR_PAT, "\value"
.Lpat_resume\@:
    check_eq [fault_vector], 13, "\name"
    rdmsr64 MSR_PAT
    check_eq rax, PAT_DEFAULT, "\name2"
    wrmsr64 MSR_PAT, PAT_DEFAULT
.endm

main:
    rdmsr64 MSR_PAT
    check_eq rax, PAT_DEFAULT, "PAT reset value"
    wrmsr64 MSR_PAT, 0x0001050400070406
    rdmsr64 MSR_PAT
    check_eq rax, 0x0001050400070406, "PAT write of valid types reads back"
    wrmsr64 MSR_PAT, PAT_DEFAULT

    pat_reserved 0x0007040600070402, "WRMSR PAT type 2 in PA0 raises #GP", "PAT unchanged by the type 2 write"
    pat_reserved 0x0307040600070406, "WRMSR PAT type 3 in PA7 raises #GP", "PAT unchanged by the type 3 write"
    pat_reserved 0x0007040608070406, "WRMSR PAT type 8 in PA3 raises #GP", "PAT unchanged by the type 8 write"

    expect_fault .Lrd_unknown1
    rdmsr64 0xc0011234
.Lrd_unknown1:
    check_eq [fault_vector], 13, "RDMSR 0xC0011234 (unimplemented) raises #GP"
    expect_fault .Lrd_unknown2
    rdmsr64 0x12345
.Lrd_unknown2:
    check_eq [fault_vector], 13, "RDMSR 0x12345 (unimplemented) raises #GP"
    expect_fault .Lwr_unknown
    wrmsr64 0x12345, 0
.Lwr_unknown:
    check_eq [fault_vector], 13, "WRMSR 0x12345 (unimplemented) raises #GP"

    rdmsr64 MSR_EFER
    mov rbx, rax
    or rax, 0x800
    wrmsr64 MSR_EFER, rax
    rdmsr64 MSR_EFER
    check_mask rax, 0x800, 0x800, "EFER.NXE can be set"
    wrmsr64 MSR_EFER, rbx
    rdmsr64 MSR_EFER
    check_mask rax, 0x800, 0, "EFER.NXE can be cleared"

    expect_fault .Lmtrrcap
    rdmsr64 MSR_MTRRCAP
.Lmtrrcap:
    check_eq [fault_vector], -1, "MTRRcap reads without a fault"
    and eax, 0xff
    check_ne rax, 0, "MTRRcap VCNT is not zero"

    rdmsr64 MSR_MTRR_DEF_TYPE
    mov rbx, rax
    wrmsr64 MSR_MTRR_DEF_TYPE, 0xc06
    rdmsr64 MSR_MTRR_DEF_TYPE
    check_eq rax, 0xc06, "MTRRdefType write (E, FE, WB) reads back"
    wrmsr64 MSR_MTRR_DEF_TYPE, rbx

    rdtsc
    shl rdx, 32
    or rax, rdx
    mov rbx, rax
    mov ecx, 1000
.Lspin:
    dec ecx
    jnz .Lspin
    rdtsc
    shl rdx, 32
    or rax, rdx
    cmp rax, rbx
    seta al
    movzx eax, al
    check_eq rax, 1, "TSC increases"
    ret
