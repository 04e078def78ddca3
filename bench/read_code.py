"""Micro-benchmark of GuestMemory.read_code under nested paging (the NRIP decode of every L2
exit): the cached path (revalidate the remembered code page by its entries) against the full
2D walk read_code made before (emu.arch.paging.walk_2d through GuestMemory.translate, per page).

It runs workload 4 (world_switch_msr.S) until L2's first intercepted RDMSR reaches read_code,
then, in that exit's real context, times N calls of each way, repeated; CPU time
(time.process_time), median and spread of the repeats, and the ratio, which is what survives a
shared machine. Usage: python -m bench.read_code [--calls N] [--repeat R]
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Any, Callable

from emu.engine.hw_switch import HF2_NPT, OFF_HFLAGS2
from emu.loader.multiboot import parse_image
from emu.core.machine import Machine
from svm_ext.extension import SvmExtension

from bench import workloads
from bench.runners import RAM, guarded_run


def _cpu_per_call(fn: Callable[[], Any], calls: int) -> float:
    t0 = time.process_time()
    for _ in range(calls):
        fn()
    return (time.process_time() - t0) / calls


def measure(calls: int, repeat: int) -> dict[str, list[float]]:
    image = workloads.build(workloads.by_key("msr"), 50)
    m = Machine(RAM, stdout=None, extensions=[SvmExtension()])
    m.load_multiboot(parse_image(image, "bench.bin", RAM), "bench.bin ")
    mem = m.mem
    original = mem.read_code
    times: dict[str, list[float]] = {}

    def probe(rip: int, size: int) -> bytes:
        if not times and mem.ctx.save().u32(OFF_HFLAGS2) & HF2_NPT:
            want = original(rip, size)
            assert mem.read_code_uncached(rip, size) == want
            cases = {
                "cached read_code": lambda: original(rip, size),
                "miss (cache emptied each call)": lambda: (mem._code_cache.clear(),
                                                           original(rip, size)),
                "full 2D walk (before)": lambda: mem.read_code_uncached(rip, size),
            }
            for _ in range(repeat):
                for name, fn in cases.items():
                    times.setdefault(name, []).append(_cpu_per_call(fn, calls))
        return original(rip, size)

    mem.read_code = probe  # type: ignore[method-assign]
    guarded_run(m, 120)
    if not times:
        raise SystemExit("read_code was never called under nested paging")
    return times


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=20_000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args(argv)
    times = measure(args.calls, args.repeat)
    base = statistics.median(times["full 2D walk (before)"])
    print(f"read_code(rip, 15) under NPT, L2 at its RDMSR exit; CPU time per call, "
          f"median of {args.repeat} x {args.calls:,} (min-max)")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"  {name:32s} {med * 1e6:7.2f} us  ({min(ts) * 1e6:.2f}-{max(ts) * 1e6:.2f})"
              f"  {base / med:5.1f}x the full walk's speed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
