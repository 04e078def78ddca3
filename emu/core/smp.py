"""Several CPUs (`-smp N`): deterministic round-robin interleaving in virtual time.

Each CPU is its own Unicorn engine over the one guest RAM (emu/core/machine.py builds them). They
take turns in a fixed order, each turn one pass of its run loop bounded by the *quantum*, an
instruction count (a turn also ends where that CPU's emulation stops for an event: an exception
delivered, HLT, a world switch handled in Python, an IPI it sends to another CPU). A CPU that
runs alone (every other one halted or waiting for SIPI, as application processors mostly idle)
has no quantum: it runs at full speed up to the next timer deadline of the others, or until it
sends them an interrupt. Which instructions run in a turn depends only on the guest's state,
never on the host, so a run is the same every time.

Time. Each CPU keeps the machine's virtual time as it has seen it (`tsc`; devices/apic.py explains
the clock): a turn that runs its quantum out adds the quantum to it, and each turn starts at the
furthest time any CPU has reached, so what one CPU did at time t is seen by another at t or later
(a delay measured on one CPU and waited for on another agrees). A WRMSR to the TSC moves that
CPU's TSC only (`tsc_adjust`), not time. A halted CPU takes no instructions: at its turn its
timers fire and an interrupt wakes it. When every started CPU is halted, time jumps to the
earliest deadline among those that an interrupt could wake; if no timer is armed (or one jump
woke nobody), the run ends as a one-CPU run does at a HLT no device can end (status 0).

Exactness. Instructions of one turn are atomic with respect to every other CPU (LOCKed ones
included), since no other CPU runs meanwhile. Translated code: each engine has its own cache of
translated blocks and sees only its own stores. The engines of a machine form a code group
(emu/engine/code_group.py, engine patch 0007): stores by any CPU, and the emulator's own writes
through GuestMemory, to a page any CPU translated code from are logged, and a CPU's turn starts
by dropping its blocks on the pages others wrote since its last turn, so code this CPU runs is
translated from memory as it is now. On the stock engine (no groups) a CPU whose turn follows
another CPU's drops its whole cache instead (`Machine.stale_code`), as a snapshot restore does.
A turn's quantum is counted by the engine's instruction deadline (retired instructions, as the
virtual TSC counts them); on the stock engine by Unicorn's `count=` (a hook per instruction).

Position. The scheduler's place (`Position`: whose turn, the round so far, and a turn cut short
by the end of a run) lives on the boot CPU and outlives a run: a run that stops in the middle of
a turn (`--max-insns`, `--snapshot-at`, a debugger's or the API's pause) and is continued --
by another `run`, or from a snapshot, which holds the position -- finishes that turn with the
instructions its bound had left, at the same virtual time, with no interrupt point in between,
and the next CPU's turn follows as it would have. The instructions a stopped turn ran are known
only when the run counts them (`--max-insns`, `--count-insns`, `--snapshot-at`); a run that
counts nothing and is paused mid-turn ends that turn there.
"""
from __future__ import annotations

from typing import Any, Callable, Protocol, Sequence

from emu.errors import STATUS_HALTED, STATUS_LIMIT

DEFAULT_QUANTUM = 20_000     # instructions per turn


class Position:
    """Where the round robin stands between two runs (see the module docstring)."""

    __slots__ = ("index", "busy", "jumped", "left", "bound")

    def __init__(self, index: int = 0, busy: bool = False, jumped: bool = False,
                 left: int | None = None, bound: int = 0) -> None:
        self.index = index      # the CPU whose turn comes next (or was cut short)
        self.busy = busy        # a CPU of this round has run
        self.jumped = jumped    # the last all-halted jump in time woke nobody yet
        self.left = left        # a turn cut short: the instruction bound left (0: unbounded)
        self.bound = bound      # that turn's whole bound, the virtual time it takes if run out

    def state(self) -> dict[str, Any]:
        return {"index": self.index, "busy": self.busy, "jumped": self.jumped,
                "left": self.left, "bound": self.bound}

    @classmethod
    def from_state(cls, state: dict[str, Any], cpus: int) -> "Position":
        pos = cls(index=int(state["index"]), busy=bool(state["busy"]),
                  jumped=bool(state["jumped"]),
                  left=None if state["left"] is None else int(state["left"]),
                  bound=int(state["bound"]))
        if not 0 <= pos.index < cpus or (pos.left is not None and not 0 <= pos.left <= pos.bound):
            raise ValueError(f"scheduler position {state} does not fit {cpus} CPUs")
        return pos


