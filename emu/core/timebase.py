"""Virtual time: what the machine's TSC counts, and the one table of what each exit costs.

The TSC without its offsets (`Machine.tsc`, the clock every device and timer reads, see
devices/apic.py) moves by:

- one tick per instruction retired, counted by the engine itself (emu/engine/insn_counter.py:
  a count the translated code keeps, exact where a block is left early);
- a fixed cost for each exit the machine handles (EXIT_COSTS below), whether Python or the C
  replay engine handles it, charged before the handler runs so that an RDTSC in the handling
  sees it: time spent outside the guest, as a hypervisor's exits cost real hardware;
- the events it always moved at: RDTSC (+TSC_STEP a read, so two reads always differ), HLT
  (a jump to the next timer deadline), the APIC's and the PM timer's reads, WRMSR to the TSC.

Everything is a count of guest events, never host time, so a run is the same every time, a
snapshot (which stores `Machine.tsc`) resumes the same clock, and `--no-replay` sees the same
TSC values as the C paths: they add the same costs (replay.c `charge`, `fold_insns`).

On the stock Unicorn engine there is no instruction count: time moves only at exits and events,
and by the bounded slices the run loop runs while a timer is armed (emu/core/irq.py).

Costs, in TSC ticks (one tick: one instruction). Real AMD parts pay roughly 1000-2000 cycles
for a VM exit and the VMRUN back (kvm-unit-tests' vmexit_cpuid reports ~1100-1500 on Zen 2-4
under KVM), and a few hundred for the SVM state instructions, which are not exits on hardware
and are intercepted only because L0 emulates SVM for L1. Exits that exist only because of how
svmemu runs L1 (every exception, INTn, RDTSC, DR7 writes, the interrupt window, and the INTR
and NMI exits by which L0 delivers interrupts, even into L2 when L1 does not intercept them)
cost nothing: charging them let an APIC timer with a short period fall due again at every
delivery, so that a guest never ran its handler.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from emu.arch import vmcb as V
from emu.engine import hostvm
from emu.engine.insn_counter import InsnCounter

if TYPE_CHECKING:
    from emu.core.board import Board

VM_EXIT = 1000          # an exit a hypervisor takes on hardware, with the VMRUN back
WORLD_SWITCH = 1000     # VMRUN into a guest; a guest's exit delivered to its hypervisor
SVM_INSTRUCTION = 100   # VMLOAD, VMSAVE, STGI, CLGI: instructions on hardware, not exits
MSR_ACCESS = 100        # RDMSR/WRMSR: L1 runs as on bare metal, where an MSR access (an x2APIC
                        # EOI in a timer handler) takes ~100 cycles, not a VM exit's 1000: at
                        # 1000 a 1000-tick periodic APIC timer fell due again in its own handler

EXIT_COSTS: dict[int, int] = {
    **{V.VMEXIT_CR0_READ + n: VM_EXIT for n in range(16)},
    **{V.VMEXIT_CR0_WRITE + n: VM_EXIT for n in range(16)},
    V.VMEXIT_CPUID: VM_EXIT,
    V.VMEXIT_MSR: MSR_ACCESS,
    V.VMEXIT_IOIO: VM_EXIT,            # port I/O reaches the machine through its IN/OUT hooks
    V.VMEXIT_RDPMC: VM_EXIT,
    V.VMEXIT_INVLPG: VM_EXIT,
    V.VMEXIT_INVLPGA: VM_EXIT,
    V.VMEXIT_PAUSE: VM_EXIT,
    V.VMEXIT_XSETBV: VM_EXIT,
    V.VMEXIT_WBINVD: VM_EXIT,
    V.VMEXIT_INVD: VM_EXIT,
    V.VMEXIT_NPF: WORLD_SWITCH,
    V.VMEXIT_VMRUN: WORLD_SWITCH,
    V.VMEXIT_VMMCALL: WORLD_SWITCH,
    V.VMEXIT_VMLOAD: SVM_INSTRUCTION,
    V.VMEXIT_VMSAVE: SVM_INSTRUCTION,
    V.VMEXIT_STGI: SVM_INSTRUCTION,
    V.VMEXIT_CLGI: SVM_INSTRUCTION,
}

N_INTNO = 0x600         # hook numbers: hostvm.UC_EXIT_BASE + exit code (replay.c's N_INTNO)


def cost_by_intno() -> list[int]:
    """EXIT_COSTS indexed by the INTR hook's number (UC_EXIT_BASE + exit code)."""
    table = [0] * N_INTNO
    for code, cost in EXIT_COSTS.items():
        table[hostvm.UC_EXIT_BASE + code] = cost
    return table


