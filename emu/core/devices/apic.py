"""The local APIC (AMD APM vol. 2, ch. 16): xAPIC MMIO, x2APIC MSRs, self-IPIs and the timer.

Interrupts are accepted into IRR; the machine asks `pending()` for the vector to deliver
(the highest IRR vector whose priority class is above PPR) and calls `acknowledge()` when the CPU
takes it (IRR -> ISR); EOI retires the highest ISR vector.

The clock. The timer counts the machine's virtual time, `machine.tsc` (the TSC without its
offset), divided by the divide configuration: one timer tick per TSC tick at divide-by-1. That
time advances only at points the machine sees anyway (see Machine.run): each RDTSC/RDTSCP/RDMSR
of the TSC, each read of the current-count register (TIME_PER_CCR_READ, so a polling loop makes
progress), HLT (which jumps to the next deadline), and, while the timer is armed, the run loop
runs the guest in slices bounded by an instruction count, each slice worth as many ticks as it may
execute instructions. So a given guest sees the same counts and the same interrupt points on
every run; nothing depends on the host's speed.

Registers not modelled (thermal, performance-counter, LINT0/1 and error LVTs) hold what is
written; nothing raises them.

IPIs (APM vol. 2, 16.5). A write of the ICR's low half sends one: the destination (shorthand,
physical or logical destination mode, flat or cluster model, broadcast) is resolved against every
APIC on the `ApicBus` (one per CPU: `-smp N` gives APIC IDs 0..N-1), then each target receives it
by its delivery mode, as hardware delivers it to the CPUs that exist. On a one-CPU machine
"all excluding self" and a destination naming another APIC reach no one. What reaches a CPU:
  * fixed: IRR; lowest priority: the target with the lowest arbitration priority (TPR, then
    APIC ID) accepts it as a fixed interrupt;
  * NMI: a pending NMI;
  * INIT (level assert): a pending INIT signal; INIT level de-assert is a synchronisation
    message that modern processors ignore; the CPU side (emu/core/irq.py) decides what the INIT
    does (an SVM #VMEXIT(INIT) when intercepted, held while GIF=0, #SX when VM_CR.R_INIT is set,
    else the boot CPU restarts the machine and an application processor waits for SIPI);
  * SMI: a pending SMI, taken by the CPU side likewise;
  * start-up (SIPI): only a processor waiting for SIPI acts on it (`on_startup` starts it at
    vector * 0x1000 in real mode); any other ignores it, as hardware does.
An application processor waits for SIPI from power-on (as after the firmware's INIT). While it
waits, an INIT changes nothing, NMIs and SMIs are dropped, and fixed interrupts stay in IRR
until it runs with interrupts enabled.
Delivery modes 3 (remote read, gone on current processors) and 7 (reserved) stop the run with
"unsupported:".
"""
from __future__ import annotations

from typing import Callable, Iterable

from emu.errors import Unsupported
from emu.core.devices.base import PortDevice

# IA32_APIC_BASE (MSR 0x1B) bits.
APIC_BASE_BSP = 1 << 8
APIC_BASE_EXTD = 1 << 10           # x2APIC mode
APIC_BASE_EN = 1 << 11             # APIC global enable
APIC_BASE_ADDR_MASK = ~0xFFF
APIC_DEFAULT_BASE = 0xFEE00000
APIC_MMIO_SIZE = 0x1000

# Register offsets in the xAPIC page; the x2APIC MSR is X2APIC_MSR_BASE + (offset >> 4).
APIC_ID = 0x020
APIC_VERSION = 0x030
APIC_TPR = 0x080
APIC_APR = 0x090
APIC_PPR = 0x0A0
APIC_EOI = 0x0B0
APIC_RRD = 0x0C0
APIC_LDR = 0x0D0
APIC_DFR = 0x0E0
APIC_SVR = 0x0F0
APIC_ISR = 0x100                   # 8 registers, 0x10 apart
APIC_TMR = 0x180
APIC_IRR = 0x200
APIC_ESR = 0x280
APIC_ICR_LO = 0x300
APIC_ICR_HI = 0x310
APIC_LVT_TIMER = 0x320
APIC_LVT_THERMAL = 0x330
APIC_LVT_PERF = 0x340
APIC_LVT_LINT0 = 0x350
APIC_LVT_LINT1 = 0x360
APIC_LVT_ERROR = 0x370
APIC_TIMER_ICR = 0x380             # initial count
APIC_TIMER_CCR = 0x390             # current count
APIC_TIMER_DCR = 0x3E0             # divide configuration
X2APIC_SELF_IPI = 0x3F0            # x2APIC only (MSR 0x83F)

