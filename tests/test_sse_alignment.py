"""Legacy SSE alignment and MXCSR's reserved bits (engine patch 0024), and null selectors in
long mode (patch 0025), asserted from inside a guest.

APM vol. 4: a legacy (non-VEX) SSE instruction whose 16-byte memory operand is misaligned is
#GP(0) at the instruction, its destination untouched, unless the instruction is one of the
explicitly unaligned forms (MOVUPS, MOVDQU, LDDQU, PCMPxSTRx) or its operand is 8 bytes or less.
svmemu does not advertise MisAlignSse (CPUID 8000_0001 ECX[7]), so MXCSR.MM (bit 17) is
reserved: LDMXCSR, FXRSTOR and XRSTOR with it set are #GP(0) and load nothing. The forms with
an 8- or 4-byte operand read only that much (a page's last bytes before a not-present page).
APM vol. 2, "FS and GS Registers in 64-Bit Mode": an AMD processor without NullSelectorClearsBase
keeps the hidden base when MOV or POP loads a null selector into FS or GS.
"""
from __future__ import annotations

import pytest

from emu.engine.unicorn_build import loader as engine_loader
from emu.loader.asm import GUESTS_DIR
from tests.conftest import parse_tap
from tests.harness import boot

# (instruction with its memory operand at M, name): each must #GP(0) with M misaligned by 8.
MISALIGNED_GP = [
    ("addps xmm1, M", "ADDPS"),
    ("pxor xmm1, M", "PXOR"),
    ("pshufd xmm1, M, 0x1b", "PSHUFD"),
    ("pshufhw xmm1, M, 0x1b", "PSHUFHW"),
    ("cvtpd2ps xmm1, M", "CVTPD2PS"),
    ("cvttps2dq xmm1, M", "CVTTPS2DQ"),
    ("haddps xmm1, M", "HADDPS"),
    ("movshdup xmm1, M", "MOVSHDUP"),
    ("cvtpd2pi mm0, M", "CVTPD2PI"),
    ("pshufb xmm1, M", "PSHUFB"),
    ("movntdqa xmm1, M", "MOVNTDQA"),
    ("pblendw xmm1, M, 1", "PBLENDW"),
    ("palignr xmm1, M, 4", "PALIGNR"),
]
# Misaligned by 8 (or 4), and architecturally allowed: must complete.
MISALIGNED_OK = [
    "movups xmm2, M", "movdqu xmm2, M", "lddqu xmm2, M", "cvtps2pd xmm2, M",
    "cvtdq2pd xmm2, M", "cvtps2pi mm1, M", "roundss xmm2, M, 0", "pmovzxbw xmm2, M",
    "pcmpistri xmm2, M, 0", "movddup xmm2, M", "addss xmm2, M", "addsd xmm2, M",
]
ALIGNED_OK = ["addps xmm2, M", "pxor xmm2, M", "pshufb xmm2, M", "pblendw xmm2, M, 1"]


def _gp_checks() -> str:
    out = []
    for insn, name in MISALIGNED_GP:
        out.append(f"""
    movq xmm1, r12
    expect_fault 1f
2:  {insn.replace("M", "[rip + buf + 8]")}
1:
    check_eq [fault_vector], 13, "misaligned {name}: #GP"
    check_eq [fault_err], 0, "misaligned {name}: error code 0"
    lea rax, [rip + 2b]
    check_eq [fault_rip], rax, "misaligned {name}: RIP at the instruction"
    movq rax, xmm1
    check_eq rax, r12, "misaligned {name}: destination untouched"
""")
    ok = [i.replace("M", "[rip + buf + 8]") for i in MISALIGNED_OK]
    ok[-2] = ok[-2].replace("buf + 8", "buf + 4")
    ok += [i.replace("M", "[rip + buf + 16]") for i in ALIGNED_OK]
    out.append("    expect_fault 1f\n" + "".join(f"    {i}\n" for i in ok) + "1:\n"
               '    check_eq [fault_vector], -1, "unaligned forms and aligned operands run"\n')
    return "".join(out)


