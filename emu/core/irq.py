"""External interrupts: where the local APIC meets the CPU (AMD APM vol. 2, 8.7 and 15.21).

The machine examines interrupts only at *interrupt points*, which cost nothing while no interrupt
is pending:
  * the top of every pass of the run loop, i.e. wherever emulation stopped (exception delivery,
    world switches that stop, a device that asked for a look, a time slice ending);
  * the interrupt window (irq_window.py): if an interrupt is pending but RFLAGS.IF=0 or an
    interrupt shadow blocks it, Unicorn's VINTR exit stops emulation at the first instruction
    boundary where it can be taken (after STI plus one instruction, POPF, IRET, ...);
  * HLT: the CPU halts until an interrupt arrives; virtual time jumps to the timer's deadline.

At a point an interrupt is taken when GIF=1 (the extension's `ExitRouter.gif`), the APIC
presents a vector above its PPR (TPR and in-service priority), and the CPU is interruptible
(RFLAGS.IF=1 and no shadow; or, for a nested guest with V_INTR_MASKING, the host's IF as the
extension reports it). A nested hypervisor may take it first as a #VMEXIT(INTR) (then it stays
pending in IRR); otherwise it is acknowledged (IRR -> ISR) and delivered through the running
guest's IDT as an external interrupt. The extension then gets its own turn for virtual
interrupts (V_IRQ) through `ExitRouter.on_interrupt_window`.

Virtual time (`machine.tsc`, emu/core/timebase.py) and the timer: see devices/apic.py. While
the APIC timer is armed the run loop bounds each `emu_start` with an instruction count no larger
than the ticks left to the deadline (at most MAX_SLICE). On svmemu's engine the bound is the
engine's instruction deadline, free for the code's speed, and every instruction is a tick
anyway. On the stock engine a slice that runs out adds its count to virtual time, and Unicorn
implements the bound with an internal per-instruction counter hook, so code runs slower while an
unmasked timer is armed: measured by bench/apic_timer.py, 1.7 ns per instruction without a
timer, 2.2 with a masked one (never bounded), 25 with a periodic timer interrupting (about
14x). A timer armed from an MMIO write with IF=0 is bounded only from the next interrupt point
(it cannot interrupt before IF=1).
"""
from __future__ import annotations

import ctypes
from typing import TYPE_CHECKING

from unicorn import UcError
from unicorn.x86_const import (UC_X86_REG_R8, UC_X86_REG_R9, UC_X86_REG_R10, UC_X86_REG_R11,
                               UC_X86_REG_R12, UC_X86_REG_R13, UC_X86_REG_R14, UC_X86_REG_R15,
                               UC_X86_REG_RAX, UC_X86_REG_RBP, UC_X86_REG_RBX, UC_X86_REG_RCX,
                               UC_X86_REG_RDI, UC_X86_REG_RDX, UC_X86_REG_RFLAGS, UC_X86_REG_RIP,
                               UC_X86_REG_RSI, UC_X86_REG_RSP)

from emu.core.cpuid import CPUID_1_ECX_TSC_DEADLINE, CPUID_1_ECX_X2APIC, CPUID_1_EDX_APIC, Regs
from emu.engine import hostvm
from emu.core.devices.cmos import CMOS_SHUTDOWN_STATUS, SHUTDOWN_RESUME_CODES
from emu.core.devices.apic import (APIC_BASE_EXTD, APIC_LVT_TIMER, APIC_MMIO_SIZE, APIC_TPR, LVT_MASKED, ApicError,
                          LocalApic)
from emu.arch.decode import MAX_INSN_LENGTH, decoder, mov_store_length, split_prefixes
from emu.errors import STATUS_HALTED, Unsupported
from emu.core.extension import WINDOW_TAKEN, WINDOW_WANTED
from emu.engine.hw_switch import (HF2_NMI, HF_INHIBIT_IRQ, OFF_EFLAGS, OFF_HFLAGS, OFF_HFLAGS2,
                                  cpu_and_env)
