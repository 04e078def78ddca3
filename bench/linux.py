"""Real code nobody here designed: Debian's Linux kernel booted on svmemu and on QEMU TCG.

    python -m bench.linux [--repeat N] [--markdown FILE]

Each run boots build/linux/vmlinuz (.ci/run unpacks it) with `console=ttyS0 panic=-1`, -m 256M,
-cpu EPYC, once without an initrd (to the root-fs panic) and once with the busybox initramfs
of tests/linux_kernel.py (to /init's ACPI power-off), svmemu and QEMU alternating. It records
the wall time from the process's start to the first serial line holding each milestone, and
the whole process's CPU time (user + system, from wait4). The ratio is QEMU's time over
svmemu's (above 1: svmemu is faster). Medians over --repeat runs; numbers never fail anything.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.linux_kernel import BUSYBOX, INIT_LINE, KERNEL, REPO, available, initramfs  # noqa: E402

CMDLINE = "console=ttyS0 panic=-1"
MILESTONES = (("banner", "Linux version"), ("e820", "BIOS-e820:"),
              ("CPU0 line", "smpboot: CPU0:"), ("init done", "Freeing unused kernel image"),
              ("panic", "VFS: Unable to mount root fs"), ("/init", INIT_LINE),
              ("power off", "reboot: Power down"))


def _command(engine: str, initrd: str | None, kernel: Path) -> list[str]:
    if engine == "svmemu":
        cmd = [sys.executable, "-m", "emu.cli", "run", str(kernel), "-m", "256M", "--append",
               CMDLINE, "--timeout", "900", "-q"]
        return cmd + (["--initrd", initrd] if initrd else [])
    cmd = ["qemu-system-x86_64", "-kernel", str(kernel), "-append", CMDLINE, "-m", "256M",
           "-cpu", "EPYC", "-accel", "tcg", "-nographic", "-no-reboot", "-monitor", "none"]
    return cmd + (["-initrd", initrd] if initrd else [])


def run_once(engine: str, initrd: str | None, kernel: Path = KERNEL) -> dict[str, float]:
    """Seconds from start to each milestone's line, and "cpu": the process's CPU seconds."""
    start = time.monotonic()
    p = subprocess.Popen(_command(engine, initrd, kernel), cwd=REPO, stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    seen: dict[str, float] = {}
    assert p.stdout is not None
    for raw in p.stdout:
        line = raw.decode("utf-8", "replace")
        for name, text in MILESTONES:
            if name not in seen and text in line:
                seen[name] = time.monotonic() - start
    _, status, usage = os.wait4(p.pid, 0)
    seen["cpu"] = usage.ru_utime + usage.ru_stime
    return seen


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--markdown", metavar="FILE")
    args = ap.parse_args(argv)
    why = available()
    if why is not None or not BUSYBOX.is_file():
        print(f"bench.linux: skipped: {why or f'no busybox at {BUSYBOX}'}")
        return 0
    engines = ["svmemu"] + (["qemu"] if shutil.which("qemu-system-x86_64") else [])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        rd = Path(tmp) / "initrd.gz"
        rd.write_bytes(initramfs(BUSYBOX.read_bytes()))
        for label, initrd in (("no initrd", None), ("busybox initramfs", str(rd))):
            runs: dict[str, list[dict[str, float]]] = {e: [] for e in engines}
            for _ in range(args.repeat):
                for e in engines:
                    runs[e].append(run_once(e, initrd))
            names = [n for n, _ in MILESTONES if all(n in r for r in runs["svmemu"])]
            names.append("cpu")
            for name in names:
                med = {e: statistics.median(r[name] for r in runs[e])
                       if all(name in r for r in runs[e]) else None for e in engines}
                rows.append((label, name, med.get("svmemu"), med.get("qemu")))
    out = ["| run | milestone | svmemu s | QEMU TCG s | QEMU/svmemu |", "|---|---|---|---|---|"]
    for label, name, ours, theirs in rows:
        what = "CPU time, whole run" if name == "cpu" else f"wall time to {name}"
        ratio = f"{theirs / ours:.2f}" if ours and theirs else "-"
        fmt = (lambda v: f"{v:.1f}" if v is not None else "-")
        out.append(f"| {label} | {what} | {fmt(ours)} | {fmt(theirs)} | {ratio} |")
    text = "\n".join(out)
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