X2APIC_MSR_BASE = 0x800
X2APIC_MSR_ICR = 0x830             # 64-bit ICR in x2APIC mode
X2APIC_ICR_WRITABLE = 0xFFFFFFFF_000CCFFF   # destination, shorthand, level, mode, vector

APIC_VERSION_VALUE = 0x00050010    # version 0x10 (integrated APIC), max LVT entry 5
SVR_APIC_ENABLED = 1 << 8
LVT_MASKED = 1 << 16
LVT_TIMER_MODE_SHIFT = 17
LVT_TIMER_ONE_SHOT, LVT_TIMER_PERIODIC, LVT_TIMER_TSC_DEADLINE = 0, 1, 2
LVT_DELIVERY_STATUS = 1 << 12
LVT_DELIVERY_MODE_SHIFT = 8
LVT_DELIVERY_EXTINT = 7
# What SeaBIOS leaves in the BSP's APIC (measured under QEMU 7.2): software-enabled, LINT0 the
# 8259's virtual wire (ExtINT, level), LINT1 the NMI pin (NMI, level).
FIRMWARE_SVR = 0x1FF
FIRMWARE_LINT0 = 0x8700
FIRMWARE_LINT1 = 0x8400
ICR_DELIVERY_MODE_SHIFT = 8
ICR_DELIVERY_FIXED = 0
ICR_DELIVERY_LOWEST = 1
ICR_DELIVERY_SMI = 2
ICR_DELIVERY_REMOTE_READ = 3
ICR_DELIVERY_NMI = 4
ICR_DELIVERY_INIT = 5
ICR_DELIVERY_STARTUP = 6
DELIVERY_EXTINT = 7                # I/O APIC and LVT only; reserved in the ICR
ICR_DEST_LOGICAL = 1 << 11
ICR_LEVEL_ASSERT = 1 << 14
ICR_TRIGGER_LEVEL = 1 << 15
ICR_SHORTHAND_SHIFT = 18
ICR_DEST_NONE, ICR_DEST_SELF, ICR_DEST_ALL, ICR_DEST_OTHERS = 0, 1, 2, 3
ESR_SEND_ILLEGAL_VECTOR = 1 << 5
ESR_RECV_ILLEGAL_VECTOR = 1 << 6

XAPIC_BROADCAST = 0xFF
X2APIC_BROADCAST = 0xFFFFFFFF
DFR_MODEL_FLAT = 0xF

TIME_PER_CCR_READ = 1000           # virtual TSC ticks one current-count read takes (= RDTSC's)

# Writable LVT bits; the timer's mode field (bits 18:17) includes TSC-deadline mode (10b), which
# CPUID 1 ECX bit 24 reports (emu/core/irq.py).
_LVT_OFFSETS = (APIC_LVT_TIMER, APIC_LVT_THERMAL, APIC_LVT_PERF, APIC_LVT_LINT0, APIC_LVT_LINT1,
                APIC_LVT_ERROR)
_LVT_WRITABLE = {APIC_LVT_TIMER: 0x700FF, APIC_LVT_THERMAL: 0x107FF, APIC_LVT_PERF: 0x107FF,
                 APIC_LVT_LINT0: 0x1A7FF, APIC_LVT_LINT1: 0x1A7FF, APIC_LVT_ERROR: 0x100FF}
_READ_ONLY = frozenset({APIC_VERSION, APIC_PPR, APIC_APR, APIC_RRD, APIC_TIMER_CCR}
                       | {APIC_ISR + 0x10 * i for i in range(8)}
                       | {APIC_TMR + 0x10 * i for i in range(8)}
                       | {APIC_IRR + 0x10 * i for i in range(8)})


class ApicError(Exception):
    """An access the architecture answers with #GP (x2APIC MSRs)."""


def divisor(dcr: int) -> int:
    """Divide configuration bits 3,1:0 -> 2, 4, ..., 128, and 0b111 -> 1."""
    code = ((dcr >> 1) & 4) | (dcr & 3)
    return 1 if code == 7 else 2 << code


