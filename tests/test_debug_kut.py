"""The debugging tools on a hypervisor svmemu's authors did not write: kvm-unit-tests' svm.flat,
built from ../shared/conformance with its own svm.elf (symbols and DWARF from gcc).

What is asserted comes from that test's source (x86/svm_tests.c: next_rip intercepts RDTSC and
puts the label exp_next_rip right after it) and from the APM (exit code 0x6E is RDTSC; NRIP is
the address of the next instruction), not from svmemu's tables."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conformance import runner
from tests.test_gdbstub import needs_gdb, run_gdb

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SVMEMU_CONFORMANCE_SHARED", runner.SHARED_DEFAULT))
VMEXIT_RDTSC = 0x6E


@pytest.fixture(scope="module")
def x86() -> Path:
    if not (SHARED / runner.BUILD_SCRIPT).exists():
        pytest.skip(f"no kvm-unit-tests build script in {SHARED}")
    missing = [t for t in ("gcc", "make") if not shutil.which(t)]
    if missing:
        pytest.skip(f"building kvm-unit-tests needs {', '.join(missing)}")
    return runner.build_suite(SHARED, runner.BUILD_DEFAULT) / "x86"


def _svmemu(x86: Path, *extra: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "emu.cli", "run", str(x86 / "svm.flat"),
                             "-m", "256M", "--append", "next_rip", *extra], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def test_a_trace_filtered_to_l2_names_the_tests_function(x86: Path) -> None:
    p = _svmemu(x86, "--trace", "exits", "--trace-world", "L2")
    out, err = p.communicate(timeout=120)
    assert "PASS: next_rip" in out and p.returncode == 1, out + err
    exits = [line for line in err.splitlines() if line.startswith("exits ")]
    # Only L2's exit is shown, and it is the RDTSC inside test_next_rip (found by its symbol in
    # svm.elf, which sits beside svm.flat).
    assert len(exits) == 1, err
    assert re.search(r"\[L2 64 cpl0\] 0x[0-9a-f]+ <test_next_rip\+0x[0-9a-f]+> #VMEXIT RDTSC",
                     exits[0]), exits[0]


@needs_gdb
def test_gdb_on_svm_elf_breaks_in_l2_reads_vmcb12_and_runs_back(x86: Path) -> None:
    p = _svmemu(x86, "--gdb", "tcp::0", "-S")
    line = p.stderr.readline()
    m = re.search(r"listening on [\d.]+:(\d+)", line)
    assert m, line
    out = run_gdb(int(m.group(1)), f"file {x86 / 'svm.elf'}", "break test_next_rip", "continue",
                  "monitor world", "monitor record on", "monitor break-on vmexit", "continue",
                  "monitor vmcb exitcode nrip", "p/x &exp_next_rip",
                  "reverse-continue", "info registers rip", "monitor world", "kill")
    p.communicate(timeout=120)
    # gdb stops in the test's L2 function by name, and svmemu says L2 is running.
    assert re.search(r"Breakpoint 1, test_next_rip \(", out), out
    assert out.count("L2 running: vmcb12 at") == 2, out
    # The #VMEXIT is RDTSC, and NRIP is exp_next_rip, as the test's own check expects.
    code = int(re.search(r"^exitcode\s+= (0x[0-9a-f]+)  \(RDTSC\)$", out, re.M).group(1), 16)
    assert code == VMEXIT_RDTSC
    nrip = int(re.search(r"^nrip\s+= (0x[0-9a-f]+)$", out, re.M).group(1), 16)
    label = int(re.search(r"^\$1 = (0x[0-9a-f]+)$", out, re.M).group(1), 16)
    assert nrip == label
    # Running backwards from L1 stops at the breakpoint in L2 again, before the #VMEXIT.
    rips = [int(v, 16) for v in re.findall(r"^rip\s+(0x[0-9a-f]+)\s+0x[0-9a-f]+ <test_next_rip>$",
                                            out, re.M)]
    assert rips and rips[-1] < nrip, out
