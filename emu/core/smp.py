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
translated blocks and sees only its own stores, so a CPU whose turn follows another CPU's drops
its whole cache before it runs (`Machine.stale_code`): whatever the other CPU wrote, code this CPU
runs is translated from memory as it is now. That costs a re-translation of the working set per
switch (bench/smp.py measures it); it is exact with no tracking of who wrote what.
"""
from __future__ import annotations

from typing import Any, Callable, Protocol, Sequence

from emu.errors import STATUS_HALTED

DEFAULT_QUANTUM = 20_000     # instructions per turn


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


Turn = Callable[[Cpu, int, "int | None"], bool]


class RoundRobin:
    def __init__(self, cpus: Sequence[Cpu], quantum: int) -> None:
        self.cpus = list(cpus)
        self.quantum = quantum

    def run(self, turn: Turn) -> None:
        """Give each started CPU its turn, in order, until the run ends. `turn(cpu, quantum,
        horizon)` runs one pass of that CPU's loop (quantum 0: no instruction bound)."""
        boot = self.cpus[0]
        jumped = False
        try:
            while boot._result is None:
                busy = False
                for i in range(len(self.cpus)):
                    cpu = self.cpus[i]
                    if boot._result is not None:
                        return
                    if not cpu.started:
                        continue            # waiting for SIPI
                    cpu.tsc = max(cpu.tsc, self.now())   # no CPU sees time go backwards
                    quantum, horizon = self._bounds(cpu)
                    boot.running = cpu
                    if not turn(cpu, quantum, horizon):
                        return
                    if cpu.reinit:          # an INIT: the CPU starts over, waiting for SIPI
                        self.cpus[i] = cpu.reinitialised()
                        busy = True
                    elif not cpu.idle_turn:
                        busy = True
                if busy:
                    jumped = False
                    continue
                if boot._result is None:
                    jumped = self._idle(jumped)
        finally:
            boot.running = None

    def _bounds(self, cpu: Cpu) -> tuple[int, int | None]:
        """The quantum and time horizon of `cpu`'s turn. Alone (every other started CPU halted
        with nothing signalled) it runs unbounded, up to the first deadline among the others'
        timers: an IPI or SIPI it sends ends its turn there (Machine.wake)."""
        others = [c for c in self.cpus if c is not cpu and c.started]
        if any(not c.irq.halted or c.apic.signalled() for c in others):
            return self.quantum, None
        times = [t for t in (c.irq.next_deadline() for c in others) if t is not None]
        return 0, (min(times) if times else None)

    def now(self) -> int:
        """The machine's time: the furthest any CPU's clock has gone."""
        return max(cpu.tsc for cpu in self.cpus)

    def _idle(self, jumped: bool) -> bool:
        """Every started CPU is halted: jump to the next deadline that could wake one, or end."""
        halted = [c for c in self.cpus if c.started]
        wakeable = [c for c in halted if c.irq.interruptible()]    # type: ignore[attr-defined]
        times = [t for t in (c.irq.next_deadline() for c in wakeable)   # type: ignore[attr-defined]
                 if t is not None]
        if times and not jumped:
            due = max(min(times), self.now())
            for cpu in halted:
                cpu.tsc = max(cpu.tsc, due)
            return True
        boot = self.cpus[0]
        boot.stop("halt", STATUS_HALTED,
                  "every CPU halted waiting for an interrupt, and no device can raise one"
                  if wakeable else "every CPU halted with interrupts disabled")
        return False
