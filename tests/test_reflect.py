"""The way out of L2: one decision (reflect.exit_handled) over the per-class predicates, one
merge of L0's and L1's intercepts (intercepts.recalc), and one caller of #VMEXIT."""
from __future__ import annotations

import ast
from pathlib import Path

from emu.arch import vmcb as V
from emu.engine import hostvm
from svm_ext import intercepts, reflect

ROOT = Path(__file__).resolve().parent.parent


def _cache(**fields: int) -> V.Vmcb12Cache:
    return V.Vmcb12Cache.zero()._replace(**fields)


def test_exit_handled_asks_each_class() -> None:
    c = _cache(intercept_cr_read=1 << 3, intercept_dr_write=1 << 7,
               intercept_exceptions=1 << 14, intercept_misc1=V.INTERCEPT_CPUID,
               intercept_misc2=V.INTERCEPT_VMMCALL)
    assert reflect.exit_handled(c, V.VMEXIT_CR0_READ + 3)
    assert not reflect.exit_handled(c, V.VMEXIT_CR0_WRITE + 3)
    assert reflect.exit_handled(c, V.VMEXIT_DR7_WRITE)
    assert reflect.exit_handled(c, V.VMEXIT_EXCP0 + 14)
    assert not reflect.exit_handled(c, V.VMEXIT_EXCP0 + 13)
    assert reflect.exit_handled(c, V.VMEXIT_CPUID)
    assert reflect.exit_handled(c, V.VMEXIT_VMMCALL)
    assert not reflect.exit_handled(c, V.VMEXIT_HLT)
    assert not reflect.exit_handled(c, V.VMEXIT_NPF)
    assert reflect.exit_handled(c._replace(nested_ctl=1), V.VMEXIT_NPF)


def test_exit_handled_reads_the_permission_maps() -> None:
    iopm_pa, msrpm_pa = 0x10000, 0x20000
    ram = bytearray(0x30000)
    ram[iopm_pa + (0x71 >> 3)] = 1 << (0x71 & 7)          # port 0x71
    ram[msrpm_pa + 0x800 + (0x80 * 2 >> 3)] = 2            # EFER (0xC0000080): write only
    read = lambda pa, n: bytes(ram[pa:pa + n])            # noqa: E731
    c = _cache(intercept_misc1=V.INTERCEPT_IOIO_PROT | V.INTERCEPT_MSR_PROT,
               iopm_base_pa=iopm_pa, msrpm_base_pa=msrpm_pa)
    assert reflect.exit_handled(c, V.VMEXIT_IOIO, read, port=0x70, size=2)
    assert not reflect.exit_handled(c, V.VMEXIT_IOIO, read, port=0x70, size=1)
    assert reflect.exit_handled(c, V.VMEXIT_MSR, read, info1=1, msr_index=0xC000_0080)
    assert not reflect.exit_handled(c, V.VMEXIT_MSR, read, info1=0, msr_index=0xC000_0080)
    assert reflect.exit_handled(c, V.VMEXIT_MSR, read, info1=0, msr_index=0x4000_0000)


def test_recalc_merges_l0_l1_and_workarounds() -> None:
    l0_misc = V.intercept_misc_bit(V.VMEXIT_CPUID) | V.intercept_misc_bit(V.VMEXIT_VMRUN)
    c = _cache(intercept_cr_read=0x5, intercept_cr_write=0x10, intercept_dr_read=0x2,
               intercept_dr_write=0x1, intercept_misc1=V.INTERCEPT_HLT,
               intercept_misc2=V.INTERCEPT_VMMCALL)
    m = intercepts.recalc(c, l0_misc)
    assert (m.cr_read, m.cr_write, m.dr_read) == (0x5, 0x10, 0x2)
    assert m.dr_write == 0x1 | hostvm.L0_DR_WRITE_INTERCEPTS
    assert m.exceptions == 0xFFFF_FFFF
    assert m.misc == l0_misc | V.INTERCEPT_HLT | V.INTERCEPT_VMMCALL << 32
    quirks = intercepts.recalc(c._replace(intercept_misc1=V.INTERCEPT_INVD
                                          | V.INTERCEPT_CR0_SEL_WRITE), 0)
    assert quirks.misc & V.intercept_misc_bit(V.VMEXIT_WBINVD)
    assert quirks.cr_write == 0x10 | 1


def test_only_reflect_calls_vmexit() -> None:
    callers = []
    for path in sorted((ROOT / "svm_ext").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                f = node.func
                name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
                if name == "vmexit":
                    callers.append(path.name)
    assert callers == ["reflect.py"]