class ApicBus:
    """The APICs of the machine and the message delivery between them: a destination set is
    resolved here, then each target receives the message."""

    def __init__(self) -> None:
        self.apics: list["LocalApic"] = []

    def attach(self, apic: "LocalApic") -> None:
        if apic.bus is not None and apic.bus is not self:
            apic.bus.apics.remove(apic)
        self.apics.append(apic)
        apic.bus = self

    def targets(self, source: "LocalApic", icr: int) -> list["LocalApic"]:
        """The APICs an IPI from `source` with this ICR reaches (APM vol. 2, 16.5, 16.6)."""
        shorthand = (icr >> ICR_SHORTHAND_SHIFT) & 3
        if shorthand == ICR_DEST_SELF:
            return [source]
        if shorthand == ICR_DEST_ALL:
            return list(self.apics)
        if shorthand == ICR_DEST_OTHERS:
            return [a for a in self.apics if a is not source]
        dest = icr >> 32 if source.x2apic else (icr >> 56) & 0xFF
        return self.match(dest, bool(icr & ICR_DEST_LOGICAL), source.x2apic)

    def match(self, dest: int, logical: bool, x2apic: bool | None = None) -> list["LocalApic"]:
        """The APICs a destination field names: an IPI's (`x2apic`: the sender's mode), or an
        I/O APIC entry's 8 bits (`x2apic` None), which each APIC reads in its own mode: in
        x2APIC mode as an x2APIC destination in cluster 0, 0xFF as the broadcast (as KVM)."""
        if x2apic is not None:
            return [a for a in self.apics if a.matches(dest, logical, x2apic)]
        wide = X2APIC_BROADCAST if dest == XAPIC_BROADCAST else dest
        return [a for a in self.apics
                if (a.matches(wide, logical, True) if a.x2apic else a.matches(dest, logical, False))]

    @staticmethod
    def lowest_priority(targets: list["LocalApic"]) -> list["LocalApic"]:
        """Lowest-priority arbitration: the target with the lowest TPR (then APIC ID) alone."""
        return [min(targets, key=lambda a: (a.tpr, a.apic_id))] if targets else targets

    def send(self, source: "LocalApic", icr: int) -> None:
        mode = (icr >> ICR_DELIVERY_MODE_SHIFT) & 7
        if mode in (ICR_DELIVERY_REMOTE_READ, 7):
            raise Unsupported(f"APIC ICR delivery mode {mode} (ICR {icr:#x}): "
                              "remote read and the reserved mode are not modelled")
        vector = icr & 0xFF
        if mode in (ICR_DELIVERY_FIXED, ICR_DELIVERY_LOWEST) and vector < 16:
            source.esr |= ESR_SEND_ILLEGAL_VECTOR
            return
        targets = self.targets(source, icr)
        if mode == ICR_DELIVERY_LOWEST:
            targets = self.lowest_priority(targets)
        if mode == ICR_DELIVERY_INIT and not icr & ICR_LEVEL_ASSERT:
            return              # INIT level de-assert: no effect on current processors
        self.deliver(mode, vector, targets)

    @staticmethod
    def deliver(mode: int, vector: int, targets: Iterable["LocalApic"],
                level: bool = False) -> None:
        """Hand one message to each target APIC (`level`: a level-triggered fixed interrupt,
        from the I/O APIC)."""
        for apic in targets:
            apic.receive(mode, vector, level)


