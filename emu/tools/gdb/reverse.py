"""Reverse execution for the gdb stub: `reverse-stepi` and `reverse-continue`, across world switches.

Recording (`monitor record on`) counts instructions with one code hook on every address, and
every `CHECKPOINT_EVERY` instructions takes an in-memory snapshot (emu/core/snapshot.py; RAM kept
as the 64 KiB chunks that differ from the first checkpoint, so a checkpoint costs what the guest
dirtied). A position is the number of instructions executed since recording began; the hook runs
before each instruction, so position N is the state after N instructions, with RIP at the next.

Going back to position P = restore the last checkpoint at or before P, then run forward until the
count reaches P. `reverse-continue` replays each stretch between checkpoints, newest first,
noting where a breakpoint, watchpoint or requested world switch would have stopped a forward run,
and goes to the last such position before the current one (or to the start of the recording,
which gdb reports as "No more reverse-execution history").

This is correct only if running forward from a checkpoint repeats exactly what happened. What
could break that, and how this mode deals with it:
- the guest's clock: the TSC is virtual (machine.tsc, part of every snapshot), so RDTSC repeats;
- output: replayed instructions would print again, so the serial port is muted until the replay
  passes the furthest position ever reached;
- host-dependent instructions: RDRAND/RDSEED (Unicorn returns host random numbers; SVM cannot
  intercept them) — a guest using them is not replayed faithfully;
- code that rewrites itself in the block being executed: Unicorn may restart the writing
  instruction, and whether it does depends on what was translated before, which a restore resets;
  the count can then differ by one around such a write;
- wall-clock stops: a recorded run is never sliced by time (Ctrl-C is polled from the counting
  hook instead), because a time slice that ends early would charge virtual time (the APIC timer's
  instruction-bounded slices) differently on each run;
- the APIC timer's slices are charged in whole when they end (emu/core/irq.py); a slice ended early
  by a checkpoint or a debugger stop is charged in whole as well, so a guest with the APIC timer
  armed can diverge between the recorded run and a replay. Not solved here: see the report.
"""
from __future__ import annotations

import ctypes
import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from unicorn import UC_HOOK_CODE

from emu.core import snapshot
from emu.errors import SvmemuError

if TYPE_CHECKING:
    from emu.core.machine import Machine
    from emu.core.snapshot import Snapshot

CHECKPOINT_EVERY = 20_000        # instructions between two checkpoints
MAX_CHECKPOINTS = 64             # beyond this, every other checkpoint is dropped (the first stays)
POLL_EVERY = 0x3FFF              # instructions between two looks for Ctrl-C (mask)
_CHUNK = 64 << 10

LIVE, REPLAY, SCAN = "live", "replay", "scan"

_libc = ctypes.CDLL(None)
_libc.memcmp.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
_libc.memcmp.restype = ctypes.c_int


def _address_of(data: bytes) -> int:
    """The address of an immutable bytes object's buffer (no copy; it lives as long as `data`)."""
    return ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p).value or 0


@dataclass
class Checkpoint:
    icount: int
    snap: "Snapshot"                          # ram emptied except for the first checkpoint
    chunks: dict[int, bytes] = field(default_factory=dict)   # chunk index -> bytes (vs the first)


