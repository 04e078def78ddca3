"""What an armed APIC timer costs: the run loop bounds emu_start by the ticks left to the
deadline (emu/core/irq.py), and Unicorn counts instructions with a per-instruction hook of its own.

    python bench/apic_timer.py [ITERATIONS]

One guest loop (3 instructions per iteration, IF=1) runs three ways: no timer; a masked timer
(never bounded: it can interrupt nobody); an unmasked periodic timer whose interrupts the guest
takes. Prints ns per guest instruction for each. Numbers never fail anything.
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from emu.loader.asm import GUESTS_DIR, assemble_source  # noqa: E402
from emu.loader.multiboot import parse_image  # noqa: E402
from emu.core.machine import Machine  # noqa: E402

GUEST = r'''
.include "{prelude}"
main:
    mov r15, 0xfee00000
    mov dword ptr [r15 + 0xf0], 0x1ff
    set_idt_handler 0x40, handler
    mov dword ptr [r15 + 0x3e0], 0xb
    mov dword ptr [r15 + 0x320], {lvt}
    mov dword ptr [r15 + 0x380], {initial}
    sti
    mov ecx, {n}
.Lloop:
    add rax, rcx
    dec ecx
    jnz .Lloop
    cli
    ret
handler:
    mov dword ptr [r15 + 0xb0], 0
    iretq
'''

CASES = {"no timer": (0x10040, 0), "masked timer": (0x30040, 100000),
         "periodic timer, 100k-tick period": (0x20040, 100000)}


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000_000
    with tempfile.TemporaryDirectory() as d:
        for name, (lvt, initial) in CASES.items():
            path = Path(d) / "g.S"
            path.write_text(GUEST.format(prelude=GUESTS_DIR / "prelude.inc", lvt=lvt,
                                         initial=initial, n=n))
            m = Machine(128 << 20)
            m.load_multiboot(parse_image(assemble_source(str(path)), str(path), m.ram_size),
                             str(path))
            t = time.perf_counter()
            res = m.run()
            dt = time.perf_counter() - t
            print(f"{name:36s} {dt:7.3f} s  {dt / (3 * n) * 1e9:6.1f} ns/insn  "
                  f"virtual tsc {m.tsc:>12,}  ({res.reason})")


if __name__ == "__main__":
    main()