IOIO_COST = EXIT_COSTS[V.VMEXIT_IOIO]


class Timebase:
    """Keeps `Machine.tsc` up with the engine's instruction count. The count is taken into the
    TSC at every Python entry (`sync`, from Machine.replay_sync); while Python is away the C
    replay engine adds what it handles to its own `ticks` word, which `sync` takes too."""

    def __init__(self, machine: "Board") -> None:
        self.m = machine
        self.counter = InsnCounter(machine.uc)
        self.exact = self.counter.available      # instructions are ticks
        self.costs = cost_by_intno()
        self._seen = 0
        self._fx = None
        self._until: int | None = None      # the virtual time a bounded run must stop at
        self.in_run = False                 # between bound() and unbound(): an emu_start

    def attach_c(self, fx) -> None:
        """The C fast-exit words (replay.c `struct fast`): C folds the count and charges exits
        there, so the count already seen lives there too."""
        fx.off_insns = (self.counter.address - fx.env) if self.exact else 0
        fx.insns_seen = self._seen
        fx.ticks = 0
        self._fx = fx

    def sync(self) -> None:
        """Take what time moved while the guest ran into Machine.tsc."""
        n = self.counter.read()
        fx = self._fx
        if fx is not None:
            moved = fx.ticks + n - fx.insns_seen
            fx.ticks = 0
            fx.insns_seen = n
        else:
            moved = n - self._seen
            self._seen = n
        if moved:
            self.m.tsc += moved

    def rebase(self) -> None:
        """Machine.tsc was set from outside (a snapshot restored): time starts from it, and
        what was not taken yet is dropped."""
        n = self.counter.read()
        self._seen = n
        if self._fx is not None:
            self._fx.insns_seen = n
            self._fx.ticks = 0

    def charge(self, intno: int) -> None:
        """The fixed cost of the exit `intno` the machine is about to handle."""
        if intno < N_INTNO:
            self.m.tsc += self.costs[intno]

    def bound(self, count: int, by_time: bool = True) -> int:
        """Run at most `count` ticks of virtual time in the next emu_start (0: no bound).
        Returns the count to give emu_start: 0 when the engine's deadline does it. Ticks that
        are not instructions (exit costs, RDTSC's step, device reads) bring the deadline
        nearer: C does it as it adds them (replay.c `spend`), Python at the end of each of its
        entries (`rebound`). With `by_time` False (the turns of several CPUs, emu/core/smp.py,
        whose quanta and resumed turns count instructions) the deadline is `count` instructions
        retired, whatever the exits cost. Without the engine's count the bound is Unicorn's
        `count=` (every instruction started, exits included: a hook on each)."""
        if not self.exact:
            return count
        self.counter.clear_deadline()
        self.in_run = True
        if count:
            self.counter.set_deadline(self.counter.read() + count)
            if by_time:
                self._until = self.m.tsc + count
                if self._fx is not None:
                    self._fx.deadline_by_time = 1
        return 0

    def bound_by(self, time: int) -> None:
        """From inside a run bounded by time (or unbounded): end it also when virtual time
        reaches `time` (a timer armed by the code running). The bound only moves nearer."""
        if not self.exact or (self._until is not None and self._until <= time):
            return
        self.counter.set_deadline(self.counter.read() + max(0, time - self.m.tsc))
        self.note_bound(time)

    def note_bound(self, time: int) -> None:
        """The engine's deadline now ends the run by `time` at the latest (C moved it, replay.c
        `spend` keeps it in step): Python's own bound follows."""
        self._until = time if self._until is None else min(self._until, time)
        if self._fx is not None:
            self._fx.deadline_by_time = 1

    def bound_passed(self) -> None:
        """C took the timer interrupt the run's bound stood for and ran on without a bound
        (replay.c `replay_deadline`): none is left for `rebound` to restore."""
        self._until = None

    def retired(self) -> int:
        """Instructions retired so far (the engine's count; 0 without it)."""
        return self.counter.read()

    def rebound(self) -> None:
        """End of a Python entry inside a bounded run: the instructions left are the ticks
        left to the bound's time."""
        if self._until is not None:
            self.counter.set_deadline(self.counter.read() + max(0, self._until - self.m.tsc))

    def unbound(self) -> None:
        self.in_run = False
        if self.exact:
            self._until = None
            self.counter.clear_deadline()
            if self._fx is not None:
                self._fx.deadline_by_time = 0
