"""The x87 and SSE state a guest finds at its first instruction: as on QEMU's pc, the FNINIT
control word 0x37f, every x87 register empty and MXCSR 0x1f80 (every exception masked).
Unicorn's register reset left all three zero: x87 code that did not run FNINIT first worked
in single precision with every x87 exception unmasked, every register tagged valid, and MXCSR
had every SSE exception unmasked."""
from __future__ import annotations

from emu.loader.asm import GUESTS_DIR
from tests.conftest import parse_tap
from tests.harness import boot

GUEST = r'''
main:
    fnstcw [rip + fcw]
    movzx eax, word ptr [rip + fcw]
    check_eq rax, 0x37f, "x87 control word at reset"
    fnstenv [rip + env]
    movzx eax, word ptr [rip + env + 8]
    check_eq rax, 0xffff, "x87 tag word at reset: every register empty"
    mov rax, cr4
    or rax, 0x600                           # OSFXSR | OSXMMEXCPT
    mov cr4, rax
    stmxcsr [rip + mxcsr]
    mov eax, [rip + mxcsr]
    check_eq rax, 0x1f80, "MXCSR at reset"
    ret

.bss
.align 16
env:    .space 32
fcw:    .space 4
mxcsr:  .space 4
'''


def test_x87_and_sse_state_at_reset(tmp_path):
    path = tmp_path / "fpu_reset.S"
    path.write_text(f'.include "{GUESTS_DIR}/prelude.inc"\n' + GUEST)
    b = boot(str(path), nested=False)
    checks = parse_tap(b.serial)
    assert b.result.reason == "exit" and b.result.status == 1, b.serial
    assert len(checks) == 3 and all(c.ok for c in checks.values()), b.serial