class LocalApic(PortDevice):
    """One local APIC. `now` reads the machine's virtual time; `changed` is called whenever an
    interrupt may have become deliverable (the machine then looks at `pending()`)."""
    name = "apic"

    def __init__(self, now: Callable[[], int], advance: Callable[[int], None],
                 changed: Callable[[], None], initial_id: int = 0, bsp: bool = True) -> None:
        self.now = now
        self.advance = advance
        self.changed = changed
        self.initial_id = initial_id        # the APIC ID the hardware assigns (CPU index)
        self.base_msr = APIC_DEFAULT_BASE | APIC_BASE_EN | (APIC_BASE_BSP if bsp else 0)
        # An application processor waits for SIPI until one starts it (`on_startup(vector)`).
        self.wait_for_sipi = not bsp
        self.on_startup: Callable[[int], None] = lambda vector: None
        self.remap: Callable[[int | None, int | None], None] = lambda old, new: None
        self.bus: ApicBus | None = None
        # The 8259's INTR output on LINT0 (intr(), vector(), acknowledge()), and who hears the
        # EOI of a level-triggered vector (the I/O APIC): wired by the machine.
        self.extint = None
        self.extint_shared: "Callable[[], bool] | None" = None   # application processors
        self.on_level_eoi: Callable[[int], None] = lambda vector: None
        # A TSC deadline was armed in the future: the machine bounds its run by it.
        self.timer_moved: Callable[[], None] = changed
        self.reset()
        ApicBus().attach(self)

    def reset(self) -> None:
        self.apic_id = self.initial_id
        self.tpr = 0
        self.ldr = 0
        self.dfr = 0xFFFFFFFF
        self.svr = 0xFF
        self.isr = 0
        self.irr = 0
        self.tmr = 0
        self.esr = 0
        self.icr = 0
        self.nmi_pending = False   # an NMI sent to this CPU, not yet taken by it
        self.init_pending = False  # an INIT signal, likewise
        self.smi_pending = False   # an SMI, likewise
        self.extint_pending = False   # an I/O APIC ExtINT message, not yet acknowledged
        self._from_extint = False     # pending() last answered with the 8259's vector
        self.lvt = {off: LVT_MASKED for off in _LVT_OFFSETS}
        self.timer_initial = 0
        self.dcr = 0
        self.timer_running = False
        self.timer_base = 0        # virtual time the count started from `timer_first`
        self.timer_first = 0
        self.timer_fired = 0       # periods completed since timer_base
        self.tsc_deadline = 0      # TSC-deadline mode: the virtual time it fires at; 0 = disarmed

    # ---- mode -------------------------------------------------------------------------------
    @property
    def enabled(self) -> bool:
        return bool(self.base_msr & APIC_BASE_EN)

    @property
    def x2apic(self) -> bool:
        return bool(self.base_msr & APIC_BASE_EXTD)

    @property
    def signal_pending(self) -> bool:
        """An NMI, INIT or SMI waits for the CPU (none of them masked by IF or the TPR)."""
        return self.nmi_pending or self.init_pending or self.smi_pending

    @property
    def software_enabled(self) -> bool:
        return bool(self.svr & SVR_APIC_ENABLED)

    def mmio_base(self) -> int | None:
        """Where the xAPIC page decodes, or None (globally disabled or in x2APIC mode)."""
        if not self.enabled or self.x2apic:
            return None
        return self.base_msr & APIC_BASE_ADDR_MASK & 0xFFFFFFFFFFFFFFFF

    def write_base_msr(self, value: int, maxphyaddr: int) -> None:
        """IA32_APIC_BASE: reserved bits, and the mode transitions the architecture forbids
        (x2APIC without enable, x2APIC back to xAPIC without disabling first), raise #GP."""
        if value & 0x6FF & ~APIC_BASE_EXTD or value >> maxphyaddr:
            raise ApicError(f"reserved bits in {value:#x}")
        en, extd = bool(value & APIC_BASE_EN), bool(value & APIC_BASE_EXTD)
        if extd and not en:
            raise ApicError("x2APIC mode with the APIC disabled")
        if self.x2apic and en and not extd:
            raise ApicError("x2APIC to xAPIC without disabling the APIC first")
        if not self.enabled and extd and en:
            raise ApicError("disabled to x2APIC without passing through xAPIC")
        old = self.mmio_base()
        value = (value & ~APIC_BASE_BSP) | (self.base_msr & APIC_BASE_BSP)
        was_enabled = self.enabled
        self.base_msr = value
        if was_enabled and not self.enabled:
            self.reset()           # global disable resets the APIC's state
        if not was_enabled and self.enabled:
            self.reset()
        if self.mmio_base() != old:
            self.remap(old, self.mmio_base())

    # ---- interrupts --------------------------------------------------------------------------
    def ppr(self) -> int:
        isrv = self.isr.bit_length() - 1 if self.isr else 0
        return self.tpr if (self.tpr >> 4) >= (isrv >> 4) else isrv & 0xF0

    def firmware_state(self) -> None:
        """The registers as SeaBIOS hands the BSP's APIC to a kernel."""
        self.svr = FIRMWARE_SVR
        self.lvt[APIC_LVT_LINT0] = FIRMWARE_LINT0
        self.lvt[APIC_LVT_LINT1] = FIRMWARE_LINT1

    def lint0_accepts(self) -> bool:
        """Does the 8259's INTR reach the CPU? Through LINT0 unmasked in ExtINT mode, or
        directly when the APIC is globally disabled (as QEMU wires it). On an application
        processor only while the boot CPU's APIC is globally enabled (`extint_shared`): QEMU
        offers the 8259's INTR to every CPU that accepts it then, else to the boot CPU alone."""
        if self.extint_shared is not None and not self.extint_shared():
            return False
        lvt = self.lvt[APIC_LVT_LINT0]
        return not self.base_msr & APIC_BASE_EN or (not lvt & LVT_MASKED and
                                    (lvt >> LVT_DELIVERY_MODE_SHIFT) & 7 == LVT_DELIVERY_EXTINT)

    def _extint(self) -> bool:
        return self.extint is not None and (
            self.extint_pending or (self.lint0_accepts() and self.extint.intr()))

    def signalled(self) -> bool:
        """Is anything asking for the CPU's attention (cheap; not priority-checked)?"""
        return bool(self.irr or self.nmi_pending or self.init_pending or self.smi_pending
                    or (self.extint is not None and self._extint()))

    def pending(self) -> int | None:
        """The vector the APIC presents to the CPU, if any: highest IRR above the PPR class;
        else an ExtINT (the 8259 through LINT0, or an I/O APIC ExtINT message), whose vector
        the interrupt acknowledge fetches from the 8259 regardless of the PPR."""
        self._from_extint = False
        if self.irr and self.enabled:
            vector = self.irr.bit_length() - 1
            if (vector >> 4) > (self.ppr() >> 4):
                return vector
        if self._extint():
            self._from_extint = True
            return self.extint.vector()
        return None

    def acknowledge(self, vector: int) -> None:
        """The CPU took `vector` through its IDT: it moves from IRR to ISR (or, for an ExtINT,
        the 8259's acknowledge cycle moves its IRQ to its own ISR)."""
        if self._from_extint:
            self._from_extint = False
            self.extint_pending = False
            self.extint.acknowledge()
            return
        self.irr &= ~(1 << vector)
        self.isr |= 1 << vector

    def accept(self, vector: int, level: bool = False) -> None:
        """A fixed interrupt arrives (timer, self-IPI, I/O APIC); TMR records its trigger mode
        so that its EOI is broadcast to the I/O APIC when level-triggered."""
        if vector < 16:
            self.esr |= ESR_RECV_ILLEGAL_VECTOR
            return
        self.irr |= 1 << vector
        if level:
            self.tmr |= 1 << vector
        else:
            self.tmr &= ~(1 << vector)
        self.changed()

    def raise_nmi(self) -> None:
        self.nmi_pending = True
        self.changed()

    def raise_extint(self) -> None:
        self.extint_pending = True
        self.changed()

    def eoi(self) -> None:
        if self.isr:
            vector = self.isr.bit_length() - 1
            self.isr &= ~(1 << vector)
            if self.tmr >> vector & 1:
                self.on_level_eoi(vector)
            if self.signalled():    # a lower priority can only let in what is requested
                self.changed()

    def send_ipi(self, icr: int) -> None:
        assert self.bus is not None
        self.bus.send(self, icr)

    def matches(self, dest: int, logical: bool, x2apic: bool) -> bool:
        """Is this APIC named by `dest` (APM vol. 2, 16.6.1-16.6.2; x2APIC: its extension)?"""
        if x2apic:
            if dest == X2APIC_BROADCAST:
                return True
            if not logical:
                return dest == self.apic_id
            ldr = self.x2apic_ldr()
            return dest >> 16 == ldr >> 16 and bool(dest & ldr & 0xFFFF)
        if dest == XAPIC_BROADCAST:
            return True
        if not logical:
            return dest == self.apic_id
        ldr = self.ldr >> 24
        if self.dfr >> 28 == DFR_MODEL_FLAT:
            return bool(dest & ldr)
        return dest >> 4 == ldr >> 4 and bool(dest & ldr & 0xF)     # cluster model

    def x2apic_ldr(self) -> int:
        """The x2APIC logical ID, derived from the APIC ID: cluster in 31:16, one bit in 15:0."""
        return ((self.apic_id >> 4) << 16) | (1 << (self.apic_id & 0xF))

    def receive(self, mode: int, vector: int, level: bool = False) -> None:
        """A message from the bus arrives at this APIC."""
        if self.wait_for_sipi:
            if mode == ICR_DELIVERY_STARTUP:
                self.wait_for_sipi = False
                self.on_startup(vector)
            elif mode in (ICR_DELIVERY_FIXED, ICR_DELIVERY_LOWEST):
                self.accept(vector, level)
            return                  # INIT: still waiting; NMI, SMI, ExtINT: dropped
        if mode in (ICR_DELIVERY_FIXED, ICR_DELIVERY_LOWEST):
            self.accept(vector, level)
        elif mode == ICR_DELIVERY_NMI:          # the vector field is ignored
            self.raise_nmi()
        elif mode == DELIVERY_EXTINT:           # from the I/O APIC: the 8259 gives the vector
            self.raise_extint()
        elif mode == ICR_DELIVERY_INIT:
            self.init_pending = True
            self.changed()
        elif mode == ICR_DELIVERY_SMI:
            self.smi_pending = True
            self.changed()
        # ICR_DELIVERY_STARTUP: a running processor ignores it.

    # ---- timer -------------------------------------------------------------------------------
    def _timer_mode(self) -> int:
        return (self.lvt[APIC_LVT_TIMER] >> LVT_TIMER_MODE_SHIFT) & 3

    @property
    def deadline_mode(self) -> bool:
        """Is the timer in TSC-deadline mode?"""
        return self._timer_mode() == LVT_TIMER_TSC_DEADLINE

    @property
    def extint_requested(self) -> bool:
        """Does an ExtINT (the 8259 through LINT0, an I/O APIC message) ask for the CPU?"""
        return self._extint()

    def _start_timer(self, count: int) -> None:
        self.timer_running = count != 0
        self.timer_base = self.now()
        self.timer_first = count
        self.timer_fired = 0

    def read_tsc_deadline(self) -> int:
        """IA32_TSC_DEADLINE: the armed deadline; 0 once it fired, or outside TSC-deadline mode."""
        return self.tsc_deadline if self._timer_mode() == LVT_TIMER_TSC_DEADLINE else 0

    def write_tsc_deadline(self, value: int) -> None:
        """Arm (non-zero) or disarm (0) the TSC-deadline timer; ignored in the other modes."""
        if self._timer_mode() != LVT_TIMER_TSC_DEADLINE:
            return
        self.tsc_deadline = value
        self.tick(self.now())          # a deadline already past fires at once (accept: changed)
        if self.tsc_deadline and not self.lvt[APIC_LVT_TIMER] & LVT_MASKED:
            self.timer_moved()         # nothing is deliverable before it: only the run's bound

    def deadline(self) -> int | None:
        """The virtual time of the next timer expiry, or None when the timer is idle."""
        if (self.lvt[APIC_LVT_TIMER] >> LVT_TIMER_MODE_SHIFT) & 3 == LVT_TIMER_TSC_DEADLINE:
            return self.tsc_deadline or None     # (_timer_mode inline: several calls a turn)
        if not self.timer_running:
            return None
        ticks = self.timer_first + self.timer_fired * self.timer_initial
        return self.timer_base + ticks * divisor(self.dcr)

    def tick(self, now: int) -> None:
        """Fire every expiry up to `now` (the IRR holds one bit per vector, so at most one
        timer interrupt is ever outstanding)."""
        due = self.deadline()
        if due is None or due > now:
            return
        if self._timer_mode() == LVT_TIMER_TSC_DEADLINE:
            self.tsc_deadline = 0
        elif self._timer_mode() == LVT_TIMER_PERIODIC and self.timer_initial:
            # Every period that ended by `now`, counted at once: time can jump far (HLT, a
            # WRMSR to the TSC) and one interrupt stands for all of them.
            self.timer_fired += (now - due) // (self.timer_initial * divisor(self.dcr)) + 1
        else:
            self.timer_fired += 1
            self.timer_running = False
        if not self.lvt[APIC_LVT_TIMER] & LVT_MASKED:
            self.accept(self.lvt[APIC_LVT_TIMER] & 0xFF)

    def current_count(self, now: int) -> int:
        if not self.timer_running or self._timer_mode() == LVT_TIMER_TSC_DEADLINE:
            return 0
        elapsed = (now - self.timer_base) // divisor(self.dcr)
        if elapsed < self.timer_first:
            return self.timer_first - elapsed
        if self._timer_mode() == LVT_TIMER_PERIODIC and self.timer_initial:
            return self.timer_initial - (elapsed - self.timer_first) % self.timer_initial
        return 0

    # ---- register file -------------------------------------------------------------------------
    def read_reg(self, off: int) -> int:
        """A 32-bit register by xAPIC offset (x2APIC reads go through read_msr)."""
        self.tick(self.now())
        if off == APIC_ID:
            return self.apic_id if self.x2apic else self.apic_id << 24
        if off == APIC_VERSION:
            return APIC_VERSION_VALUE
        if off == APIC_TPR:
            return self.tpr
        if off == APIC_APR:
            return 0
        if off == APIC_PPR:
            return self.ppr()
        if off == APIC_LDR:
            return self.ldr
        if off == APIC_DFR:
            return self.dfr
        if off == APIC_SVR:
            return self.svr
        for base, bits in ((APIC_ISR, self.isr), (APIC_TMR, self.tmr), (APIC_IRR, self.irr)):
            if base <= off < base + 0x80 and off % 0x10 == 0:
                return (bits >> (32 * ((off - base) >> 4))) & 0xFFFFFFFF
        if off == APIC_ESR:
            return self.esr
        if off == APIC_ICR_LO:
            return self.icr & 0xFFFFFFFF
        if off == APIC_ICR_HI:
            return self.icr >> 32
        if off in self.lvt:
            return self.lvt[off]
        if off == APIC_TIMER_ICR:
            return self.timer_initial
        if off == APIC_TIMER_CCR:
            self.advance(TIME_PER_CCR_READ)
            now = self.now()
            self.tick(now)
            return self.current_count(now)
        if off == APIC_TIMER_DCR:
            return self.dcr
        return 0

    def write_reg(self, off: int, value: int) -> None:
        value &= 0xFFFFFFFF
        self.tick(self.now())
        if off == APIC_ID and not self.x2apic:
            self.apic_id = value >> 24
        elif off == APIC_TPR:
            self.tpr = value & 0xFF
            if self.signalled():    # a new priority can only let in what is requested
                self.changed()
        elif off == APIC_EOI:
            self.eoi()
        elif off == APIC_LDR and not self.x2apic:
            self.ldr = value & 0xFF000000
        elif off == APIC_DFR and not self.x2apic:
            self.dfr = value | 0x0FFFFFFF
        elif off == APIC_SVR:
            self.svr = value & 0x13FF
            if not self.software_enabled:
                for lvt in self.lvt:
                    self.lvt[lvt] |= LVT_MASKED
            self.changed()
        elif off == APIC_ESR:
            self.esr = 0           # a write clears the error status
        elif off == APIC_ICR_HI and not self.x2apic:
            self.icr = (self.icr & 0xFFFFFFFF) | ((value & 0xFF000000) << 32)
        elif off == APIC_ICR_LO:
            self.icr = (self.icr & ~0xFFFFFFFF) | (value & 0xCDFFF)
            self.send_ipi(self.icr)
        elif off in self.lvt:
            value &= _LVT_WRITABLE[off]
            if not self.software_enabled:
                value |= LVT_MASKED
            mode_was = self._timer_mode()
            self.lvt[off] = value
            if off == APIC_LVT_TIMER and self._timer_mode() != mode_was:
                # A change of timer mode disarms the timer (TSC-deadline or counting).
                self.tsc_deadline = 0
                self.timer_running = False
                self.changed()
            elif off == APIC_LVT_LINT0:
                self.changed()         # the 8259's INTR (and its timer) may reach the CPU now
        elif off == APIC_TIMER_ICR:
            if self._timer_mode() == LVT_TIMER_TSC_DEADLINE:
                return                 # the initial count is ignored in TSC-deadline mode
            self.timer_initial = value
            self._start_timer(value)
            self.changed()
        elif off == APIC_TIMER_DCR:
            now = self.now()
            count = self.current_count(now)
            fired = self.timer_running
            self.dcr = value & 0xB
            if fired:                 # keep the count, continue at the new rate
                self.timer_base, self.timer_first, self.timer_fired = now, count, 0
                self.timer_running = count != 0
            self.changed()

    # ---- xAPIC MMIO ----------------------------------------------------------------------------
    def mmio_read(self, offset: int, size: int) -> int:
        reg = offset & ~0xF
        value = self.read_reg(reg) if reg not in (APIC_EOI, X2APIC_SELF_IPI) else 0
        shift = 8 * (offset & 3)
        return (value >> shift) & ((1 << (8 * size)) - 1)

    def mmio_write(self, offset: int, size: int, value: int) -> None:
        if offset & 0xF:
            return              # only the aligned dword of each register decodes writes
        reg = offset & ~0xF
        if reg in _READ_ONLY or reg == X2APIC_SELF_IPI:
            return
        self.write_reg(reg, value)

    # ---- x2APIC MSRs --------------------------------------------------------------------------
    def x2apic_msrs(self) -> Iterable[int]:
        regs = {APIC_ID, APIC_VERSION, APIC_TPR, APIC_PPR, APIC_EOI, APIC_LDR, APIC_SVR, APIC_ESR,
                APIC_ICR_LO, APIC_TIMER_ICR, APIC_TIMER_CCR, APIC_TIMER_DCR, X2APIC_SELF_IPI}
        regs |= set(_LVT_OFFSETS)
        regs |= {base + 0x10 * i for base in (APIC_ISR, APIC_TMR, APIC_IRR) for i in range(8)}
        return sorted(X2APIC_MSR_BASE + (r >> 4) for r in regs)

    def read_msr(self, index: int) -> int:
        if not self.x2apic:
            raise ApicError(f"RDMSR {index:#x}: the APIC is not in x2APIC mode")
        reg = (index - X2APIC_MSR_BASE) << 4
        if reg in (APIC_EOI, X2APIC_SELF_IPI):
            raise ApicError(f"RDMSR {index:#x}: write-only x2APIC register")
        if reg == APIC_ICR_LO:
            return self.icr
        if reg == APIC_LDR:
            return self.x2apic_ldr()
        return self.read_reg(reg)

    def write_msr(self, index: int, value: int) -> None:
        if not self.x2apic:
            raise ApicError(f"WRMSR {index:#x}: the APIC is not in x2APIC mode")
        reg = (index - X2APIC_MSR_BASE) << 4
        if reg in _READ_ONLY or reg in (APIC_ID, APIC_LDR):
            raise ApicError(f"WRMSR {index:#x}: read-only x2APIC register")
        if reg == APIC_ICR_LO:
            self.icr = value & X2APIC_ICR_WRITABLE
            self.send_ipi(self.icr)
            return
        if value >> 32:
            raise ApicError(f"WRMSR {index:#x}: reserved bits in {value:#x}")
        if reg == APIC_EOI:
            if value:
                raise ApicError("WRMSR x2APIC EOI with a non-zero value")
            self.eoi()
        elif reg == X2APIC_SELF_IPI:
            if value & ~0xFF:
                raise ApicError(f"WRMSR x2APIC SELF_IPI: reserved bits in {value:#x}")
            if value < 16:
                self.esr |= ESR_SEND_ILLEGAL_VECTOR
            else:
                self.accept(value)
        elif reg == APIC_ESR and value:
            raise ApicError("WRMSR x2APIC ESR with a non-zero value")
        else:
            self.write_reg(reg, value)

    # ---- snapshots -----------------------------------------------------------------------------
    _FIELDS = ("base_msr", "apic_id", "tpr", "ldr", "dfr", "svr", "isr", "irr", "tmr", "esr",
               "icr", "timer_initial", "dcr", "timer_running", "timer_base", "timer_first",
               "timer_fired", "nmi_pending", "init_pending", "smi_pending", "extint_pending",
               "tsc_deadline")
    _FLAGS = ("timer_running", "nmi_pending", "init_pending", "smi_pending", "extint_pending")

    def state(self) -> dict:
        d = {name: getattr(self, name) for name in self._FIELDS}
        d["lvt"] = {str(k): v for k, v in self.lvt.items()}
        return d

    def load_state(self, state: dict) -> None:
        old = self.mmio_base()
        for name in self._FIELDS:
            # init/smi/extint pending and tsc_deadline are absent from older snapshots
            value = (state.get(name, 0) if name in ("init_pending", "smi_pending", "extint_pending",
                                                    "tsc_deadline")
                     else state[name])
            setattr(self, name, bool(value) if name in self._FLAGS else int(value))
        self.lvt = {int(k): int(v) for k, v in state["lvt"].items()}
        if self.mmio_base() != old:
            self.remap(old, self.mmio_base())
