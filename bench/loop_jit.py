"""Where an ALU loop's time goes: the host code each JIT runs per iteration (bench/LOOPS.md).

    python bench/loop_jit.py                 # every engine below, ~2 minutes
    python bench/loop_jit.py svmemu-l2 qemu-l2

For each engine this starts the loop workload (bench/guests/l1_loop.S or l2_loop.S, the bytes
bench/run.py times) with an iteration count it never reaches, attaches gdb, finds the translated
block of the loop (the one that jumps back to its own start), prints its host disassembly and
measures the engine's cost per iteration in place: guest RCX (the loop counter, read from the
CPU state at the JIT's env pointer, RBP) against the CPU time of the thread that runs it, over a
few seconds. For Unicorn engines it then rewrites the block's entry check, the 17-byte call of
helper_check_exit_request that unicorn 2.1.4 puts at the start of every block, into the 3-
instruction inline test QEMU emits (load the exit-request word at env-0x10, test, branch) and
measures again: the difference is what that call costs per iteration. The rewritten check never
branches, so a stop request would go unseen; the child is killed right after. This is a probe
for evidence, not something svmemu does.

Needs gdb and ptrace permission over our own children; otherwise it says so and exits 0.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):       # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import runners, workloads  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
NEVER = 10 ** 15                     # iterations: the loop outlives the probe
WINDOW = 4.0                         # seconds of CPU sampled per measurement

# Unicorn 2.1.4's block entry: movabs $uc,%rdi ; xor %esi,%esi ; call helper_check_exit_request
_UC_ENTRY = re.compile(rb"\x48\xbf.{8}[\x31\x33]\xf6\xe8.{4}", re.S)
# QEMU's block entry: mov -0x10(%rbp),%e?? ; test ; jl rel32
_QEMU_ENTRY = re.compile(rb"\x8b[\x45\x5d\x4d\x55\x75\x7d]\xf0\x85.\x0f\x8c", re.S)
# What the probe writes over Unicorn's 17 bytes: mov -0x10(%rbp),%ebx ; test %ebx,%ebx ;
# jl +0 (never leaves: see the module doc) ; a 10-byte NOP.
_INLINE = bytes([0x8B, 0x5D, 0xF0, 0x85, 0xDB, 0x7C, 0x00,
                 0x66, 0x2E, 0x0F, 0x1F, 0x84, 0x00, 0x00, 0x00, 0x00, 0x00])

_CHILD = """
import sys
sys.path.insert(0, {repo!r})
from bench import runners
img = open({image!r}, 'rb').read()
(runners.raw_unicorn if {raw!r} else runners.svmemu)(img)
"""


@dataclass
class Block:
    tid: int
    env: int          # the JIT's CPU state pointer (RBP inside translated code)
    start: int        # host address of the loop's translated block
    code: bytes       # its bytes from `start`


def gdb(pid: int, *cmds: str) -> str:
    args = ["gdb", "-nx", "-batch", "-p", str(pid)]
    for c in cmds:
        args += ["-ex", c]
    return subprocess.run(args, capture_output=True, text=True, timeout=60).stdout


def thread_cpu(pid: int, tid: int) -> float:
    fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def read_bytes(pid: int, addr: int, n: int) -> bytes:
    out = gdb(pid, f"x/{n}xb {addr}")
    rows = re.findall(r"^0x[0-9a-f]+(?: <[^>]*>)?:((?:\s+0x[0-9a-f]{2})+)\s*$", out, re.M)
    return bytes(int(b, 16) for row in rows for b in row.split())


def find_loop_block(pid: int, qemu: bool) -> Block | None:
    """The translated block that some thread is running and that jumps back to its own start."""
    out = gdb(pid, "thread apply all p/x $pc", "thread apply all p/x $rbp")
    threads = list(dict.fromkeys(re.findall(r"\(LWP (\d+)\)", out)))  # listed once per command
    values = [int(v, 16) for v in re.findall(r"\$\d+ = (0x[0-9a-f]+)", out)]
    n = len(threads)
    pcs, rbps = values[:n], values[n:2 * n]
    entry = _QEMU_ENTRY if qemu else _UC_ENTRY
    for tid, pc, rbp in zip(threads, pcs, rbps):
        lo = pc - 0x180
        code = read_bytes(pid, lo, 0x280)
        if not code:
            continue
        starts = [m.start() for m in entry.finditer(code) if m.start() <= pc - lo]
        for s in reversed(starts):
            start = lo + s
            # a jmp rel32 (e9) after the entry whose target is the block start: the chained loop
            for j in range(s, len(code) - 5):
                if code[j] == 0xE9:
                    rel = int.from_bytes(code[j + 1:j + 5], "little", signed=True)
                    if lo + j + 5 + rel == start:
                        return Block(int(tid), rbp, start, code[s:j + 5 + 0x20])
            break
    return None


def rate(pid: int, b: Block) -> float:
    """Seconds of the block's thread per guest iteration, over WINDOW seconds."""
    def sample() -> tuple[float, int]:
        rcx = int.from_bytes(read_bytes(pid, b.env + 8, 8), "little")
        return thread_cpu(pid, b.tid), rcx
    c0, r0 = sample()
    time.sleep(WINDOW)
    c1, r1 = sample()
    return (c1 - c0) / max(1, r0 - r1)