from emu.arch.bits import RFLAGS_IF
from emu.core.interrupts import GP, NMI, Event, Kind
from emu.engine.irq_window import Window
from emu.arch.msrs import MSR_TSC_DEADLINE
from emu.core.msr import MSR_APIC_BASE, GeneralProtection

if TYPE_CHECKING:
    from emu.core.board import Board

MAX_SLICE = 1 << 20        # instructions per bounded run while a timer is armed
GPRS = (UC_X86_REG_RAX, UC_X86_REG_RCX, UC_X86_REG_RDX, UC_X86_REG_RBX, UC_X86_REG_RSP,
         UC_X86_REG_RBP, UC_X86_REG_RSI, UC_X86_REG_RDI, UC_X86_REG_R8, UC_X86_REG_R9,
         UC_X86_REG_R10, UC_X86_REG_R11, UC_X86_REG_R12, UC_X86_REG_R13, UC_X86_REG_R14,
         UC_X86_REG_R15)


class InterruptController:
    def __init__(self, machine: "Board") -> None:
        self.m = machine
        self.window = Window(machine.uc)
        index = machine.cpu_index
        self.apic = LocalApic(self.now, self.advance, self.changed, initial_id=index,
                              bsp=index == 0)
        self.apic.remap = self._remap
        self.apic.timer_moved = self.timer_moved
        self.halted = False        # HLT executed; waiting at the next interrupt point
        self.halt_step_trap: int | None = None   # HLT ran with TF: its #DB's RIP, owed at wake
        self.halted_ticks = 0      # virtual time HLT jumped over (the clock of perfctr.py)
        self.timers: list = []     # devices with deadline()/tick(now) (the PIT), besides the APIC
        self.time_window = False   # the window is armed only to start time slices at an STI
        # IF lives in env->eflags (a register read computes only the arithmetic flags into it)
        # and the interrupt shadow in hflags: an interrupt point reads both in place.
        _, env = cpu_and_env(machine.uc)
        self._eflags = ctypes.c_uint64.from_address(env + OFF_EFLAGS)
        self._hflags = ctypes.c_uint32.from_address(env + OFF_HFLAGS)
        self._entering = False     # the slice runs L0's trampoline into L1
        self._kicked = False       # a stop we asked for (not a slice running out)
        self._mapped: int | None = None
        self._in_mmio = False
        self._want_kick = False
        self._unbounded = True     # the current emu_start has no instruction bound
        self._replay: tuple[int, int, int] | None = None
        msrs = machine.msrs
        msrs.register(MSR_APIC_BASE, lambda: self.apic.base_msr, self._write_base)
        msrs.register(MSR_TSC_DEADLINE, self._read_tsc_deadline, self._write_tsc_deadline)
        for index in self.apic.x2apic_msrs():
            msrs.register(index, lambda i=index: self._gp(self.apic.read_msr, i),
                          lambda v, i=index: self._gp(self.apic.write_msr, i, v))
        machine.cpuid.overrides.append(self._cpuid)
        self._remap(None, self.apic.mmio_base())

    def _read_tsc_deadline(self) -> int:
        """In the TSC units of the code reading it (L2's TSC_OFFSET included)."""
        value = self.apic.read_tsc_deadline()
        return (value + self.m.tsc_offset) & 0xFFFFFFFFFFFFFFFF if value else 0

    def _write_tsc_deadline(self, value: int) -> None:
        self.apic.write_tsc_deadline((value - self.m.tsc_offset) & 0xFFFFFFFFFFFFFFFF
                                     if value else 0)

    # ---- wiring ----------------------------------------------------------------------------
    def now(self) -> int:
        return self.m.tsc

    def advance(self, ticks: int) -> None:
        self.m.tsc += ticks

    @staticmethod
    def _gp(fn, *args):
        try:
            return fn(*args)
        except ApicError as e:
            raise GeneralProtection(str(e))

    def _write_base(self, value: int) -> None:
        if value & APIC_BASE_EXTD and not self.m.cpuid.query(1, 0)[2] & CPUID_1_ECX_X2APIC:
            raise GeneralProtection("IA32_APIC_BASE.EXTD set on a model without x2APIC")
        self._gp(self.apic.write_base_msr, value, self.m.msrs.maxphyaddr)

    def _cpuid(self, leaf: int, subleaf: int, regs: Regs) -> Regs:
        """CPUID 1: EDX.APIC follows IA32_APIC_BASE.EN (as on hardware); x2APIC and the timer's
        TSC-deadline mode are supported; EBX[31:24] is this CPU's initial APIC ID."""
        if leaf != 1:
            return regs
        a, b, c, d = regs
        d = d | CPUID_1_EDX_APIC if self.apic.enabled else d & ~CPUID_1_EDX_APIC
        b = (b & 0x00FFFFFF) | (self.apic.initial_id << 24)
        return a, b, c | CPUID_1_ECX_X2APIC | CPUID_1_ECX_TSC_DEADLINE, d

    def _remap(self, old: int | None, new: int | None) -> None:
        uc = self.m.uc
        if self._mapped is not None:
            uc.mem_unmap(self._mapped, APIC_MMIO_SIZE)
            self._mapped = None
        if new is None:
            return
        if self.m.layout.overlaps(new, APIC_MMIO_SIZE):
            raise Unsupported(f"unsupported: APIC page moved to {new:#x}, inside RAM")
        self.m.open_bus.release(new, APIC_MMIO_SIZE)
        try:
            uc.mmio_map(new, APIC_MMIO_SIZE, self._mmio_read, self.apic, self._mmio_write,
                        self.apic)
        except UcError as e:
            raise Unsupported(f"unsupported: APIC page at {new:#x} ({e})")
        self._mapped = new

    # MMIO and the kick. Unicorn checks for exit requests after every memory access and then
    # restarts the accessing instruction (its PC restored precisely), so a write that makes an
    # interrupt deliverable cannot simply stop emulation: the write would happen twice (two
    # EOIs). It stops anyway, and remembers the access; where emulation stops (the window exit
    # or the next interrupt point) RIP is that instruction again, and if it is a plain MOV store
    # (what APIC drivers use, MOVABS moffs included; its store is all it does) RIP moves past it. Any other instruction
    # is restarted and the repeated access (same offset, size, value) is dropped once. (RIP read
    # inside an MMIO callback is not precise without a code hook, so it is not used.)
    def map_mmio(self, base: int, size: int, dev) -> None:
        """Map an interrupt-raising MMIO device (the I/O APIC) with the APIC's write rules."""
        self.m.uc.mmio_map(base, size, self._mmio_read, dev, self._mmio_write, dev)

    def _mmio_read(self, uc, offset: int, size: int, dev) -> int:
        self.m.replay_sync()
        self._in_mmio = True          # a read never stops (timer expiry seen by a CCR read)
        try:
            value = dev.mmio_read(offset, size)
        finally:
            self._in_mmio = False
        self._replay = None
        self._trace(dev.name, "read", offset, size, value)
        return value

    def _mmio_write(self, uc, offset: int, size: int, value: int, dev) -> None:
        self.m.replay_sync()
        key = (dev.name, offset, size, value)
        if self._replay == key:
            self._replay = None
            return
        self._replay = None
        self._trace(dev.name, "write", offset, size, value)
        self._in_mmio, self._want_kick = True, False
        try:
            dev.mmio_write(offset, size, value)
        finally:
            self._in_mmio = False
        if self._want_kick:
            self._replay = key
            self._kicked = True
            uc.emu_stop()

    def _finish_store(self) -> bool:
        """At a stop after a kicked MMIO write: move RIP past it if it was a plain MOV (or
        MOVABS) store."""
        if self._replay is None:
            return False
        uc = self.m.uc
        rip = uc.reg_read(UC_X86_REG_RIP)
        length = self._store_length(rip)
        if not length:
            return False
        uc.reg_write(UC_X86_REG_RIP, rip + length)
        self._replay = None
        return True

    def _store_length(self, rip: int) -> int:
        """Length of the instruction at `rip` if it is a MOV to memory, else 0."""
        m = self.m
        try:
            code = m.mem.read_code(rip, 15)
        except Exception:
            return 0
        mode = m.ctx.save().mode_bits()
        length = mov_store_length(code, mode)
        if length is not None:
            return length
        for ins in decoder(mode).disasm(code, rip, 1):
            if ins.mnemonic in ("mov", "movabs") and "[" in ins.op_str.split(",")[0]:
                return ins.size
        return 0

    def _trace(self, name: str, op: str, offset: int, size: int, value: int) -> None:
        t = self.m.tracer
        if t is not None and t.on("io"):
            t.line("io", self.m.where(), f"{name} {op} offset {offset:#05x} size {size} "
                   f"value {value:#x}")

    # ---- MOV CR8 ---------------------------------------------------------------------------------
    def register_exits(self) -> None:
        """CR8 reads and writes, which vmcb01 intercepts (hostvm.L0_CR_INTERCEPTS)."""
        self.m.register_exit(hostvm.VMEXIT_CR0_READ + 8, self._cr8_exit)
        self.m.register_exit(hostvm.VMEXIT_CR0_WRITE + 8, self._cr8_exit)

    def _cr8_exit(self, code: int) -> None:
        """MOV reg, CR8 / MOV CR8, reg (or LOCK MOV CR0, AMD's AltMovCr8 spelling): CR8 is
        TPR[7:4] (APM 16.6.4); writing bits 63:4 raises #GP(0)."""
        m = self.m
        uc = m.uc
        rip = uc.reg_read(UC_X86_REG_RIP)
        code_bytes = m.mem.read_code(rip, MAX_INSN_LENGTH)
        bits = m.ctx.save().mode_bits()
        p = split_prefixes(code_bytes, bits)
        i, rex, op = p.length, p.rex, p.opcode
        if op[:1] != b"\x0F" or op[1:2] not in (b"\x20", b"\x22") or len(op) < 3:
            raise Unsupported(f"CR8 access by {code_bytes[:i + 3].hex()} at {rip:#x}")
        modrm = op[2]
        reg = GPRS[(modrm & 7) | ((rex & 1) << 3)]
        if op[1] == 0x22:
            value = uc.reg_read(reg) & (0xFFFFFFFFFFFFFFFF if bits == 64 else 0xFFFFFFFF)
            if value >> 4:
                m.raise_exception(GP, 0)
                return
            self.apic.write_reg(APIC_TPR, value << 4)
        else:
            uc.reg_write(reg, self.apic.tpr >> 4)
        m.retire(rip + i + 3)

    # ---- the points --------------------------------------------------------------------------
    def check_soon(self, virtual: bool = False) -> None:
        """From an exit handler (STGI, VMRUN): stop at this boundary and look (the window alone
        would not do for a nested guest whose physical interrupts follow the host's IF). Free
        when nothing is pending: world switches call it every time."""
        if not (virtual or self.apic.signalled()):
            return
        self.window.arm()
        self._kicked = True
        self.m.uc.emu_stop()

    @property
    def in_mmio(self) -> bool:
        """Inside an MMIO callback of this CPU (a stop must wait for `_mmio_write`)."""
        return self._in_mmio

    def want_kick(self) -> None:
        """From inside an MMIO write: stop once it is done (see `_mmio_write`)."""
        self._want_kick = True

    @property
    def kicked(self) -> bool:
        """Did the slice stop for a reason of ours (an interrupt, HLT, a wake-up)?"""
        return self._kicked

    def kick(self) -> None:
        """Stop at the next boundary for a reason of ours (not a slice running out)."""
        self._kicked = True
        self.m.uc.emu_stop()

    def changed(self) -> None:
        """Something may have become deliverable (IRR, TPR, EOI, GIF, a timer armed): look at
        the next point. It only opens the interrupt window: the CPU leaves at the first
        boundary where it can take an interrupt, and the point there decides. Inside an MMIO
        write the kick is left to `_mmio_write`. With several CPUs, the one running now ends
        its turn if this is another."""
        if self.m.cpus > 1:
            self.m.wake()
        self.window.arm(kick=not self._in_mmio)
        if self._in_mmio:
            self._want_kick = True
        elif self._window_not_enough():
            self._kicked = True
            self.m.uc.emu_stop()

    def timer_moved(self) -> None:
        """The APIC timer got a TSC deadline in the future, and nothing else changed: only the
        run's bound must follow. One CPU on the engine's count: the run in progress ends when
        virtual time reaches it (Timebase.bound_by), where the next slice would have ended, and
        the point there fires it. Otherwise the next point bounds it (`changed`)."""
        m = self.m
        deadline = self.apic.deadline()
        if m.cpus == 1 and m.timebase.exact and m.timebase.in_run and deadline is not None:
            m.timebase.bound_by(deadline)
            self._unbounded = False
            return
        self.changed()

    @property
    def unbounded(self) -> bool:
        """The run in progress has no time bound (no timer to stop it)."""
        return self._unbounded

    def bounded(self) -> None:
        """The run in progress got a time bound (from C, emu/core/apic_fast.py)."""
        self._unbounded = False

    def timer_taken(self) -> None:
        """C delivered the APIC timer's interrupt at the run's bound and ran on unbounded
        (emu/core/apic_fast.py)."""
        self._unbounded = True

    def note_kick(self) -> None:
        """C stopped emulation for a reason of ours (emu/core/apic_fast.py)."""
        self._kicked = True

    def _window_not_enough(self) -> bool:
        """The window brings the CPU back when the running guest's IF lets an interrupt in.
        That is not enough when the event does not follow that IF (an NMI; a nested guest
        whose physical interrupts follow the host's IF: they may exit while the guest's IF is
        0), nor for a timer armed, or a device timer's line unmasked, while Unicorn runs
        unbounded (its slices start at a stop)."""
        if self.apic.nmi_pending:
            return True
        router = self.m.router
        if router is not None and router.physical_if() is not None:
            return True
        return self._unbounded and (self.apic.deadline() is not None
                                    or any(t.deadline() is not None for t in self.timers))

    def halt(self, step_trap: int | None = None) -> None:
        """HLT (RIP already past it): wait at the next interrupt point. An STI shadow that
        covered the HLT ends with it. `step_trap`: HLT ran with RFLAGS.TF set, and its
        single-step #DB, with this RIP, comes when the halt ends."""
        self.halt_step_trap = step_trap
        ctx = self.m.ctx.save()
        if ctx.hflags & HF_INHIBIT_IRQ:
            ctx.set_u32(OFF_HFLAGS, ctx.hflags & ~HF_INHIBIT_IRQ)
            ctx.restore()
        self.halted = True
        self._kicked = True
        self.m.uc.emu_stop()

    def window_exit(self) -> None:
        """Unicorn's VINTR exit on our armed window: the guest can take an interrupt now."""
        self._finish_store()
        self.window.disarm()
        self._kicked = True
        self.m.uc.emu_stop()

    def point(self) -> bool:
        """An interrupt point, emulation stopped. True when RIP or the world changed."""
        m = self.m
        moved = self._finish_store()
        self._tick(m.tsc)
        took = self._halt_trap() or self._evaluate()
        if self.halted and not took:
            if m.cpus > 1:
                return moved       # still halted: the scheduler (emu/core/smp.py) keeps time
            deadline = self._next_deadline()
            if deadline is not None:
                if deadline > m.tsc:
                    self.halted_ticks += deadline - m.tsc
                m.tsc = max(m.tsc, deadline)
                self._tick(m.tsc)
                took = self._halt_trap() or self._evaluate()
            if not took:
                rflags = m.uc.reg_read(UC_X86_REG_RFLAGS)
                m.stop("halt", STATUS_HALTED, "guest halted waiting for an interrupt, and no device "
                       "can raise one" if rflags & RFLAGS_IF else
                       "guest halted with interrupts disabled")
        self.halted = False
        self.halt_step_trap = None
        return took or moved

    def _halt_trap(self) -> bool:
        """The single-step #DB of a HLT run with TF set: HLT completes when an event ends the
        halt, and its trap is taken before that event (a trap of the previous instruction
        comes before external interrupts and NMI: APM vol. 2, 8.5). The event is then taken
        at the next interrupt point, once the #DB handler allows it."""
        rip = self.halt_step_trap
        if not self.halted or rip is None:
            return False
        a = self.apic
        if not (a.smi_pending or a.init_pending or a.nmi_pending
                or (a.pending() is not None and self._interruptible())):
            return False
        self.halt_step_trap = None
        self.m.single_step_trap(rip)
        self.m.run_deferred()
        return True

    def _interruptible(self) -> bool | None:
        """Can the CPU take a physical interrupt now? None: blocked in a way no window opens
        (a nested guest under V_INTR_MASKING whose host had IF=0)."""
        m = self.m
        router = m.router
        host_if = router.physical_if() if router is not None else None
        if host_if is not None:
            return True if host_if else None
        if not self._eflags.value & RFLAGS_IF:
            return False
        return not self._hflags.value & HF_INHIBIT_IRQ

    def release_time_window(self) -> None:
        """A hypervisor is about to switch worlds in C: a window armed only for device time
        is given up (see `slice`), as an armed window keeps the C replay off."""
        if self.time_window:
            self.time_window = False
            if self.window.armed:
                self.window.disarm()

    def _evaluate(self) -> bool:
        m = self.m
        self.time_window = False
        router = m.router
        if router is not None and not router.gif():
            self.window.disarm()
            return False
        if self.apic.smi_pending and self._take_smi():
            return True
        if self.apic.init_pending and self._take_init():
            return True
        if self.apic.nmi_pending and self._take_nmi():
            return True
        want_window = False
        vector = self.apic.pending()
        if vector is not None:
            can = self._interruptible()
            if can:
                self.window.disarm()
                if router is not None and router.on_interrupt(vector):
                    return True
                self.apic.acknowledge(vector)
                m.deliver_now(Event(vector, Kind.EXTERNAL), m._rip())
                return True
            want_window = can is False
        if router is not None:
            action = router.on_interrupt_window()
            if action == WINDOW_TAKEN:
                self.window.disarm()
                m.run_deferred()      # a delivery it asked for
                return True
            want_window = want_window or action == WINDOW_WANTED
        if want_window:
            self.window.arm()
        else:
            self.window.disarm()
        return False

    def _take_smi(self) -> bool:
        """SMI (APM vol. 2, 10.3): held while GIF=0; a nested hypervisor intercepting SMI gets
        #VMEXIT(SMI) and the SMI stays pending until it sets GIF again. No SMM is modelled: an
        SMI that reaches the CPU is taken by the platform's SMM handler, which on this PC (as
        SeaBIOS's does for an SMI it did not ask for) returns at once with RSM and changes
        nothing the guest can see. It is gone; `--trace exc` shows it. False: nothing changed."""
        m = self.m
        if m.router is not None and m.router.on_smi():
            return True
        self.apic.smi_pending = False
        t = m.tracer
        if t is not None and t.on("exc"):
            t.line("exc", m.where(), "SMI taken by the platform's SMM handler (returns at once)")
        return False

    def _take_init(self) -> bool:
        """INIT (APM vol. 2, 16.5 and 15.13.2): held while GIF=0; a nested hypervisor
        intercepting INIT gets #VMEXIT(INIT) (the INIT stays pending), and with VM_CR.R_INIT set
        it becomes #SX (the router decides both). Otherwise the processor enters INIT state: an
        application processor waits for SIPI (Machine.enter_wait_for_sipi), and the boot
        processor restarts at the reset vector, in the firmware. The firmware reads the
        CMOS shutdown status: a resume code sends it to the OS through 40:67, which svmemu
        (having no firmware) does not model and stops on; any other value reboots the machine,
        which ends the run as every reset does (Machine.reset_request, QEMU's -no-reboot)."""
        m = self.m
        if m.router is not None and m.router.on_init():
            return True
        self.apic.init_pending = False
        if m.cpu_index != 0:
            m.enter_wait_for_sipi()
            return True
        status = m.pc.cmos.ram[CMOS_SHUTDOWN_STATUS]
        if status in SHUTDOWN_RESUME_CODES:
            raise Unsupported(f"INIT of the boot CPU with CMOS shutdown status {status:#04x}: "
                              "the firmware's resume through 40:67 is not modelled")
        m.reset_request("INIT of the boot CPU: the firmware restarts the machine")
        return True

    def _take_nmi(self) -> bool:
        """NMI: not masked by IF or TPR; blocked from its delivery until the next IRET (Unicorn's
        IRET clears HF2_NMI), and while blocked it waits for the next interrupt point, since an
        IRET is no exit. A nested hypervisor intercepting NMI gets #VMEXIT(NMI) instead."""
        m = self.m
        ctx = m.ctx.save()
        if ctx.u32(OFF_HFLAGS2) & HF2_NMI:
            m.wait_for_iret()
            return False
        self.window.disarm()
        if m.router is not None and m.router.on_nmi():
            return True
        self.apic.nmi_pending = False
        m.deliver_now(Event(NMI, Kind.EXTERNAL), m.uc.reg_read(UC_X86_REG_RIP))
        ctx = m.ctx.save()
        ctx.set_u32(OFF_HFLAGS2, ctx.u32(OFF_HFLAGS2) | HF2_NMI)
        ctx.restore()
        return True

    # ---- time slices ---------------------------------------------------------------------------
    def _tick(self, now: int) -> None:
        self.apic.tick(now)
        for timer in self.timers:
            timer.tick(now)

    def tick_timers(self) -> None:
        """Deliver every timer expiry up to now (before a guest reads interrupt state)."""
        self._tick(self.m.tsc)

    def next_deadline(self) -> int | None:
        """When this CPU's timers (the APIC's, and on the boot CPU the routed device timers)
        next fire, or None."""
        return self._next_deadline()

    def interruptible(self) -> bool:
        """Could an external interrupt reach the CPU now (IF and shadow, or a nested guest's
        host IF)?"""
        return bool(self._interruptible())

    def _next_deadline(self) -> int | None:
        """The earliest time any timer fires (device timers only when their line is routed)."""
        times = [t for d in self.timers if (t := d.deadline()) is not None]
        apic = self.apic.deadline()
        if apic is not None:
            times.append(apic)
        return min(times) if times else None

    def slice(self) -> int:
        """The instruction bound for the next emu_start (0: unbounded).

        Device timers (the PIT) bound it only while the CPU can take their interrupt: their
        line is routed, and the CPU is interruptible here. With IF=0 the interrupt window is
        armed instead (free until IF becomes 1), so a guest's STI ends the unbounded run at the
        point where bounding starts -- except under a hypervisor (EFER.SVME), where an armed
        window would keep world switches off the C replay path: there a device timer's time
        counts from the next interrupt point after IF=1. Time always advances at RDTSC, at
        device reads and at HLT, so polling and waiting guests progress without slices."""
        self._kicked = False
        deadline = self.apic.deadline()
        if deadline is not None and self.apic.lvt[APIC_LVT_TIMER] & LVT_MASKED:
            deadline = None   # a masked timer interrupts nobody: CCR reads alone move its time
        device = [t for d in self.timers if (t := d.deadline()) is not None]
        if device and self.m.at_trampoline():
            self._entering = True              # L0's instructions take no virtual time
            self._unbounded = False
            return hostvm.TRAMPOLINE_INSNS     # enter L1 first: its IF decides
        if device:
            can = self._interruptible()
            if can:
                deadline = min([deadline, *device] if deadline is not None else device)
            elif can is False and not self.window.armed and not self.m.svm_enabled():
                self.window.arm(kick=False)
                self.time_window = True
        self._unbounded = deadline is None
        if deadline is None:
            return 0
        return max(1, min(deadline - self.m.tsc, MAX_SLICE))

    def slice_done(self, count: int, quiet: bool) -> None:
        """After emu_start: a bounded run that stopped for no reason of ours ran out."""
        entering, self._entering = self._entering, False
        if count and quiet and not self._kicked and not entering:
            self.m.tsc += count