class Recorder:
    """Counts, checkpoints and moves the machine along its recorded history.

    `stop(kind, address)` asks the stub to stop a forward run ("step", "bp", "interrupt" or a
    watchpoint's stop-reply text) before the instruction at `address`; `bp_at(address)` tells
    whether a breakpoint is there; `watch_hit()` pops a watchpoint hit; `interrupted()` polls
    Ctrl-C. The stub sets `skip` to ignore the breakpoint it resumes from."""

    def __init__(self, machine: "Machine", *, stop: Callable[[str, int], None],
                 bp_at: Callable[[int], bool], watch_hit: Callable[[], str | None],
                 interrupted: Callable[[], bool]) -> None:
        self.m = machine
        self._stop = stop
        self._bp_at = bp_at
        self._watch_hit = watch_hit
        self._interrupted = interrupted
        self.active = False
        self.icount = 0
        self.high = 0                 # furthest position ever executed (output printed up to it)
        self.mode = LIVE
        self.stop_at: int | None = None
        self.skip: int | None = None
        self.checkpoint_due = False
        self.hits: list[tuple[int, str]] = []
        self.checkpoints: list[Checkpoint] = []
        self._hook: int | None = None
        self._out = None
        self.muted = False

    # ---- on / off -----------------------------------------------------------------------------
    def start(self) -> None:
        if self.active:
            return
        self.icount = self.high = 0
        self.checkpoints = [Checkpoint(0, snapshot.take(self.m))]
        self._hook = self.m.uc.hook_add(UC_HOOK_CODE, self._on_insn)
        self.m.uc.ctl_flush_tb()
        self.active = True

    def stop(self) -> None:
        if not self.active:
            return
        assert self._hook is not None
        self.m.uc.hook_del(self._hook)
        self.m.uc.ctl_flush_tb()
        self._unmute()
        self.active = False
        self.checkpoints = []

    def status(self) -> str:
        if not self.active:
            return "not recording ('monitor record on' starts)"
        kib = sum(len(c) for cp in self.checkpoints for c in cp.chunks.values()) >> 10
        return (f"recording: at instruction {self.icount} of {self.high}; "
                f"{len(self.checkpoints)} checkpoints (every {CHECKPOINT_EVERY} instructions, "
                f"{kib} KiB of RAM changes besides the first)")

    # ---- the hook: before every instruction ---------------------------------------------------
    def _on_insn(self, uc, address: int, size: int, _data: object) -> None:
        mode = self.mode
        n = self.icount
        if mode == LIVE and n >= self.checkpoints[-1].icount + CHECKPOINT_EVERY:
            self.checkpoint_due = True
            self.m.pause("checkpoint")
            return
        if self.stop_at is not None and n >= self.stop_at:
            if mode == LIVE:
                self._stop("step", address)          # a forward stepi completed
            else:
                self.m.pause("replay target")
            return
        if mode == LIVE:
            hit = self._watch_hit()
            if hit is not None:
                self._stop(hit, address)
                return
            if self._bp_at(address):
                if self.skip == address:
                    self.skip = None
                else:
                    self._stop("bp", address)
                    return
            if not n & POLL_EVERY and n and self._interrupted():
                self._stop("interrupt", address)
                return
        elif mode == SCAN:
            hit = self._watch_hit()
            if hit is not None:
                self.hits.append((n, hit))
            if self._bp_at(address):
                self.hits.append((n, "bp"))
        n += 1
        self.icount = n
        if n > self.high:
            self.high = n
            if self.muted:
                self._unmute()

    def world_switch(self, switch: str, what: str) -> None:
        """A world switch a forward run would stop at (the stub asks only for those): `what`
        is vmrun or vmexit, `switch` says which worlds ("L1 -> L2")."""
        if self.mode == SCAN:
            self.hits.append((self.icount, f"world:{what}:{switch}"))

    # ---- checkpoints ---------------------------------------------------------------------------
    def take_checkpoint(self) -> None:
        """RAM as the chunks that differ from the first checkpoint's, found by memcmp in place
        (copying 128 MiB to compare costs ~0.1-0.4 s, mostly page faults of the copy)."""
        self.checkpoint_due = False
        snap = snapshot.take(self.m, ram=False)
        base = self.checkpoints[0].snap.ram
        ram = self.m.ram
        here, there = ctypes.addressof(ctypes.c_char.from_buffer(ram)), _address_of(base)
        chunks = {i // _CHUNK: ram[i:i + _CHUNK] for i in range(0, len(base), _CHUNK)
                  if _libc.memcmp(here + i, there + i, _CHUNK)}
        self.checkpoints.append(Checkpoint(self.icount, snap, chunks))
        if len(self.checkpoints) > MAX_CHECKPOINTS:
            first, rest = self.checkpoints[0], self.checkpoints[1:]
            self.checkpoints = [first] + rest[1::2]

    def _restore(self, cp: Checkpoint) -> None:
        base = self.checkpoints[0].snap.ram
        ram = self.m.ram
        ram[:] = base
        for i, data in cp.chunks.items():
            ram[i * _CHUNK:i * _CHUNK + len(data)] = data
        snapshot.restore(self.m, dataclasses.replace(cp.snap, ram=base), restore_ram=False)
        self.icount = cp.icount
        if self.icount < self.high:
            self._mute()

    # ---- moving in time ------------------------------------------------------------------------
    def goto(self, target: int) -> None:
        """Put the machine at position `target` (0 <= target <= high)."""
        cp = max((c for c in self.checkpoints if c.icount <= target), key=lambda c: c.icount)
        if not cp.icount <= self.icount <= target:
            self._restore(cp)
        self._forward(REPLAY, target)

    def scan(self, begin: Checkpoint, end: int) -> list[tuple[int, str]]:
        """Replay from `begin` to position `end`, returning where forward runs would stop."""
        self._restore(begin)
        self.hits = []
        self._forward(SCAN, end)
        return self.hits

    def _forward(self, mode: str, target: int) -> None:
        if self.icount >= target:
            return
        self.mode, self.stop_at = mode, target
        try:
            result = self.m.run()
        finally:
            self.mode, self.stop_at = LIVE, None
        if result.reason != "pause" or self.icount != target:
            raise ReplayDiverged(f"replay ended with {result.reason} ({result.message}) at "
                                 f"instruction {self.icount}, not {target}")

    # ---- output while replaying --------------------------------------------------------------
    def _mute(self) -> None:
        if not self.muted:
            self._out, self.m.serial.out = self.m.serial.out, None
            self.muted = True

    def _unmute(self) -> None:
        if self.muted:
            self.m.serial.out = self._out
            self.muted = False


class ReplayDiverged(SvmemuError):
    """Running forward from a checkpoint did not reach the recorded position: the guest did
    something this mode cannot repeat (see the module docstring)."""
