"""L1's x2APIC writes answered in C (emu/engine/apic_fast.c), with devices/apic.py and irq.py
as the reference: a companion of the fast exits (fast_exits.py), armed and disarmed with them.

A kernel that takes a timer or IPI interrupt in a loop (kvm-unit-tests' vmexit_tscdeadline and
vmexit_ipi, an OS's scheduler tick) writes the EOI and often IA32_TSC_DEADLINE or the TPR for
each; in Python each write is an exit of ~50-100 us, in C a few stores. C answers:

- EOI (MSR 0x80B, value 0): the highest in-service vector retires; a level-triggered one (the
  I/O APIC hears its EOI) goes to Python. The window opens only when something waits in IRR,
  as LocalApic.eoi;
- TPR (0x808): the new priority; the window opens when something waits in IRR;
- the ICR (0x830) and SELF_IPI (0x83F), for a fixed interrupt with a valid vector whose only
  target is this APIC (self, or a physical destination naming it; "all" and "all but self"
  when it is the machine's only APIC): IRR, then InterruptController.changed: the window is
  armed and kicked exactly as Python arms it (and emulation stopped where Python stops it), or,
  when the CPU can take an interrupt at the next boundary (IF, no shadow, GIF), where the
  window would exit at once and only stop emulation, emulation is stopped there directly;
- the ICR for a fixed interrupt to one other APIC by its physical ID: Python's delivery would
  end this CPU's turn at once (Machine.wake), so C stops emulation there and the delivery
  itself (ApicBus.deliver) is made when Python takes the state back, before the scheduler or
  anything else looks at the target;
- IA32_TSC_DEADLINE (0x6E0) in TSC-deadline mode, on one CPU with the engine's instruction
  count: a deadline already past fires at once (IRR, the window); a later one makes the run
  in progress end when the machine's time reaches it (the engine's instruction deadline, moved
  nearer as Timebase.bound_by does in Python), so the interrupt point after that stop fires it.

C owns the state it changes while armed: ISR, IRR, TMR, the ICR, the TSC deadline, the TPR
(shared with MOV CR8 in fast_exits.py). Each arming copies them in (only when Python changed
them since), each Python entry takes them back when C changed anything, with the window's
armed flag, a stop C made, and the run's new time bound.

HLT in L1, while armed and the machine's own handler takes it, is answered here too
(Machine._exit_hlt and InterruptController.halt): RIP past it, the interrupt shadow ended, the
CPU halted until the next interrupt point, emulation stopped: one Python entry less for each
wait of an idle CPU.

Armed only when nothing but IRR could ask for the CPU (no NMI, INIT, SMI or ExtINT waits: what
LocalApic.signalled adds), in x2APIC mode, with the MSR owners the interrupt controller
registered, and while the APIC timer either runs in TSC-deadline mode or is idle (a counting
timer fires at the ticks Python makes at each APIC write).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from emu.arch.msrs import MSR_TSC_DEADLINE
from emu.core.devices.apic import (APIC_EOI, APIC_ICR_LO, APIC_LVT_TIMER, APIC_TPR,
                                   ICR_DELIVERY_FIXED, ICR_DELIVERY_MODE_SHIFT, ICR_DEST_LOGICAL,
                                   ICR_SHORTHAND_SHIFT, LVT_MASKED, X2APIC_ICR_WRITABLE,
                                   X2APIC_MSR_BASE, X2APIC_SELF_IPI, ApicBus)
from emu.arch.vmcb import VMEXIT_HLT
from emu.engine import binding, hostvm
from emu.engine.replay import (APIC_DIRTY_DEADLINE, APIC_DIRTY_ICR, APIC_DIRTY_IRR, APIC_DIRTY_ISR,
                               APIC_DIRTY_TMR, APIC_TIMERS_UNKNOWN)
from emu.arch.bits import RFLAGS_IF
from emu.engine.hw_switch import (CPU_INTERRUPT_VIRQ, HF2_GIF, HF_INHIBIT_IRQ, OFF_EFLAGS,
                                  OFF_HFLAGS, OFF_HFLAGS2)
from emu.engine.irq_window import VINTR_INTERCEPT_BIT

if TYPE_CHECKING:
    from emu.core.board import Board

MASK64 = (1 << 64) - 1
_MSRS = {name: X2APIC_MSR_BASE + (reg >> 4) for name, reg in (
    ("msr_tpr", APIC_TPR), ("msr_eoi", APIC_EOI), ("msr_icr", APIC_ICR_LO),
    ("msr_self_ipi", X2APIC_SELF_IPI))}


def _words(value: int, array) -> None:
    for i in range(4):
        array[i] = (value >> (64 * i)) & MASK64


def _join(array) -> int:
    return array[0] | (array[1] << 64) | (array[2] << 128) | (array[3] << 192)


class ApicFast:
    """The Python side: what C may do at each arming, and C's changes taken back."""

    def __init__(self, machine: "Board") -> None:
        self.m = machine
        self.a = None
        e = machine.replay
        if e is None or not machine.fast_exits.env or not machine.timebase.exact:
            return
        a = self.a = e.apic
        a.enabled = 0
        for name, index in _MSRS.items():
            setattr(a, name, index)
        a.msr_tsc_deadline = MSR_TSC_DEADLINE
        a.lvt_masked = LVT_MASKED
        a.icr_writable = X2APIC_ICR_WRITABLE
        a.icr_mode_shift = ICR_DELIVERY_MODE_SHIFT
        a.icr_dest_logical = ICR_DEST_LOGICAL
        a.icr_shorthand_shift = ICR_SHORTHAND_SHIFT
        a.request_addr, a.kick_addr, a.intercept_addr = machine.irq.window.addresses()
        a.request_bit = CPU_INTERRUPT_VIRQ
        a.intercept_bit = VINTR_INTERCEPT_BIT
        a.emu_stop = binding.c_function("uc_emu_stop")
        a.exit_hlt = hostvm.UC_EXIT_BASE + VMEXIT_HLT
        a.hf_inhibit_irq = HF_INHIBIT_IRQ
        env = machine.fast_exits.env
        a.eflags_addr, a.if_mask = env + OFF_EFLAGS, RFLAGS_IF
        a.hflags_addr, a.hflags2_addr, a.hf2_gif = env + OFF_HFLAGS, env + OFF_HFLAGS2, HF2_GIF
        msrs = machine.msrs
        self._owners = {i: msrs.owners.get(i) for i in (*_MSRS.values(), MSR_TSC_DEADLINE)}
        self._generation = -1
        self._owned = False
        self._exits_generation = -1
        self._hlt_ok = 0
        self._isr = self._irr = self._tmr = self._icr = self._deadline = -1   # what C holds
        self._key: tuple = ()
        self._want_timers = False
        self._armed = False
        self._fired = 0
        self.fire_allowed = e.hook_deadline()
        machine.fast_exits.companions.append(self)

    @property
    def answered(self) -> tuple[int, int, int, int]:
        """(EOI, TPR, IPI, TSC deadline) writes answered in C so far."""
        a = self.a
        return (a.eoi, a.tpr, a.icr_sent, a.deadline) if a is not None else (0, 0, 0, 0)

    @property
    def fired_timer(self) -> int:
        """TSC-deadline timer interrupts taken in C at the run's deadline so far."""
        return self.a.fired if self.a is not None else 0

    @property
    def taken_now(self) -> int:
        """Interrupts of TSC deadlines written in the past, taken in C after the WRMSR."""
        return self.a.taken_now if self.a is not None else 0

    def _may_fire(self) -> bool:
        """May C take the TSC-deadline timer's interrupt at the run's deadline? Only where the
        interrupt point would deliver it and do nothing else: one CPU, the APIC software-enabled
        in TSC-deadline mode, no device timer that could fall due at the same time, no
        instruction budget, L1's deliveries in C allowed, and no hypervisor at work (L1's GIF,
        which C paths and replay programs may change, is not the engine's hflags2 GIF that
        apic_fast.c reads; with EFER.SVME clear it is always 1)."""
        m = self.m
        apic = m.apic
        return (self.fire_allowed and m.cpus == 1 and apic.enabled and apic.deadline_mode
                and m._insn_budget is None and m.fast_deliver.allowed and not m.svm_enabled()
                and not any(t.deadline() is not None for t in m.irq.timers))

    @property
    def answered_hlt(self) -> int:
        """HLTs answered in C so far."""
        return self.a.hlts if self.a is not None else 0

    def _owners_ours(self) -> bool:
        msrs = self.m.msrs
        if msrs.generation != self._generation:
            self._generation = msrs.generation
            self._owned = all(msrs.owners.get(i) is o for i, o in self._owners.items())
        return self._owned

    def arm(self) -> None:
        m, a = self.m, self.a
        apic, irq = m.apic, m.irq
        if (not apic.x2apic or apic.wait_for_sipi or not self._owners_ours()
                or (m.fast_exits.signalled      # only then can an NMI, INIT, SMI or ExtINT wait
                    and (apic.signal_pending or apic.extint_requested))):
            a.enabled = 0
            return
        isr, irr, tmr = apic.isr, apic.irr, apic.tmr
        if isr != self._isr:            # the words only when Python changed them since
            _words(isr, a.isr)
            self._isr = isr
        if irr != self._irr:
            _words(irr, a.irr)
            self._irr = irr
        if tmr != self._tmr:
            _words(tmr, a.tmr)
            self._tmr = tmr
        if apic.icr != self._icr:
            a.icr = self._icr = apic.icr
        if apic.tsc_deadline != self._deadline:
            a.tsc_deadline = self._deadline = apic.tsc_deadline
        bus = apic.bus
        apics = bus.apics if bus is not None else (apic,)
        key = (apic.lvt[APIC_LVT_TIMER], apic.timer_running, tuple([x.apic_id for x in apics]))
        if key != self._key:            # what changes only with the APIC's programming
            self._key = key
            deadline_mode = apic.deadline_mode
            a.apic_id = apic.apic_id
            a.lvt_timer = key[0]
            a.deadline_mode = int(deadline_mode)
            a.tick_ok = int(deadline_mode or apic.deadline() is None)
            a.deadline_ok = int(m.cpus == 1)
            a.one_cpu = int(len(apics) == 1)
            a.others = self._others(apic, apics)
        unbounded = irq.unbounded       # C reads the timers only while this holds
        a.unbounded = int(unbounded)
        if not unbounded:
            a.timers_pending = 0
        elif self._want_timers:         # a write once wanted them: look each time from now on
            a.timers_pending = int((not apic.deadline_mode and apic.deadline() is not None)
                                   or any(t.deadline() is not None for t in irq.timers))
        else:
            a.timers_pending = APIC_TIMERS_UNKNOWN
        router = m.router
        a.always_stop = int(router is not None and router.physical_if() is not None)
        if m.exits_generation != self._exits_generation:
            self._exits_generation = m.exits_generation
            self._hlt_ok = int(m.halts_itself())
        a.hlt_ok = self._hlt_ok
        a.fire_ok = int(self._may_fire())
        a.changed = a.window_armed = a.kicked = a.deadline_moved = a.sent = a.halted = 0
        a.dirty = a.wanted_timers = a.take_vector = 0
        a.enabled = 1
        self._armed = True

    @staticmethod
    def _others(apic, apics) -> int:
        """Bit n: exactly one other APIC on the bus has the ID n (n < 64)."""
        seen = dup = 0
        for other in apics:
            if other is not apic and other.apic_id < 64:
                bit = 1 << other.apic_id
                dup |= seen & bit
                seen |= bit
        return seen & ~dup & ~(1 << apic.apic_id if apic.apic_id < 64 else 0)

    def disarm(self) -> None:
        a = self.a
        if not self._armed:
            return
        self._armed = False
        a.enabled = 0
        if a.wanted_timers:
            self._want_timers = True
        if not a.changed:
            return
        m = self.m
        apic, irq = m.apic, m.irq
        if a.fired != self._fired:      # the timer fired in C: the run's bound has passed
            self._fired = a.fired
            m.timebase.bound_passed()
            irq.timer_taken()
        dirty = a.dirty
        if dirty:
            if dirty & APIC_DIRTY_ISR:
                apic.isr = self._isr = _join(a.isr)
            if dirty & APIC_DIRTY_IRR:
                apic.irr = self._irr = _join(a.irr)
            if dirty & APIC_DIRTY_TMR:
                apic.tmr = self._tmr = _join(a.tmr)
            if dirty & APIC_DIRTY_ICR:
                apic.icr = self._icr = a.icr
            if dirty & APIC_DIRTY_DEADLINE:
                apic.tsc_deadline = self._deadline = a.tsc_deadline
        if a.sent:                      # a fixed IPI to another CPU: as ApicBus.send
            a.sent = 0
            targets = [t for t in apic.bus.apics if t is not apic and t.apic_id == a.sent_dest]
            ApicBus.deliver(ICR_DELIVERY_FIXED, a.sent_vector, targets)
        if a.halted:
            irq.halted = True
        if a.window_armed:
            irq.window.armed = True
        if a.kicked:
            irq.note_kick()
        if a.deadline_moved:
            m.timebase.note_bound(a.bound_time)
            irq.bounded()