class Cpu(Protocol):
    """What the scheduler uses of each CPU's machine."""
    tsc: int
    started: bool
    idle_turn: bool
    reinit: bool
    running: "Cpu | None"
    irq: Any
    apic: Any
    _result: object

    def stop(self, reason: str, status: int, message: str) -> None: ...
    def reinitialised(self) -> "Cpu": ...


# turn(cpu, quantum, horizon, resume): one pass of that CPU's loop. `resume` is the position
# when that pass finishes a turn cut short; the pass sets `position.left` when it is cut short.
Turn = Callable[[Cpu, int, "int | None", "Position | None"], bool]


class RoundRobin:
    def __init__(self, cpus: Sequence[Cpu], quantum: int, position: Position | None = None,
                 only: int | None = None) -> None:
        """`only`: a debugger steps this CPU while the others stay where they are."""
        self.cpus = list(cpus)
        self.quantum = quantum
        self.position = position if position is not None else Position()
        self.only = only

    def run(self, turn: Turn) -> None:
        """Give each started CPU its turn, in order, from the saved position until the run
        ends (quantum 0: no instruction bound)."""
        boot = self.cpus[0]
        pos = self.position
        try:
            while boot._result is None:
                while pos.index < len(self.cpus):
                    i = pos.index
                    cpu = self.cpus[i]
                    if boot._result is not None:
                        return
                    if not cpu.started or self.only not in (None, i):
                        pos.index += 1      # waiting for SIPI (or held by a debugger)
                        continue
                    resume = Position(**pos.state()) if pos.left is not None else None
                    quantum, horizon = 0, None
                    if resume is None:
                        now = self.now()                     # no CPU sees time go backwards
                        if cpu.irq.halted and now > cpu.tsc:  # a halted CPU's clock stood still
                            cpu.irq.halted_ticks += now - cpu.tsc
                        cpu.tsc = max(cpu.tsc, now)
                        quantum, horizon = self._bounds(cpu)
                    pos.left = None
                    boot.running = cpu
                    if not turn(cpu, quantum, horizon, resume):
                        return
                    if pos.left is not None:   # cut short by the end of the run: resumed later
                        pos.busy = True
                        return
                    pos.index += 1
                    if cpu.reinit:          # an INIT: the CPU starts over, waiting for SIPI
                        self.cpus[i] = cpu.reinitialised()
                        pos.busy = True
                    elif not cpu.idle_turn:
                        pos.busy = True
                pos.index = 0
                busy, pos.busy = pos.busy, False
                if busy:
                    pos.jumped = False
                    continue
                if self.only is not None:   # the CPU a debugger steps alone is halted
                    boot.stop("pause", STATUS_LIMIT, f"CPU {self.only} is halted")
                    return
                if boot._result is None:
                    pos.jumped = self._idle(pos.jumped)
        finally:
            boot.running = None

    def _bounds(self, cpu: Cpu) -> tuple[int, int | None]:
        """The quantum and time horizon of `cpu`'s turn. Alone (every other started CPU halted
        with nothing signalled) it runs unbounded, up to the first deadline among the others'
        timers: an IPI or SIPI it sends ends its turn there (Machine.wake)."""
        times = []
        for c in self.cpus:
            if c is cpu or not c.started:
                continue
            if not c.irq.halted or c.apic.signalled():
                return self.quantum, None
            t = c.irq.next_deadline()
            if t is not None:
                times.append(t)
        return 0, (min(times) if times else None)

    def now(self) -> int:
        """The machine's time: the furthest any CPU's clock has gone."""
        return max([cpu.tsc for cpu in self.cpus])

    def _idle(self, jumped: bool) -> bool:
        """Every started CPU is halted: jump to the next deadline that could wake one, or end."""
        halted = [c for c in self.cpus if c.started]
        wakeable = [c for c in halted if c.irq.interruptible()]    # type: ignore[attr-defined]
        times = [t for t in (c.irq.next_deadline() for c in wakeable)   # type: ignore[attr-defined]
                 if t is not None]
        if times and not jumped:
            due = max(min(times), self.now())
            for cpu in halted:
                if due > cpu.tsc:
                    cpu.irq.halted_ticks += due - cpu.tsc
                cpu.tsc = max(cpu.tsc, due)
            return True
        boot = self.cpus[0]
        boot.stop("halt", STATUS_HALTED,
                  "every CPU halted waiting for an interrupt, and no device can raise one"
                  if wakeable else "every CPU halted with interrupts disabled")
        return False
