"""The live progress line: on a terminal only. svmemu, the conformance runner and bench/run.py
run under a pseudo-terminal as a user's shell would run them, and with a pipe as CI does."""
from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

from bench.workloads import build_source

ROOT = Path(__file__).resolve().parent.parent
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def on_terminal(argv: list[str], timeout: float = 300) -> tuple[int, str]:
    """Run with stderr (and stdout) on a pseudo-terminal; everything written there, colours
    stripped."""
    master, slave = pty.openpty()
    env = dict(os.environ, TERM="xterm", COLUMNS="200")
    p = subprocess.Popen(argv, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave,
                         env=env)
    os.close(slave)
    chunks = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:          # the child closed the terminal
                    break
                if not data:
                    break
                chunks.append(data)
            elif p.poll() is not None:
                break
    finally:
        if p.poll() is None:
            p.kill()
        p.wait()
        os.close(master)
    return p.returncode, ANSI.sub("", b"".join(chunks).decode("utf-8", "replace"))


def long_switch_image(tmp_path: Path) -> Path:
    """World switches in Python (--no-replay) for a couple of seconds."""
    image = tmp_path / "switch.bin"
    image.write_bytes(build_source("world_switch.S", ITERS=20_000))
    return image


def test_run_shows_progress_on_a_terminal_only(tmp_path):
    image = long_switch_image(tmp_path)
    status, text = on_terminal([sys.executable, "-m", "emu.cli", "run", str(image),
                                "--no-replay"])
    assert status == 1, text[-2000:]
    lines = re.findall(r"svmemu: +\d+\.\d s \| ([\d,]+) world switches \([\d.]+k?/s\) \| in L[12]",
                       text)
    assert lines, text[-2000:]
    counts = [int(n.replace(",", "")) for n in lines]
    assert counts == sorted(counts) and 0 < counts[-1] <= 40_000
    assert "40000 world switches (20000 VMRUN, 20000 #VMEXIT" in text   # the summary after it
    piped = subprocess.run([sys.executable, "-m", "emu.cli", "run", str(image), "--no-replay"],
                           cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert piped.returncode == 1
    assert piped.stderr.count("\n") == 1 and " | " not in piped.stderr


def test_counted_instructions_show_their_rate(tmp_path):
    image = long_switch_image(tmp_path)
    _, text = on_terminal([sys.executable, "-m", "emu.cli", "run", str(image), "--no-replay",
                           "--count-insns"])
    assert re.search(r"\| [\d,]+ instructions \([\d.]+[kM]?/s\) \|", text), text[-2000:]


def test_quiet_and_traces_on_stderr_keep_the_terminal_clean(tmp_path):
    image = long_switch_image(tmp_path)
    _, text = on_terminal([sys.executable, "-m", "emu.cli", "run", str(image), "--no-replay",
                           "-q"])
    assert "world switches (" not in text


def test_bench_shows_which_workload_runs():
    status, text = on_terminal([sys.executable, "bench/run.py", "--quick", "--only", "switch",
                                "--no-qemu"])
    assert status == 0, text[-2000:]
    assert re.search(r"workloads .* \d/\d .*VMRUN", text), text[-3000:]
