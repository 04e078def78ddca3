"""A live line on a terminal while a long run goes on: elapsed time, instructions and world
switches with their rates, the world running. Only when stderr is a terminal and nothing else
writes there (no -q, no trace on stderr, no gdb stub); it appears after half a second, so short
runs never show it, and disappears before the summary line.

A thread samples counters the run keeps anyway (world switches, replayed ones included; the
instruction count only when the run counts instructions); it never touches the CPU.
"""
from __future__ import annotations

import sys
import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from emu.core.machine import Machine

DELAY = 0.5
PERIOD = 0.25


def wanted(quiet: bool, trace_on_stderr: bool, gdb: bool) -> bool:
    return not quiet and not trace_on_stderr and not gdb and sys.stderr.isatty()


class RunProgress:
    def __init__(self, machine: "Machine") -> None:
        self.m = machine
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._show, daemon=True, name="svmemu-progress")

    def __enter__(self) -> "RunProgress":
        self._began = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    def _switches(self) -> int:
        return sum(ext.switches_so_far() for ext in self.m.extensions)

    def line(self, elapsed: float, insns: int | None, insn_rate: float | None, switches: int,
             switch_rate: float) -> str:
        parts = [f"{elapsed:7.1f} s"]
        if insns is not None:
            parts.append(f"{insns:,} instructions ({_rate(insn_rate or 0)}/s)")
        parts.append(f"{switches:,} world switches ({_rate(switch_rate)}/s)")
        parts.append(f"in {self.m.level()}")
        return "svmemu: " + " | ".join(parts)

    def _show(self) -> None:
        if self._done.wait(DELAY):
            return
        from rich.console import Console
        from rich.live import Live
        from rich.text import Text
        console = Console(file=sys.stderr)
        last_t, last_i, last_s = time.monotonic(), self.m.insns, self._switches()
        with Live(Text(""), console=console, transient=True, auto_refresh=False,
                  redirect_stdout=False, redirect_stderr=False) as live:
            while not self._done.wait(PERIOD):
                now, insns, switches = time.monotonic(), self.m.insns, self._switches()
                dt = max(now - last_t, 1e-6)
                text = self.line(now - self._began,
                                 insns if self.m.insns_counted else None,
                                 (insns - last_i) / dt, switches, (switches - last_s) / dt)
                live.update(Text(text), refresh=True)
                last_t, last_i, last_s = now, insns, switches


def _rate(x: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if x >= scale:
            return f"{x / scale:.1f}{unit}"
    return f"{x:.0f}"