GUEST = r'''
.equ MSR_FS_BASE, 0xc0000100
.equ MSR_GS_BASE, 0xc0000101
.equ MXCSR_MM, 1 << 17
.equ HOLE, 0xa00000                         # a 2 MiB page made not present for a while
.equ HOLE_PDE, 8 * 5                        # its entry in pd0

main:
    fninit                                  # FCW = 0x37f
    mov rax, cr4
    or rax, 0x40600                         # OSFXSR | OSXMMEXCPT | OSXSAVE
    mov cr4, rax
    xor ecx, ecx
    mov eax, 3                              # XCR0: x87 | SSE
    xor edx, edx
    xsetbv
    mov r12, 0x1122334455667788
''' + _gp_checks() + r'''
    # --- 8- and 4-byte operands read only their size: at a page's end, before a hole ---
    and qword ptr [rip + pd0 + HOLE_PDE], -2     # 2 MiB page HOLE: not present
    mov rax, cr3
    mov cr3, rax
    mov rax, 0x400000003f800000                         # floats 1.0, 2.0
    mov [HOLE - 8], rax
    expect_fault 1f
    movups xmm2, [HOLE - 8]
1:
    check_eq [fault_vector], 14, "a 16-byte read across into a hole: #PF"
    mov eax, HOLE
    check_eq [fault_cr2], rax, "a 16-byte read across into a hole: CR2 at the hole"
    expect_fault 1f
    cvtps2pd xmm2, [HOLE - 8]
    cvtps2pi mm1, [HOLE - 8]
    cvttps2pi mm2, [HOLE - 8]
    roundsd xmm3, [HOLE - 8], 0
    roundss xmm4, [HOLE - 4], 0
    cvtdq2pd xmm5, [HOLE - 8]
1:
    check_eq [fault_vector], -1, "CVTPS2PD, CVT(T)PS2PI, ROUNDSD/SS, CVTDQ2PD read no further"
    movq rax, xmm2
    mov rcx, 0x3ff0000000000000
    check_eq rax, rcx, "CVTPS2PD of the last 8 bytes: 1.0"
    movq rax, mm1
    mov rcx, 0x0000000200000001
    check_eq rax, rcx, "CVTPS2PI of the last 8 bytes: 1, 2"
    emms
    or qword ptr [rip + pd0 + HOLE_PDE], 1
    mov rax, cr3
    mov cr3, rax

    # --- MXCSR.MM is reserved: LDMXCSR, FXRSTOR, XRSTOR refuse it ---
    stmxcsr [rip + mx_before]
    mov eax, [rip + mx_before]
    or eax, MXCSR_MM
    mov [rip + mx_new], eax
    expect_fault 1f
2:  ldmxcsr [rip + mx_new]
1:
    check_eq [fault_vector], 13, "LDMXCSR with MXCSR.MM: #GP"
    check_eq [fault_err], 0, "LDMXCSR with MXCSR.MM: error code 0"
    lea rax, [rip + 2b]
    check_eq [fault_rip], rax, "LDMXCSR with MXCSR.MM: RIP at the instruction"
    stmxcsr [rip + mx_after]
    mov eax, [rip + mx_after]
    mov ecx, [rip + mx_before]
    check_eq rax, rcx, "LDMXCSR with MXCSR.MM: MXCSR unchanged"

    fxsave [rip + fx_area]
    mov eax, [rip + fx_area + 28]
    check_eq rax, 0xffff, "FXSAVE stores MXCSR_MASK 0xffff"
    or dword ptr [rip + fx_area + 24], MXCSR_MM
    mov word ptr [rip + fx_area], 0x27f     # FCW: a different precision control
    expect_fault 1f
    fxrstor [rip + fx_area]
1:
    check_eq [fault_vector], 13, "FXRSTOR with MXCSR.MM: #GP"
    fnstcw [rip + fcw]
    movzx eax, word ptr [rip + fcw]
    check_eq rax, 0x37f, "FXRSTOR with MXCSR.MM: x87 state not loaded"

    mov eax, 3
    xor edx, edx
    xsave [rip + xs_area]
    or dword ptr [rip + xs_area + 24], MXCSR_MM
    mov word ptr [rip + xs_area], 0x27f
    mov eax, 3
    xor edx, edx
    expect_fault 1f
    xrstor [rip + xs_area]
1:
    check_eq [fault_vector], 13, "XRSTOR with MXCSR.MM: #GP"
    fnstcw [rip + fcw]
    movzx eax, word ptr [rip + fcw]
    check_eq rax, 0x37f, "XRSTOR with MXCSR.MM: x87 state not loaded"

    # --- a null selector in FS or GS keeps the base ---
    lea rax, [rip + magic]
    mov rdx, rax
    shr rdx, 32
    mov ecx, MSR_FS_BASE
    wrmsr
    mov ecx, MSR_GS_BASE
    wrmsr
    xor eax, eax
    mov fs, ax
    mov rbx, fs:[0]
    mov rax, 0x5eed5eed5eed5eed
    check_eq rbx, rax, "MOV of a null selector to FS keeps its base"
    push 0
    pop gs
    mov rbx, gs:[8]
    mov rax, 0x0123456789abcdef
    check_eq rbx, rax, "POP of a null selector to GS keeps its base"
    rdmsr64 MSR_FS_BASE
    lea rcx, [rip + magic]
    check_eq rax, rcx, "MSR_FS_BASE reads the kept base"
    mov ax, SEL_DATA
    mov fs, ax
    mov gs, ax
    xor eax, eax
    xor edx, edx
    mov ecx, MSR_FS_BASE
    wrmsr
    mov ecx, MSR_GS_BASE
    wrmsr
    ret

.data
.align 8
magic:          .quad 0x5eed5eed5eed5eed, 0x0123456789abcdef

.bss
.align 64
buf:            .space 64
fx_area:        .space 512
xs_area:        .space 1024
mx_before:      .space 4
mx_new:         .space 4
mx_after:       .space 4
fcw:            .space 4
'''

N_CHECKS = 4 * len(MISALIGNED_GP) + 1 + 5 + 4 + 1 + 2 + 2 + 3


def test_sse_alignment_mxcsr_and_null_fs_gs(tmp_path):
    if not (engine_loader.has_fix("sse-m128-alignment")
            and engine_loader.has_fix("null-fs-gs-keeps-base")):
        pytest.skip("needs svmemu's engine (patches 0024, 0025)")
    path = tmp_path / "sse_alignment.S"
    path.write_text(f'.include "{GUESTS_DIR}/prelude.inc"\n' + GUEST)
    b = boot(str(path), nested=False)
    checks = parse_tap(b.serial)
    assert b.result.reason == "exit" and b.result.status == 1, b.serial
    failed = [c.name for c in checks.values() if not c.ok]
    assert not failed, b.serial
    assert len(checks) == N_CHECKS, b.serial
