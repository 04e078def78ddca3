"""What several CPUs cost (emu/core/smp.py).

    python bench/smp.py [ITERATIONS]

1. An idle second CPU on a one-CPU workload: an ALU loop (3 instructions an iteration) with
   -smp 1 and with -smp 2 whose AP never leaves wait-for-SIPI (the boot CPU runs alone: no
   quantum). ns per iteration each.
2. Switches: guests/smp.S's IPI ping-pong between the boot CPU and CPU 1 (-smp 4), with PINGS
   round trips against 1; the difference per round trip (each is two IPIs and at least four
   turn switches; each switch drops the code other CPUs overwrote, engine patch 0007, or on the
   stock engine all the incoming CPU's code).
3. Every CPU busy: guests/smp.S's LOCK INC loop run by all 4 CPUs at once (quantum turns, the
   engine's instruction deadline; Unicorn's per-instruction count bound on the stock engine),
   ns per loop iteration of one CPU.

Boot costs cancel (each case is timed at two sizes and subtracted). A guest that does not pass
its own checks is reported, not timed. Numbers never fail anything.
"""
from __future__ import annotations

import re
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from emu.core.machine import Machine  # noqa: E402
from emu.loader.asm import GUESTS_DIR, assemble_source  # noqa: E402
from emu.loader.multiboot import parse_image  # noqa: E402
from svm_ext.extension import SvmExtension  # noqa: E402

LOOP = r'''
.include "{prelude}"
main:
    mov ecx, {n}
.Lloop:
    add rax, rcx
    dec ecx
    jnz .Lloop
    ret
'''


def _run(source: str, cpus: int, nested: bool = False) -> float:
    """CPU seconds of one run of `source` (assembly text) on `cpus` CPUs (`nested`: with SVM,
    which guests/smp.S's hypervisor part needs); raises if it fails."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "g.S"
        path.write_text(source)
        image = parse_image(assemble_source(str(path)), str(path), 128 << 20)
    m = Machine(128 << 20, cpus=cpus, extensions=[SvmExtension()] if nested else [])
    m.load_multiboot(image, "bench")
    t = time.process_time()
    res = m.run(timeout=600)
    spent = time.process_time() - t
    out = bytes(m.serial.output).decode()
    if res.reason != "exit" or res.status != 1 or "not ok" in out:
        raise RuntimeError(f"guest failed ({res}): {out[-300:]}")
    return spent


def _smp_guest(**equs: int) -> str:
    text = (GUESTS_DIR / "smp.S").read_text().replace('.include "prelude.inc"',
                                                        f'.include "{GUESTS_DIR / "prelude.inc"}"')
    for name, value in equs.items():
        text, n = re.subn(rf"\.equ {name}, \d+", f".equ {name}, {value}", text)
        assert n == 1, name
    return text


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000_000
    prelude = GUESTS_DIR / "prelude.inc"
    loop = {k: LOOP.format(prelude=prelude, n=k) for k in (1, n)}
    for cpus in (1, 2):
        t = _run(loop[n], cpus) - _run(loop[1], cpus)
        print(f"ALU loop, -smp {cpus}{' (AP waiting for SIPI)' if cpus > 1 else ''}: "
              f"{t / n * 1e9:.2f} ns/iteration")
    pings = max(50, n // 20_000)
    t = _run(_smp_guest(PINGS=pings), 4, True) - _run(_smp_guest(PINGS=1), 4, True)
    print(f"IPI ping-pong, -smp 4: {t / (pings - 1) * 1e6:.1f} us per round trip "
          f"({pings - 1} round trips)")
    incs = max(2000, n // 20)
    t = _run(_smp_guest(INCS=incs), 4, True) - _run(_smp_guest(INCS=2000), 4, True)
    print(f"LOCK INC loop on all 4 CPUs: {t / (4 * (incs - 2000)) * 1e9:.1f} ns per iteration "
          "of one CPU")


if __name__ == "__main__":
    main()
