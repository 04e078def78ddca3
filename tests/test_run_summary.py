"""What a run tells on stderr when it ends, and snapshots taken at events (`--snapshot-at
vmrun:N`, `vmexit:N`, a symbol), driven through the command line as a user would.

Expected counts come from the guests' own source and checks (svm_world_switch.S's L1 asserts
the exit code of each #VMEXIT it takes) and from the iteration count substituted into the
bench workload, never from svmemu's own tables."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from emu.loader.asm import assemble

ROOT = Path(__file__).resolve().parent.parent
GUEST = ROOT / "guests" / "svm_world_switch.S"
SYM = assemble(str(GUEST)).symbols
SUMMARY = re.compile(r"^svmemu: (\S+) \((.*), rip (0x[0-9a-f]+)\); (.*?); (\d+) world switch(?:es)? "
                     r"\((\d+) VMRUN, (\d+) #VMEXIT(?:: (.*))?\); (\d+\.\d\d) s$", re.M)


def svmemu(*argv: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "emu.cli", *argv], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def summary(stderr: str) -> dict:
    found = SUMMARY.findall(stderr)
    assert len(found) == 1, stderr
    reason, message, rip, insns, total, runs, exits, by_code, _ = found[0]
    codes = dict((name, int(n)) for name, n in
                 (item.rsplit(" ", 1) for item in by_code.split(", ") if item))
    return dict(reason=reason, message=message, rip=int(rip, 16), insns=insns,
                switches=int(total), vmruns=int(runs), vmexits=int(exits), codes=codes)


def test_summary_names_how_it_ended_and_each_exit_code():
    p = svmemu("run", str(GUEST))
    assert p.returncode == 1 and "# pass 11 fail 0" in p.stdout, p.stderr
    s = summary(p.stderr)
    assert s["reason"] == "exit" and "isa-debug-exit" in s["message"]
    # The guest's checks: a VMMCALL, a CPUID, a #UD (exception 6), a HLT, then a VMRUN with
    # ASID 0 that fails its checks; its "ok" lines say each exit was seen.
    for line in ("first #VMEXIT is VMMCALL", "second #VMEXIT is CPUID", "third #VMEXIT is #UD",
                 "fourth #VMEXIT is HLT", "ASID 0 fails VMRUN with VMEXIT_INVALID"):
        assert re.search(rf"^ok \d+ - {re.escape(line)}", p.stdout, re.M), line
    assert s["codes"] == {"VMMCALL": 1, "CPUID": 1, "EXCP6": 1, "HLT": 1, "INVALID": 1}
    assert s["vmruns"] == 4 and s["vmexits"] == 5 and s["switches"] == 9
    assert s["insns"].startswith("instructions not counted")


def test_summary_counts_instructions_when_asked_and_quiet_silences_it():
    counted = summary(svmemu("run", "guests/hello.S", "--count-insns").stderr)
    assert re.fullmatch(r"\d+ instructions", counted["insns"])
    n = int(counted["insns"].split()[0])
    # One instruction fewer as a limit stops the run just before the last one (the OUT that
    # ends it): the count is exact.
    limited = svmemu("run", "guests/hello.S", "--max-insns", str(n - 1))
    assert limited.returncode == 8 and summary(limited.stderr)["reason"] == "max-insns"
    assert summary(limited.stderr)["insns"] == f"{n - 1} instructions"
    quiet = svmemu("run", "guests/hello.S", "-q")
    assert quiet.returncode == 1 and quiet.stderr == ""


@pytest.mark.parametrize("argv", [
    ["run", "guests/hello.S", "--cpu", "nonsense"],
    ["run", "no_such_file.bin"],
    ["run", "guests/hello.S", "--snapshot-at", "no_such_symbol", "--snapshot", "x.snap"],
])
def test_refusals_print_only_their_error_line(argv):
    p = svmemu(*argv)
    assert p.returncode == 2
    assert p.stderr.count("\n") == 1 and p.stderr.startswith("svmemu: error: "), p.stderr


def test_replayed_world_switches_are_counted_by_exit_code(tmp_path):
    """Round trips the C replay engine runs never reach Python; the summary counts them all the
    same, as with --no-replay."""
    from bench.workloads import build_source
    iters = 300
    image = tmp_path / "switch.bin"
    image.write_bytes(build_source("world_switch.S", ITERS=iters))
    for extra in ([], ["--no-replay"]):
        p = svmemu("run", str(image), *extra)
        assert "# pass 2 fail 0" in p.stdout, p.stdout + p.stderr
        s = summary(p.stderr)
        assert s["codes"] == {"VMMCALL": iters}, (extra, s)
        assert s["vmruns"] == s["vmexits"] == iters


# ---- snapshots at events ------------------------------------------------------------------------

def _snapshot_then_resume(tmp_path: Path, at: str) -> tuple[str, str, str]:
    snap = tmp_path / "at.snap"
    first = svmemu("run", str(GUEST), "--snapshot-at", at, "--snapshot", str(snap))
    assert first.returncode == 0, first.stderr
    line = next(l for l in first.stderr.splitlines() if "snapshot at" in l)
    rest = svmemu("resume", str(snap))
    assert rest.returncode == 1, rest.stderr
    return first.stdout + rest.stdout, line, rest.stderr


@pytest.fixture(scope="module")
def straight() -> str:
    return svmemu("run", str(GUEST), "-q").stdout


def test_snapshot_at_the_second_vmrun_lands_in_l2(tmp_path, straight):
    out, line, _ = _snapshot_then_resume(tmp_path, "vmrun:2")
    # The second entry resumes L2 after the VMMCALL the first exit stepped over (L1 adds 3).
    vmmcall_len = 3
    assert re.search(rf"snapshot at the 2nd VMRUN written to .* \(rip "
                     rf"{SYM['l2_vmmcall'] + vmmcall_len:#x}, L2\)", line), line
    assert out == straight


def test_snapshot_at_a_symbol_stops_before_its_instruction(tmp_path, straight):
    out, line, _ = _snapshot_then_resume(tmp_path, "l2_ud2")
    assert f"(rip {SYM['l2_ud2']:#x}, L2)" in line, line
    assert out == straight


def test_snapshot_at_the_third_vmexit_is_in_l1_after_a_vmrun(tmp_path, straight):
    out, line, rest_err = _snapshot_then_resume(tmp_path, "vmexit:3")
    rip = int(re.search(r"rip (0x[0-9a-f]+), L1\)", line).group(1), 16)
    code = assemble(str(GUEST))
    vmruns = [a for a, size, _ in code.lines
              if size == 3 and code.image[a - code.base:a - code.base + 3] == b"\x0f\x01\xd8"]
    assert rip in [a + 3 for a in vmruns]
    assert out == straight
    # What the resumed part saw: the fourth exit (HLT) and the failed VMRUN.
    assert summary(rest_err)["codes"] == {"HLT": 1, "INVALID": 1}


def test_snapshot_at_an_event_that_never_comes_writes_nothing(tmp_path):
    snap = tmp_path / "never.snap"
    p = svmemu("run", str(GUEST), "--snapshot-at", "vmexit:99", "--snapshot", str(snap))
    assert "before the 99th #VMEXIT; no snapshot written" in p.stderr
    assert p.returncode == 1 and not snap.exists()
