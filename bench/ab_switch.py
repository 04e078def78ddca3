"""A/B the world-switch cost of two source trees on this machine, interleaved so both see the
same load: `python bench/ab_switch.py OLD_TREE NEW_TREE [--rounds 5] [--iters 20000]`.

A tree is a directory holding emu/, svm_ext/ and bench/ (e.g. `git archive COMMIT | tar -x -C
DIR`). Each round runs workloads 3 and 4 (architectural model) once per tree in a fresh
interpreter, N and 1 iterations, CPU time; the table gives the median µs per round trip.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys

_CHILD = """
import sys
sys.path.insert(0, {tree!r})
from bench import runners, workloads
w = workloads.by_key({key!r})
n = {iters}
rn, r1 = runners.svmemu(workloads.build(w, n)), runners.svmemu(workloads.build(w, 1))
for r in (rn, r1):
    problem = workloads.completed(r.status, r.output, w.checks)
    if problem:
        sys.exit("broken run: " + problem)
print((rn.seconds - r1.seconds) / (n - 1) * 1e6)
"""


def one(tree: str, key: str, iters: int) -> float:
    out = subprocess.run([sys.executable, "-c", _CHILD.format(tree=tree, key=key, iters=iters)],
                         capture_output=True, text=True, cwd=tree, check=True)
    return float(out.stdout.strip())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iters", type=int, default=20000)
    args = ap.parse_args(argv)
    print("| workload | old µs/trip | new µs/trip | new/old |\n| --- | --- | --- | --- |")
    for key in ("switch", "msr"):
        old, new = [], []
        for _ in range(args.rounds):
            old.append(one(args.old, key, args.iters))
            new.append(one(args.new, key, args.iters))
        o, n = statistics.median(old), statistics.median(new)
        print(f"| {key} | {o:.1f} | {n:.1f} | {n / o:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
