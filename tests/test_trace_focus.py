"""Focused traces: by world, by RIP range or symbol, in a window between events; the `regs`
category; the exception chain in `exc`; L0's trampoline never in a trace. Driven through the
command line as a user would, except the cost test, which counts hook calls in-process.

Expected lines come from the guests' source (labels, the instructions there as our assembler
encoded them) and from what they print, not from the tracer's own tables."""
from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path

import capstone
import pytest

from emu.core.machine import Machine
from emu.core.trace import Focus, Tracer, parse_worlds
from emu.engine import hostvm
from emu.loader.asm import assemble
from svm_ext.extension import SvmExtension
from tests.nested_image import EXIT_PASS, L2_CODE, nested_image, vmcb12

ROOT = Path(__file__).resolve().parent.parent
GUEST = ROOT / "guests" / "svm_world_switch.S"
ASM = assemble(str(GUEST))
SYM = ASM.symbols
INSN = re.compile(r"^insn  \[(L\d) \d\d cpl\d\] (0x[0-9a-f]+): (.*)$", re.M)
_CS = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)


def trace(*argv: str, guest: Path = GUEST) -> tuple[str, str]:
    p = subprocess.run([sys.executable, "-m", "emu.cli", "run", str(guest), "-q", *argv],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 1, p.stderr[-2000:]
    return p.stdout, p.stderr


def l2_instructions() -> list[tuple[int, str]]:
    """L2's code in svm_world_switch.S, from l2_entry to the HLT it ends with, decoded."""
    start = SYM["l2_entry"]
    code = ASM.image[start - ASM.base:start - ASM.base + 64]
    out = []
    for ins in _CS.disasm(code, start):
        out.append((ins.address, ins.mnemonic))
        if ins.mnemonic == "hlt":
            return out
    raise AssertionError("no hlt after l2_entry")


def test_world_filter_shows_exactly_l2s_instructions():
    _, err = trace("--trace", "insn,exits", "--trace-world", "L2")
    lines = INSN.findall(err)
    assert {w for w, _, _ in lines} == {"L2"}
    # L2 runs its code once, straight through (each exit resumes after the instruction).
    assert [(int(a, 16), text.split()[0]) for _, a, text in lines] == l2_instructions()
    exits = [l for l in err.splitlines() if l.startswith("exits")]
    assert exits and all(l.startswith("exits [L2") for l in exits)
    assert len([l for l in exits if "#VMEXIT" in l]) == 4      # VMMCALL, CPUID, #UD, HLT


def test_asid_world_names_the_nested_guest():
    _, err = trace("--trace", "insn", "--trace-world", "asid1")
    assert len(INSN.findall(err)) == len(l2_instructions())
    _, err = trace("--trace", "insn", "--trace-world", "asid2")
    assert INSN.findall(err) == []


def test_range_by_symbols_and_by_address():
    _, err = trace("--trace", "insn", "--trace-range", "l2_vmmcall..l2_ud2")
    addrs = [int(a, 16) for _, a, _ in INSN.findall(err)]
    expected = [a for a, _ in l2_instructions() if SYM["l2_vmmcall"] <= a < SYM["l2_ud2"]]
    assert addrs == expected and len(expected) == 2              # vmmcall, cpuid
    _, err = trace("--trace", "insn", "--trace-range", f"{SYM['l2_ud2']:#x}+1")
    assert [int(a, 16) for _, a, _ in INSN.findall(err)] == [SYM["l2_ud2"]]


def test_window_between_events():
    _, err = trace("--trace", "insn", "--trace-from", "l2_ud2", "--trace-until", "vmexit:4")
    lines = INSN.findall(err)
    # From the ud2 (reached once) to the fourth #VMEXIT (HLT): L2's ud2 and, after L1 handled
    # the #UD exit and re-entered, L2's hlt, with L1's handler in between.
    assert int(lines[0][1], 16) == SYM["l2_ud2"] and lines[0][0] == "L2"
    assert lines[-1][0] == "L2" and lines[-1][2].startswith("hlt")
    assert {w for w, _, _ in lines[1:-1]} == {"L1"}
    _, err = trace("--trace", "insn", "--trace-from", "100", "--trace-until", "103")
    assert len(INSN.findall(err)) == 3


def test_regs_category_dumps_the_cpu_before_each_instruction():
    _, err = trace("--trace", "regs,insn", "--trace-range", "l2_vmmcall+1")
    regs = [l for l in err.splitlines() if l.startswith("regs")]
    text = "\n".join(regs)
    # L2 set RBX to 0x4242 just before the VMMCALL (svm_world_switch.S's l2_entry).
    assert "RBX=0000000000004242" in text
    assert f"RIP={SYM['l2_vmmcall']:016x}" in text
    assert re.search(r"EFER=0*15\d\d\b", text)           # LME, LMA, SVME: a long-mode L1
    assert err.splitlines().index(regs[-1]) < err.splitlines().index(
        next(l for l in err.splitlines() if l.startswith("insn")))


def test_l0_trampoline_is_never_traced_as_guest_code():
    _, err = trace("--trace", "insn", "--trace-until", "20")
    lines = INSN.findall(err)
    assert lines and all(int(a, 16) < hostvm.L0_BASE for _, a, _ in lines)
    assert lines[0][0] == "L1"


def test_exc_shows_the_whole_chain_to_the_triple_fault(tmp_path):
    """guests/triplefault.S: its exception ends in a fault while delivering #DF."""
    p = subprocess.run([sys.executable, "-m", "emu.cli", "run", "guests/triplefault.S", "-q",
                        "--trace", "exc"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 4, p.stderr
    exc = [l for l in p.stderr.splitlines() if l.startswith("exc")]
    assert any("double fault -> #DF" in l for l in exc), exc
    assert any("#DF faulted with" in l and "triple fault" in l for l in exc), exc
    assert "the CPU shuts down" in exc[-1]


def test_options_need_trace_and_valid_values():
    for argv, text in ((["--trace-world", "L2"], "--trace-world needs --trace"),
                       (["--trace", "insn", "--trace-world", "L3"], "is not L1, L2 or asidN"),
                       (["--trace", "insn", "--trace-range", "nowhere"], "neither an address"),
                       (["--trace", "insn", "--trace-from", "vmrun:x"], "is not a number")):
        p = subprocess.run([sys.executable, "-m", "emu.cli", "run", str(GUEST), *argv],
                           cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert p.returncode == 2 and p.stderr.count("\n") == 1 and text in p.stderr, p.stderr


# ---- cost -----------------------------------------------------------------------------------------

L1_LOOP = """
    mov ecx, {n}
l1_loop:
    dec ecx
    jnz l1_loop
    mov rax, rdi
    vmrun
""" + EXIT_PASS
L2_BODY = "mov rbx, 1\n mov rcx, 2\n add rbx, rcx\n nop\n vmmcall\n"


@pytest.mark.parametrize("focus", ["world", "range"])
def test_a_focused_trace_costs_what_it_prints_not_the_run(focus):
    """A million L1 instructions, five of L2: the per-instruction hook runs only for L2's."""
    n = 500_000                      # two instructions an iteration
    img = nested_image(L1_LOOP.format(n=n), L2_BODY, vmcb12())
    out = io.StringIO()
    f = (Focus(worlds=parse_worlds("L2")) if focus == "world"
         else Focus(ranges=((L2_CODE, L2_CODE + 0x100),)))
    tracer = Tracer(frozenset({"insn"}), out, f)
    m = Machine(64 << 20, stdout=None, tracer=tracer, extensions=[SvmExtension()])
    m.load_multiboot(img, "t")
    result = m.run()
    assert result.reason == "exit" and result.status == 1, result
    lines = [l for l in out.getvalue().splitlines() if l.startswith("insn")]
    assert [l.split(": ", 1)[1].split()[0] for l in lines] == ["mov", "mov", "add", "nop",
                                                                "vmmcall"]
    assert tracer.hook_calls == len(lines)
