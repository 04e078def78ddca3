"""Fuzzing throughput on the bundled target (guests/svm_fuzz_target.S): executions per second
with the fast snapshot reset (emu/core/fastreset.py) against a reboot per input (a fresh machine,
boot, run to the start point, then the input) and against a full-RAM snapshot restore.

    python bench/fuzz_bench.py [N] [--cpu]

--cpu counts CPU seconds of this process instead of wall seconds (on a shared machine the wall
clock measures the neighbours).

Inputs alternate between a benign request and the crashing one, so both paths are measured.
Ratios matter, not absolute numbers (2 shared cores)."""
from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from emu.core import snapshot  # noqa: E402
from emu.cli.main import build_parser  # noqa: E402
from emu.cli.fuzz import build_harness  # noqa: E402

TARGET = str(ROOT / "guests" / "svm_fuzz_target.S")
INPUTS = [b"\x03PING", b"\x10SVM!"]           # benign; the planted bug
CLOCK = time.process_time if "--cpu" in sys.argv else time.perf_counter
OPTS = ["fuzz", TARGET, "--input-at", "fuzz_input:16", "--start-at", "l2_entry",
        "--run-input", "unused"]


def harness(*extra: str):
    return build_harness(build_parser().parse_args(OPTS + list(extra)))


def fast_reset(n: int, *extra: str) -> float:
    h = harness(*extra)
    t = CLOCK()
    for i in range(n):
        h.run_input(INPUTS[i % 2])
    return n / (CLOCK() - t)


def full_restore(n: int) -> float:
    h = harness()
    snap = snapshot.take(h.machine)
    t = CLOCK()
    for i in range(n):
        snapshot.restore(h.machine, snap)
        h.placement.place(h.machine, INPUTS[i % 2])
        h.execute()
    return n / (CLOCK() - t)


def reboot(n: int) -> float:
    """A fresh machine per input: boot the (pre-assembled) image, run to the start point, place
    the input, run. No snapshot at all, as a harness without one would."""
    from emu.tools.fuzz.harness import Harness, MemoryPlacement, parse_crash_rules
    from emu.loader.asm import assemble
    from emu.loader.multiboot import parse_image
    from emu.core.machine import Machine
    from svm_ext.extension import SvmExtension
    asm = assemble(TARGET)
    rules = parse_crash_rules(["triple-fault"], lambda k, v: False)
    t = CLOCK()
    for i in range(n):
        m = Machine(128 << 20, stdout=None, extensions=[SvmExtension()])
        m.load_multiboot(parse_image(asm.image, TARGET, 128 << 20), TARGET)
        h = Harness(m, MemoryPlacement(asm.symbols["fuzz_input"], 16), rules, [])
        h.run_to(asm.symbols["l2_entry"])
        h.placement.prepare(m)
        h.placement.place(m, INPUTS[i % 2])
        h.execute()
    return n / (CLOCK() - t)


def main() -> None:
    args = [a for a in sys.argv[1:] if a != "--cpu"]
    n = int(args[0]) if args else 400
    fast = fast_reset(n)
    ended = fast_reset(n, "--end-at", "fuzz_done")
    full = full_restore(max(n // 4, 10))
    boot = reboot(max(n // 40, 5))
    if CLOCK is time.process_time:
        print("(per CPU second of this process)")
    print(f"fast reset (dirty pages)   {fast:8.1f} exec/s")
    print(f"  ... with --end-at        {ended:8.1f} exec/s   (no UART report per input)")
    print(f"full snapshot restore      {full:8.1f} exec/s   ({fast / full:.1f}x slower than fast)")
    print(f"reboot per input           {boot:8.1f} exec/s   ({fast / boot:.1f}x slower than fast)")


if __name__ == "__main__":
    main()
