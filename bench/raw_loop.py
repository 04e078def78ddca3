"""The L1 loop on bare Unicorn, for whichever unicorn version the running Python imports.

svmemu is pinned to unicorn 2.1.4; this exists to compare versions on the same bytes
(bench/LOOPS.md: 2.1.3 runs the loop ~1.6x faster than 2.1.4). Two steps, because only the
first needs svmemu (to assemble and parse the image):

    python bench/raw_loop.py prepare /tmp/l1.pickle             # svmemu's venv
    /tmp/other-venv/bin/python bench/raw_loop.py run /tmp/l1.pickle [--repeat 5]

`run` imports nothing from svmemu. It sets the machine up as bench/runners.raw_unicorn does
(UC_MODE_32, RAM mapped, multiboot EAX/EBX, COM1 always ready, isa-debug-exit stops) and prints
the cost per iteration: (median CPU time of N iterations - median of 1) / (N - 1).
"""
from __future__ import annotations

import argparse
import pickle
import statistics
import sys
import time
from pathlib import Path

RAM = 128 << 20
MULTIBOOT_MAGIC = 0x2BADB002
ITERS = 100_000_000


def prepare(out: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from bench import workloads
    from emu.loader.multiboot import MBI_ADDR, build_mbi, parse_image
    images = {}
    for n in (1, ITERS):
        boot = parse_image(workloads.build(workloads.by_key("l1"), n), "bench.bin", RAM)
        images[n] = ([(a, bytes(d)) for a, d in boot.segments], boot.entry)
    with open(out, "wb") as f:
        pickle.dump({"images": images, "mbi": (MBI_ADDR, build_mbi(RAM, "bench.bin ", MBI_ADDR))}, f)


def run_once(data: dict, n: int) -> float:
    """CPU seconds of one emu_start over the n-iteration image (checks it passed)."""
    from unicorn import UC_ARCH_X86, UC_HOOK_INSN, UC_MODE_32, Uc
    from unicorn.x86_const import UC_X86_INS_IN, UC_X86_INS_OUT, UC_X86_REG_EAX, UC_X86_REG_EBX
    segments, entry = data["images"][n]
    uc = Uc(UC_ARCH_X86, UC_MODE_32)
    uc.mem_map(0, RAM)
    for addr, blob in segments:
        uc.mem_write(addr, blob)
    mbi_addr, mbi = data["mbi"]
    uc.mem_write(mbi_addr, mbi)
    uc.reg_write(UC_X86_REG_EAX, MULTIBOOT_MAGIC)
    uc.reg_write(UC_X86_REG_EBX, mbi_addr)
    exit_value = [None]

    def on_in(uc: Uc, port: int, size: int, _data: object) -> int:
        return 0x60 if port == 0x3FD else 0xFFFFFFFF >> (32 - 8 * size)

    def on_out(uc: Uc, port: int, size: int, value: int, _data: object) -> None:
        if port == 0xF4:
            exit_value[0] = value
            uc.emu_stop()

    uc.hook_add(UC_HOOK_INSN, on_in, None, 1, 0, UC_X86_INS_IN)
    uc.hook_add(UC_HOOK_INSN, on_out, None, 1, 0, UC_X86_INS_OUT)
    t0 = time.process_time()
    uc.emu_start(entry, 0xFFFFFFFF)
    t = time.process_time() - t0
    if exit_value[0] != 0:
        raise SystemExit(f"the guest did not pass (isa-debug-exit {exit_value[0]})")
    return t


def run(path: Path, repeat: int) -> None:
    import unicorn
    with open(path, "rb") as f:
        data = pickle.load(f)
    ones, ns = [], []
    for _ in range(repeat):
        ones.append(run_once(data, 1))
        ns.append(run_once(data, ITERS))
    per = (statistics.median(ns) - statistics.median(ones)) / (ITERS - 1)
    best = (min(ns) - statistics.median(ones)) / (ITERS - 1)
    print(f"unicorn {unicorn.__version__}: {per * 1e9:.3f} ns/iteration "
          f"(best {best * 1e9:.3f}; {repeat} runs of {ITERS:,})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("prepare").add_argument("out", type=Path)
    r = sub.add_parser("run")
    r.add_argument("data", type=Path)
    r.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args()
    if a.cmd == "prepare":
        prepare(a.out)
    else:
        run(a.data, a.repeat)


if __name__ == "__main__":
    main()
