"""From a crash AFL++ found to its cause: replaying an input under the tracer or gdb, shrinking
it with afl-tmin, and running AFL++ on several cores with one output folder. Driven through the
command line (and real gdb and AFL++), as a user would.

The crash is guests/svm_fuzz_target.S's planted bug: index 16 then the command "SVM!" (its
source says so); the expectations come from there, not from svmemu."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from emu.cli.fuzz import STATUS_CRASH, instance_names
from emu.loader.asm import assemble
from tests.test_fuzz_afl import OPTS, TARGET

ROOT = Path(__file__).resolve().parent.parent
BUG = b"\x10SVM!"
GDB = shutil.which("gdb")


def fuzz(*argv: str, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "emu.cli", "fuzz", str(TARGET), *OPTS, *argv],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout, **kw)


def needs_afl() -> None:
    if shutil.which("afl-fuzz") is None or shutil.which("afl-tmin") is None:
        pytest.skip("AFL++ is not installed (Debian: apt-get install afl++)")
    # In a child, as the fuzzer loads it (its loader leans on distutils, which pytest's own
    # imports can leave in another state).
    p = subprocess.run([sys.executable, "-c", "from emu.tools.fuzz.afl import load_unicornafl; "
                        "load_unicornafl()"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    if p.returncode:
        pytest.skip(f"unicornafl not importable: {p.stderr.strip().splitlines()[-1:]}")


def test_a_crash_replays_under_the_exception_trace(tmp_path):
    crash = tmp_path / "crash"
    crash.write_bytes(BUG)
    p = fuzz("--run-input", str(crash), "--trace", "exc")
    assert p.returncode == STATUS_CRASH, p.stderr
    exc = [l for l in p.stderr.splitlines() if l.startswith("exc")]
    assert any("triple fault" in l for l in exc) and "the CPU shuts down" in exc[-1], exc
    ok = tmp_path / "ok"
    ok.write_bytes(b"\x03PING")
    p = fuzz("--run-input", str(ok), "--trace", "exc", "--trace-file", str(tmp_path / "t"))
    assert p.returncode == 0 and "no crash" in p.stderr
    assert "triple fault" not in (tmp_path / "t").read_text()


@pytest.mark.skipif(GDB is None, reason="gdb is not installed (Debian: apt-get install gdb)")
def test_a_crash_replays_under_gdb_from_the_reset_point(tmp_path):
    crash = tmp_path / "crash"
    crash.write_bytes(BUG)
    p = subprocess.Popen([sys.executable, "-m", "emu.cli", "fuzz", str(TARGET), *OPTS,
                          "--run-input", str(crash), "--gdb", "tcp::0", "-S"], cwd=ROOT,
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        seen = []
        for _ in range(20):                 # anything svmemu says first (the engine in use)
            seen.append(p.stderr.readline())
            m = re.search(r"listening on [\d.]+:(\d+)", seen[-1])
            if m or not seen[-1]:
                break
        assert m, seen
        port = int(m.group(1))
        g = subprocess.run([GDB, "-batch", "-nx", "-ex", f"target remote 127.0.0.1:{port}",
                            "-ex", "info registers rip", "-ex", "monitor world",
                            "-ex", "continue"], capture_output=True, text=True, timeout=120)
        _, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    out = g.stdout + g.stderr
    # The input's run starts at the reset point, --start-at l2_entry, in L2.
    l2_entry = assemble(str(TARGET)).symbols["l2_entry"]
    assert re.search(rf"^rip\s+{l2_entry:#x}", out, re.M), out
    assert "L2 running" in out
    assert "SIGSEGV" in out                           # the triple fault, as gdb sees it
    assert p.returncode == STATUS_CRASH and "svmemu: crash: triple fault" in err


@pytest.mark.slow
def test_minimize_shrinks_a_crash_to_the_bug(tmp_path):
    needs_afl()
    crash = tmp_path / "id:000000,sig:00"
    crash.write_bytes(BUG + b"AAAAAAAAAAAxyz")
    p = fuzz("--minimize", str(crash), timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    small = tmp_path / (crash.name + ".min")
    assert small.read_bytes() == BUG
    assert f"minimized {len(BUG) + 14} -> {len(BUG)} bytes" in p.stderr
    assert "still crashes" in p.stderr


def test_minimize_refuses_an_input_that_does_not_crash(tmp_path):
    needs_afl()
    ok = tmp_path / "ok"
    ok.write_bytes(b"\x03PING")
    p = fuzz("--minimize", str(ok))
    assert p.returncode == 2 and "does not crash with these options" in p.stderr


@pytest.mark.slow
def test_jobs_runs_a_main_and_secondaries_on_one_folder(tmp_path):
    needs_afl()
    seeds = tmp_path / "seeds"
    seeds.mkdir()
    (seeds / "ping").write_bytes(b"\x03PING")
    out = tmp_path / "findings"
    began = time.monotonic()
    p = fuzz("-i", str(seeds), "-o", str(out), "--jobs", "2", "--duration", "8",
             env=dict(os.environ, AFL_NO_UI="1"), timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "Traceback" not in p.stderr
    stats = {d.name: (d / "fuzzer_stats").read_text() for d in out.iterdir() if d.is_dir()}
    assert set(stats) == {"main", "s1"}, stats
    assert re.search(r"command_line\s+: .* -M main ", stats["main"])
    assert re.search(r"command_line\s+: .* -S s1 ", stats["s1"])
    for text in stats.values():
        assert int(re.search(r"execs_done\s+: (\d+)", text).group(1)) > 0
    assert (out / "s1.log").exists()
    assert time.monotonic() - began < 290


def test_instance_names_for_one_and_several_machines():
    assert instance_names(3, "", False) == ["main", "s1", "s2"]
    assert instance_names(2, "box2", True) == ["box2-s1", "box2-s2"]


@pytest.mark.parametrize("argv, text", [
    (["--trace", "exc"], "give --run-input FILE"),
    (["-S", "--run-input", "x"], "-S waits for gdb"),
    (["--jobs", "2", "--run-input", "x"], "--jobs runs AFL++"),
])
def test_replay_options_need_their_companions(argv, text):
    p = fuzz(*argv)
    assert p.returncode == 2 and text in p.stderr and p.stderr.count("\n") == 1, p.stderr
