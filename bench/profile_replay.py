"""Where a replayed world switch spends its time: `perf record` (software clock) over the VMMCALL
round-trip workload, samples grouped by what they are doing.

The Python profile (bench/profile_switch.py) no longer sees a repeated round trip: it runs in
C (emu/engine/replay.c). This samples the whole process with perf, subtracts nothing, and attributes
each sample by symbol; the run is long enough (400,000 round trips) that start-up (assembling,
imports) is a few percent. Needs `perf` (Debian: linux-perf); prints a markdown table.

    python -m bench.profile_replay [--trips N] [--workload switch|msr]
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from collections import Counter

# (group, what it is, symbol substrings that belong to it, what would remove it); first match wins.
GROUPS: tuple[tuple[str, str, tuple[str, ...], str], ...] = (
    ("TLB flush", "memset of the softmmu TLB and the jump cache, twice per round trip "
     "(VMRUN and #VMEXIT: Unicorn's TLB is not tagged by ASID)",
     ("memset", "tlb_flush"),
     "a TLB tagged by ASID in Unicorn (an upstream change); flushing only the MMU indexes in "
     "use would halve it but uc_ctl flushes all"),
    ("context copies", "uc_context_save/restore (5.5 KiB each), L1's host state and vmcb12 "
     "copies in the programs", ("memmove", "memcpy", "uc_context"),
     "patching the live CPU state in place (its address is known: emu/engine/irq_window.py) instead of "
     "save/restore; keeping only the host-state regions a #VMEXIT reads"),
    ("guards", "the programs' comparisons (memcmp) and the interpreter loop",
     ("memcmp", "replay_intr"),
     "fewer, larger compares (vmcb12's ranges are ~1.5 KiB); hashing instead is not exact"),
    ("TLB refill", "Unicorn refilling the TLB after the flush: page walks, nested walks",
     ("tlb_fill", "tlb_set_page", "flatview", "address_space", "ldq_phys", "ldl_phys",
      "get_physical_address", "qemu_map_ram", "iotlb", "mmu_translate", "load_helper",
      "store_helper", "_mmu_"), "goes with the flush"),
    ("finding code", "looking up translated blocks again after the flush cleared the jump "
                     "cache", ("tb_htable", "tb_lookup", "tb_tc_cmp", "qht", "tb_find",
                               "g_tree", "lookup_tb"), "goes with the flush"),
    ("raising the exit", "the intercept check, longjmp out of the block, restoring the PC",
     ("svm", "cpu_loop_exit", "restore_state", "cpu_handle", "raise_", "longjmp", "sigsetjmp",
      "vmexit", "check_intercept"), "Unicorn's own cost of an intercept: stays"),
    ("register API", "uc_reg_read/write of RFLAGS, DR6, DR7", ("reg_read", "reg_write",
                                                                "cpu_compute_eflags"),
     "writing the split EFLAGS fields directly (pinned offsets)"),
    ("Unicorn loop", "cpu_exec and the rest of Unicorn", ("unicorn", "cpu_exec", "helper_"),
     "stays"),
    ("Python", "start-up, the run loop, the first switches (recorded in Python)",
     ("python", "Py", "_Py"), "not per round trip: start-up and the first two switches"),
)


def classify(dso: str, symbol: str) -> str:
    for group, _, keys, _ in GROUPS:
        if any(k in symbol for k in keys) or (group == "Python" and "python" in dso):
            return group
    return "Unicorn loop" if "unicorn" in dso else "other (kernel, libc, JIT code)"


def profile(workload: str, trips: int) -> tuple[Counter, int]:
    perf = shutil.which("perf")
    if perf is None:
        raise SystemExit("perf is not installed (Debian: apt-get install linux-perf)")
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "perf.data")
        code = ("from bench import workloads\n"
                "from emu.loader.multiboot import parse_image\n"
                "from emu.core.machine import Machine\n"
                "from svm_ext.extension import SvmExtension\n"
                f"w = workloads.by_key({workload!r})\n"
                f"image = parse_image(workloads.build(w, {trips}), 'bench', 128 << 20)\n"
                "m = Machine(128 << 20, stdout=None, extensions=[SvmExtension()])\n"
                "m.load_multiboot(image, 'bench ')\n"
                "r = m.run(timeout=600)\n"
                "assert r.status == workloads.EXIT_PASS_STATUS, r\n")
        subprocess.run([perf, "record", "-q", "-e", "cpu-clock", "-F", "4000", "-o", data,
                        sys.executable, "-c", code], check=True, stdout=subprocess.DEVNULL)
        out = subprocess.run([perf, "report", "-i", data, "--no-children", "--sort",
                              "dso,symbol", "--stdio", "-q", "-g", "none"],
                             check=True, capture_output=True, text=True).stdout
    counts: Counter = Counter()
    total = 0
    for line in out.splitlines():
        parts = line.split()
        if len(parts) < 4 or not parts[0].endswith("%"):
            continue
        share = float(parts[0].rstrip("%"))
        dso, symbol = parts[1], " ".join(parts[3:])
        counts[classify(dso, symbol)] += share
        total += 1
    return counts, total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trips", type=int, default=400_000)
    ap.add_argument("--workload", choices=("switch", "msr"), default="switch")
    args = ap.parse_args()
    counts, _ = profile(args.workload, args.trips)
    for row in rows(counts, None):
        print("| " + " | ".join(row) + " |")


def rows(counts: Counter, trip_us: float | None) -> list[list[str]]:
    """Table rows: part, share, ≈ µs per round trip (the share of the samples outside the
    Python row, times `trip_us`), what it is, what would remove it."""
    info = {g: (w, fix) for g, w, _, fix in GROUPS}
    per_trip = 100.0 - counts.get("Python", 0.0)
    out = []
    for group, share in counts.most_common():
        us = ("-" if trip_us is None or group == "Python" or per_trip <= 0
              else f"{share / per_trip * trip_us:.2f}")
        what, fix = info.get(group, ("", ""))
        out.append([group, f"{share:.1f}%", us, what, fix])
    return out


HEADER = ["part", "share of samples", "≈ µs per round trip", "what it is", "what would remove it"]


if __name__ == "__main__":
    main()
