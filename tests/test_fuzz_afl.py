"""AFL++ finds the planted bug in guests/svm_fuzz_target.S through `svmemu fuzz` (unicornafl,
persistent mode, fast reset), following README's recipe; the input it finds is then confirmed
with --run-input. Slow: AFL runs until the first crash (seconds with the dictionary; capped)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from emu.cli.fuzz import STATUS_CRASH

ROOT = Path(__file__).resolve().parent.parent
TARGET = ROOT / "guests" / "svm_fuzz_target.S"
DICT = ROOT / "guests" / "svm_fuzz_target.dict"
OPTS = ["--input-at", "fuzz_input:16", "--start-at", "l2_entry", "--end-at", "fuzz_done",
        "--crash-on", "triple-fault"]


def _unicornafl_missing() -> str | None:
    try:
        from emu.tools.fuzz.afl import load_unicornafl
        load_unicornafl()
    except Exception as e:
        return str(e)
    return None


@pytest.mark.slow
def test_afl_finds_the_planted_bug(tmp_path):
    if shutil.which("afl-fuzz") is None:
        pytest.skip("afl-fuzz not installed (Debian: apt-get install afl++)")
    missing = _unicornafl_missing()
    if missing:
        pytest.skip(f"unicornafl not importable: {missing}")
    seeds = tmp_path / "seeds"
    seeds.mkdir()
    (seeds / "ping").write_bytes(b"\x03PING")
    out = tmp_path / "findings"
    env = dict(os.environ, AFL_NO_UI="1")
    run = subprocess.run([sys.executable, "-m", "emu.cli", "fuzz", str(TARGET), *OPTS,
                          "-i", str(seeds), "-o", str(out), "--until-crash", "--duration", "150",
                          "--afl-arg=-x", f"--afl-arg={DICT}"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert "Traceback" not in run.stderr
    crashes = sorted(out.glob("*/crashes/id:*"))
    assert crashes, run.stdout[-2000:] + run.stderr[-2000:]
    found = crashes[0].read_bytes()
    # The bug's path: index 16 in byte 0, then the command "SVM!".
    assert found[0] == 16 and found[1:5] == b"SVM!", found
    check = subprocess.run([sys.executable, "-m", "emu.cli", "fuzz", str(TARGET), *OPTS,
                            "--run-input", str(crashes[0])], cwd=ROOT, capture_output=True,
                           text=True, timeout=120)
    assert check.returncode == STATUS_CRASH, check.stderr
    assert "triple fault" in check.stderr
