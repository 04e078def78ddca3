"""`--trace mem`: each data access of L1 and L2 gives one line with the world, the address of
the instruction, VA -> PA (or GPA -> SPA under nested paging), size, value and memory type;
and no memory hook exists unless the category is asked for."""
from __future__ import annotations

import io
import re

import pytest

from emu.tools import memtrace
from emu.core.machine import Machine
from emu.core.trace import Tracer
from svm_ext.extension import SvmExtension
from tests.nested_image import ENABLE_SVM, EXIT_PASS, L2_CODE, nested_image, vmcb12
from tests.test_memquery import GPAT_BASE, L1_SETUP, VA, with_tables
from tests.tinyimage import BODY, asm64

L1_BEFORE = L1_SETUP + "mov rax, rdi\n"
L1_STORE = f"mov qword ptr [{VA + 0x100:#x}], 0x55\n"
L2_BEFORE = f"mov rbx, {VA + 8:#x}\n"
L2_STORE = "mov qword ptr [rbx], 0x1234\n"
L2_LOAD = "mov ecx, dword ptr [rbx]\n"


def traced(categories, model="architectural", npt=True):
    out = io.StringIO()
    fields = dict(cr3=0x30000, g_pat=GPAT_BASE | (1 << 48))      # gPAT[6] = WC
    if npt:
        fields.update(nested_ctl=1, n_cr3=0x20000)
    l1 = L1_BEFORE + L1_STORE + "vmrun\n" + EXIT_PASS
    l2 = L2_BEFORE + L2_STORE + L2_LOAD + "vmmcall\n"
    m = Machine(64 << 20, stdout=None, tracer=Tracer(frozenset(categories), out),
                extensions=[SvmExtension(pat_model=model)])
    if "mem" in categories:
        memtrace.attach(m)
    m.load_multiboot(with_tables(nested_image(l1, l2, vmcb12(**fields))), "memtrace")
    assert m.run(timeout=20).reason == "exit"
    return out.getvalue().splitlines()


def at(code_before: str, base: int) -> int:
    return base + len(asm64(code_before, base)) if code_before else base


def test_lines_for_l1_and_l2_under_nested_paging():
    page = f"va {VA:#x}"[:-3]          # any access to the page at VA
    lines = [ln for ln in traced({"mem"}) if page in ln]
    l1_rip = at(ENABLE_SVM + L1_BEFORE, BODY)
    l1 = [ln for ln in lines if "[L1 " in ln]
    assert l1 == [f"mem   [L1 64 cpl0] {l1_rip:#x} write size 8 value 0x55 "
                  f"va {VA + 0x100:#x} pa {VA + 0x100:#x} type WT+mtrr WB = WT"]
    l2 = [ln for ln in lines if "[L2 " in ln]
    store_rip, load_rip = at(L2_BEFORE, L2_CODE), at(L2_BEFORE + L2_STORE, L2_CODE)
    addr = f"va {VA + 8:#x} gpa {VA + 8:#x} spa {VA + 8:#x}"
    assert l2 == [
        f"mem   [L2 64 cpl0] {store_rip:#x} write size 8 value 0x1234 {addr} "
        "type WCxWT+mtrr WB = WC+",
        f"mem   [L2 64 cpl0] {load_rip:#x} read  size 4 value 0x1234 {addr} "
        "type WCxWT+mtrr WB = WC+",
    ]


@pytest.mark.parametrize("model,npt,guest", [("shared", True, "UC-xWT+mtrr WB = CD"),
                                             ("architectural", False, "UC-+mtrr WB = CD")])
def test_l2_type_follows_pat_model_and_npt(model, npt, guest):
    l2 = [ln for ln in traced({"mem"}, model, npt) if "[L2 " in ln and "write" in ln]
    assert len(l2) == 1 and l2[0].endswith("type " + guest), l2


def test_no_memory_hook_unless_asked(monkeypatch):
    def refuse(self, uc):
        raise AssertionError("memory hook installed without --trace mem")
    monkeypatch.setattr(memtrace.MemTrace, "install", refuse)
    lines = traced({"exits"})
    assert lines and not any(ln.startswith("mem") for ln in lines)


def test_trace_mem_from_cli(tmp_path):
    from emu.cli.main import main
    from tests.tinyimage import long_mode_image, to_elf32
    out, img = tmp_path / "trace.txt", tmp_path / "t.bin"
    # RAM is WB under the MTRRs the firmware left; with MTRRdefType.E cleared, all is UC.
    img.write_bytes(to_elf32(long_mode_image(
        "mov qword ptr [0x300000], 7\n"
        "mov ecx, 0x2ff\nxor eax, eax\nxor edx, edx\nwrmsr\n"
        "mov qword ptr [0x300000], 8\n" + EXIT_PASS)))
    assert main(["run", str(img), "--trace", "mem", "--trace-file", str(out), "-q"]) == 1
    text = out.read_text()
    assert re.search(r"^mem   \[L1 64 cpl0\] 0x[0-9a-f]+ write size 8 value 0x7 va 0x300000 "
                     r"pa 0x300000 type WB\+mtrr WB = WB$", text, re.M), text[-500:]
    assert re.search(r"^mem   \[L1 64 cpl0\] 0x[0-9a-f]+ write size 8 value 0x8 va 0x300000 "
                     r"pa 0x300000 type WB\+mtrr UC = UC$", text, re.M), text[-500:]
