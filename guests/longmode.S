# longmode.S: the prelude really put us in long mode, on the CPU we expect.
# Checks: EFER.LME and EFER.LMA (via rdmsr), CR0.PG/PE/WP, CR4.PAE, CS is the 64-bit selector,
# 64-bit registers and arithmetic (a value above 4 GiB survives a push/pop and a shift),
# CPUID vendor "AuthenticAMD" and long mode bit, CPUID 0x80000001 ECX.SVM (bit 2),
# CPUID 0x8000000A EDX.NP (bit 0; QEMU sets it with -cpu qemu64,+svm,+npt).
.include "prelude.inc"

main:
    rdmsr64 MSR_EFER
    check_mask rax, 0x500, 0x500, "EFER.LME and EFER.LMA set"
    mov rax, cr0
    check_mask rax, 0x80010001, 0x80010001, "CR0.PG, CR0.WP and CR0.PE set"
    mov rax, cr4
    check_mask rax, 0x20, 0x20, "CR4.PAE set"
    xor eax, eax
    mov ax, cs
    check_eq rax, SEL_CODE64, "CS is the 64-bit code segment"

    mov r8, 0x123456789abcdef0
    push r8
    xor r8d, r8d
    pop r9
    check_eq r9, 0x123456789abcdef0, "64-bit value survives push/pop"
    mov rax, 1
    shl rax, 40
    check_eq rax, 0x10000000000, "64-bit shift"
    mov eax, 0xffffffff
    inc rax
    check_eq rax, 0x100000000, "carry into bit 32"
    mov rax, -1
    mov eax, 5
    check_eq rax, 5, "32-bit write zero-extends"

    xor eax, eax
    cpuid
    check_eq rbx, 0x68747541, "CPUID vendor Auth"
    check_eq rdx, 0x69746e65, "CPUID vendor enti"
    check_eq rcx, 0x444d4163, "CPUID vendor cAMD"
    mov eax, 0x80000000
    cpuid
    cmp eax, 0x8000000a
    setae al
    movzx eax, al
    check_eq rax, 1, "CPUID max extended leaf >= 0x8000000A"
    mov eax, 0x80000001
    cpuid
    check_mask rdx, 0x20000000, 0x20000000, "CPUID 0x80000001 EDX.LM"
    check_mask rcx, 4, 4, "CPUID 0x80000001 ECX.SVM"
    mov eax, 0x8000000a
    cpuid
    check_mask rdx, 1, 1, "CPUID 0x8000000A EDX.NP"
    ret