def disassemble(pid: int, b: Block) -> str:
    out = gdb(pid, f"x/40i {b.start}")
    lines, end = [], b.start + len(b.code) - 0x20
    for line in out.splitlines():
        m = re.match(r"\s*(?:=>)?\s*(0x[0-9a-f]+)(?: <[^>]*>)?:\s*(.*)", line)
        if not m:
            continue
        addr = int(m.group(1), 16)
        if addr >= end + 0x18:
            break
        text = re.sub(r"\s+", " ", m.group(2))
        lines.append(f"  +{addr - b.start:#05x}  {text}")
    return "\n".join(lines)


def probe(name: str, image: Path) -> None:
    engine = name.partition("-")[0]
    qemu = engine == "qemu"
    if qemu:
        cmd = [runners.QEMU or "qemu-system-x86_64", *runners.QEMU_ARGS, "-kernel", str(image)]
    else:
        cmd = [sys.executable, "-c", _CHILD.format(repo=str(REPO), image=str(image),
                                                    raw=engine == "raw")]
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        block = None
        deadline = time.monotonic() + 60
        time.sleep(2.0)                     # boot, translate, enter the loop
        while block is None and time.monotonic() < deadline:
            block = find_loop_block(p.pid, qemu)    # None when stopped outside it (a helper)
        print(f"## {name}\n")
        if block is None:
            print("loop block not found (gdb attach refused, or the loop never started)\n")
            return
        print(f"loop block at host {block.start:#x}, env {block.env:#x}, thread {block.tid}\n")
        print("```\n" + disassemble(p.pid, block) + "\n```\n")
        print(f"- as translated: {rate(p.pid, block) * 1e9:.3f} ns/iteration "
              f"(again: {rate(p.pid, block) * 1e9:.3f})")
        if not qemu:
            assert _UC_ENTRY.match(block.code), block.code[:17].hex()
            gdb(p.pid, *[f"set *(unsigned char*){block.start + i} = {v}"
                         for i, v in enumerate(_INLINE)])
            print(f"- entry call rewritten to QEMU's inline check: "
                  f"{rate(p.pid, block) * 1e9:.3f} ns/iteration "
                  f"(again: {rate(p.pid, block) * 1e9:.3f})")
        print()
    finally:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()


ENGINES = ("raw-l1", "svmemu-l1", "qemu-l1", "svmemu-l2", "qemu-l2")


def main(argv: list[str]) -> int:
    names = argv or list(ENGINES)
    bad = [n for n in names if n not in ENGINES]
    if bad:
        print(f"unknown engine {bad}; choose from {', '.join(ENGINES)}", file=sys.stderr)
        return 2
    if shutil.which("gdb") is None:
        print("gdb is not installed: nothing to probe")
        return 0
    with tempfile.TemporaryDirectory(prefix="svmemu-loopjit-") as tmp:
        for name in names:
            work = name.partition("-")[2]
            image = Path(tmp) / f"{work}.bin"
            if not image.exists():
                image.write_bytes(workloads.build(workloads.by_key(work), NEVER))
            probe(name, image)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
