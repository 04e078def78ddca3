"""The machine: Unicorn as the CPU, L0 in Python, and the run loop.

L1 runs as a guest of Unicorn's SVM under vmcb01 (see hostvm.py), so translated code runs at
TCG speed and only the events L0 owns reach Python, as `INTR 0x100 + exit code` with RIP at the
instruction. Cheap events (MSR, CPUID, RDTSC, port I/O) are emulated inside the hook and the guest
continues without leaving `emu_start`; events that change control flow across privilege levels
(exception delivery) or end the run stop emulation, and the loop in `run` finishes them.
"""
from __future__ import annotations

import copy
import mmap
import struct
import time
import ctypes
from typing import TYPE_CHECKING, BinaryIO, Callable, Iterable

from emu.engine.unicorn_build import loader as engine_loader
from unicorn import (Uc, UcError, UC_ARCH_X86, UC_MODE_64, UC_PROT_ALL, UC_HOOK_INTR, UC_HOOK_INSN,
                     UC_HOOK_CODE, UC_HOOK_MEM_UNMAPPED)
from unicorn.x86_const import (UC_CPU_X86_EPYC, UC_X86_INS_IN, UC_X86_INS_OUT, UC_X86_INS_SYSCALL, UC_X86_REG_RAX,
                               UC_X86_REG_RBX, UC_X86_REG_RCX, UC_X86_REG_RDX, UC_X86_REG_RIP,
                               UC_X86_REG_DR6, UC_X86_REG_RSI, UC_X86_REG_RDI, UC_X86_REG_RBP,
                               UC_X86_REG_R8, UC_X86_REG_R9, UC_X86_REG_R10, UC_X86_REG_R11,
                               UC_X86_REG_R12, UC_X86_REG_R13, UC_X86_REG_R14, UC_X86_REG_R15,
                               UC_X86_REG_RFLAGS, UC_X86_REG_FPCW, UC_X86_REG_FPTAG,
                               UC_X86_REG_MXCSR)
from emu.arch.bits import DR6_BS, FCW_FNINIT, FTW_ALL_EMPTY, MXCSR_RESET, RFLAGS_TF

from emu.engine import hostvm
from emu.core.cpuid import LEAF_XSAVE, Cpuid
from emu.arch.decode import MAX_INSN_LENGTH, OPCODE_INT1, split_prefixes
from emu.core.devices.base import PortDevice
from emu.core.devices.debug_exit import DebugExit
from emu.core.devices.fw_cfg import FwCfg
from emu.core.devices.open_bus import OpenBus
from emu.core.devices.pc import PcPlatform
from emu.core.devices.serial import Serial16550
from emu.errors import ImageError, OptionError, Unsupported
from emu.errors import (STATUS_BAD_INPUT, STATUS_HALTED, STATUS_LIMIT,  # noqa: F401 (re-exported)
                        STATUS_SHUTDOWN, STATUS_UNSUPPORTED)
from emu.core.extension import Extension, ExitRouter
from emu.engine.hostvm import HostVm
from emu.engine.code_group import CodeGroup
from emu.core.irq import InterruptController
from emu.engine import binding
from emu.engine.hw_switch import (OFF_INTERCEPT, OFF_INTERCEPT_DR_WRITE, OFF_VM_VMCB, Context,
                                  FEAT_7_0_EBX, FEAT_7_0_ECX, flush_tlb, set_feature_bits,
                                  set_xsave_components)
from emu.core import acpi_sleep
from emu.core.firmware import bios_services
from emu.core.devices.apic import APIC_BASE_BSP, APIC_BASE_EN, APIC_DEFAULT_BASE
from emu.engine.layout_check import self_check
from emu.engine.io_trap import IoTrap
from emu.engine.breakpoints import Breakpoints
from emu.core.stack_fault import is_stack_fault
from emu.core.data_breakpoints import DataBreakpoints
from emu.core.interrupts import (BP, DB, HAS_ERROR_CODE, OF, PF, UD, GP, SS_FAULT, Deliverer, Event, Fault, Kind,
                         Shutdown)
from emu.core.firmware import MAX_XAPIC_CPUS
from emu.core.firmware.layout import ram_layout
from emu.core.devices.ioapic import IOAPIC_BASE, IOAPIC_MMIO_SIZE
from emu.core.smp import DEFAULT_QUANTUM, Position, RoundRobin
from emu.core.memory import GuestMemory
from emu.core.fresh_ram import FreshRam
from emu.engine import replay
from emu.core.fast_deliver import FastDeliver
from emu.core.apic_fast import ApicFast
from emu.core.fast_exits import FastExits
from emu.core.timebase import IOIO_COST, Timebase
from emu.arch.paging import NestedFault
from emu.arch.vmcb import VMEXIT_IRET, intercept_misc_bit
from emu.core.syscall import on_syscall
from emu.core.msr import EFER_SVME, MSR_EFER, MSR_TSC_AUX, GeneralProtection, MsrFile
from emu.core import msrs_amd
from emu.core.msrs_amd import TSC_RATIO_RESET
from emu.core.lbr import BranchRecorder
from emu.core.perfctr import PerfCounters
from emu.core.control_regs import Cr4Writes
from emu.core.table_loads import TableLoads
from emu.core.cpu_models import (CPUID_7_0_EBX_CLWB, CPUID_7_0_EBX_PCOMMIT, CPUID_7_0_ECX_PKU,
                                 CpuModel)
from emu.core.pkeys import SupervisorKeys
from emu.core.rdpmc import Rdpmc
from emu.core.general_detect import GeneralDetect
from emu.core.watchdog import MAX_TIMEOUT, Watchdog

if TYPE_CHECKING:
    from emu.core.trace import Tracer     # only a run with --trace imports the tracer
    from emu.loader.linux import LinuxBoot
    from emu.loader.modules import ModuleLayout
    from emu.loader.multiboot import BootImage


MULTIBOOT_MAGIC = 0x2BADB002
MTRR_MSRS = frozenset(range(0x200, 0x300)) | {0xFE}   # MTRRcap, variable, fixed, default type
MAX_CPUS = MAX_XAPIC_CPUS     # APIC IDs 0..254 (xAPIC), as the firmware tables describe them
TSC_STEP = 1000          # virtual TSC ticks per read: deterministic, monotonic
_UNTIL = 0xFFFF_FFFF_FFFF_FFFF
# What the trampoline's VMRUN leaves as it was: zeroed for a CPU the firmware enters in real mode.
_GENERAL_REGS = (UC_X86_REG_RBX, UC_X86_REG_RCX, UC_X86_REG_RDX, UC_X86_REG_RSI, UC_X86_REG_RDI,
                 UC_X86_REG_RBP, UC_X86_REG_R8, UC_X86_REG_R9, UC_X86_REG_R10, UC_X86_REG_R11,
                 UC_X86_REG_R12, UC_X86_REG_R13, UC_X86_REG_R14, UC_X86_REG_R15)
_IRET_INTERCEPT = intercept_misc_bit(VMEXIT_IRET)
_MAP_NORESERVE = 0x4000   # Linux: no swap reserved; pages exist once the guest touches them


class RunResult:
    __slots__ = ("reason", "status", "message", "rip")

    def __init__(self, reason: str, status: int, message: str, rip: int) -> None:
        self.reason = reason      # exit | halt | shutdown | unsupported | timeout | max-insns
        self.status = status      # the process exit status svmemu uses
        self.message = message
        self.rip = rip

    def __repr__(self) -> str:
        return (f"RunResult(reason={self.reason!r}, status={self.status!r}, "
                f"message={self.message!r}, rip={self.rip!r})")

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}"


class _UnicornMsrs:
    """The MSRs that live in Unicorn's CPU, reached while L1 is in guest mode."""

    def __init__(self, uc: Uc, vm: HostVm) -> None:
        self.uc = uc
        self.vm = vm

    def read(self, index: int) -> int:
        with self.vm.msr_passthrough(index):
            return self.uc.msr_read(index)

    def write(self, index: int, value: int) -> None:
        with self.vm.msr_passthrough(index):
            self.uc.msr_write(index, value)


class Machine:
    def __init__(self, ram_size: int = 128 << 20, *, stdout: BinaryIO | None = None,
                 tracer: Tracer | None = None, extensions: Iterable[Extension] = (),
                 cpu: CpuModel | None = None, cpus: int = 1, quantum: int | None = None,
                 _boot: "Machine | None" = None, _index: int | None = None) -> None:
        """One CPU and, unless `_boot` is given, the platform around it. With `cpus` > 1 the
        boot CPU (this object) builds the application processors itself, one Machine each over
        the same RAM and devices (`_boot` is that boot CPU); `quantum` is how many instructions
        each CPU runs in its turn (emu/core/smp.py)."""
        if not 1 <= cpus <= MAX_CPUS:
            raise OptionError(f"-smp takes 1 to {MAX_CPUS} CPUs, not {cpus}")
        if quantum is not None and quantum <= 0:
            raise OptionError("the SMP quantum must be a positive instruction count")
        self.layout = ram_layout(ram_size)       # QEMU's pc split around the PCI hole
        self.ram_size = ram_size
        self.cpus = cpus          # the one CPU count: fw_cfg, the MP table and the MADT use it
        self.cpu_list: list[Machine] = _boot.cpu_list if _boot is not None else []
        if _index is None:            # a new CPU; else this one replaces CPU _index (INIT)
            self.cpu_index = len(self.cpu_list)
            self.cpu_list.append(self)
        else:
            self.cpu_index = _index
            self.cpu_list[_index] = self
        self.quantum = quantum if quantum is not None else DEFAULT_QUANTUM
        self.stale_code = False   # another CPU ran since this one last did (emu/core/smp.py)
        self.running: Machine | None = None   # boot CPU: the CPU in its turn now
        self.smp_position = Position()   # boot CPU: the scheduler's place between runs
        self._counting = False    # boot CPU: this run counts instructions (`insns` is exact)
        self.paused_cpu = 0       # boot CPU: the CPU whose turn a pause ended (debuggers)
        self.only_cpu: int | None = None   # boot CPU: a debugger steps this CPU alone
        # Boot CPU: tools that hook every CPU's engine (coverage), called for a CPU an INIT
        # re-makes (a new engine) too.
        self.cpu_attachers: list[Callable[[Machine], None]] = []
        self.idle_turn = False    # the last turn found this CPU halted and ran nothing
        self.watchdog = Watchdog()   # the wall-clock limit of `run` (emu/core/watchdog.py)
        self.started = _boot is None   # an application processor starts at its SIPI
        self.reinit = False       # an INIT reached this running application processor
        self._setup_ap: Callable[[Machine], None] | None = None   # boot CPU, during a run
        engine_loader.tell_if_stock()
        uc = self.uc = Uc(UC_ARCH_X86, UC_MODE_64)
        uc.ctl_set_cpu_model(UC_CPU_X86_EPYC)
        # Unicorn's register reset zeroes the x87 control word, the tags (every register
        # valid) and MXCSR (every SSE exception unmasked); a CPU comes out of reset with
        # them as QEMU's pc sets them.
        uc.reg_write(UC_X86_REG_FPCW, FCW_FNINIT)
        uc.reg_write(UC_X86_REG_FPTAG, FTW_ALL_EMPTY)
        uc.reg_write(UC_X86_REG_MXCSR, MXCSR_RESET)
        if _boot is None:
            self_check()
            # One host mapping covers guest-physical [0, layout.end): host offset = guest
            # address, the PCI hole included but never mapped into Unicorn or touched. Private
            # anonymous memory: reading a page never touched maps the shared zero page, so only
            # what the guest writes becomes resident (a shared mapping would allocate on reads
            # too). Every CPU's engine maps this same buffer.
            self.ram = mmap.mmap(-1, self.layout.end, flags=mmap.MAP_PRIVATE | _MAP_NORESERVE)
            self.ram_addr = ctypes.addressof(ctypes.c_char.from_buffer(self.ram))
            # What the loader wrote since; whoever else writes `ram` calls fresh_ram.forget().
            self.fresh_ram = FreshRam()
        else:
            self.ram, self.ram_addr = _boot.ram, _boot.ram_addr
            self.fresh_ram = _boot.fresh_ram
        for base, length in self.layout.ranges:
            uc.mem_map_ptr(base, length, UC_PROT_ALL, self.ram_addr + base)
        self.hostvm = HostVm(uc)
        # Several CPUs: each engine learns which of its translated blocks another CPU overwrote
        # (emu/engine/code_group.py); None with one CPU.
        self.code_group = (CodeGroup(uc, self.cpu_index, self.ram_addr, self.layout.end,
                                     None if _boot is None else _boot.uc)
                           if cpus > 1 else None)
        self.ctx = Context(uc)
        self.mem = GuestMemory(uc, self.ram, self.layout.below_4g, self.ctx,
                               high_end=self.layout.end)
        if self.code_group is not None and self.code_group.available:
            self.mem.written = self.code_group.written
        self.deliverer = Deliverer(uc, self.ctx, self.mem)
        self.io_trap = IoTrap(uc, self.ctx)
        self.breakpoints = Breakpoints(uc)    # DR7 loads by L0 (world switches)
        self.tracer = tracer if _boot is None else _boot.tracer
        # Installers of per-run memory hooks (the `mem` trace, emu/tools/memtrace.py): called at
        # the start of each run, their hooks removed at its end.
        self.memory_hooks: list[Callable[[Uc], list[int]]] = []
        self.tsc = 0
        self.tsc_offset = 0      # TSC_OFFSET of the guest now running (set by the extension)
        self.tsc_ratio = TSC_RATIO_RESET     # its TSC ratio, 8.32 fixed point (APM 15.30.5)
        # With several CPUs `tsc` is the machine's time as this CPU has seen it, and a WRMSR
        # to the TSC moves only this CPU's TSC: by tsc_adjust (0 on one CPU).
        self.tsc_adjust = 0
        self.cpuid = Cpuid(cpu if _boot is None else _boot.cpuid.model)
        self.sync_cpu_features()
        self.msrs = MsrFile(_UnicornMsrs(uc, self.hostvm), self._read_tsc, self._write_tsc,
                            hostvm.MAXPHYADDR)
        msrs_amd.install(self.msrs, self.cpuid)
        self.supervisor_keys = SupervisorKeys(self)   # IA32_PKRS, in the engine (pkeys.py)
        self.lbr = BranchRecorder(self)      # DebugCtl.LBR: the last branch (emu/core/lbr.py)
        self.strict = False       # stop at accesses to physical addresses with nothing there
        self.explain = True       # one stderr line per surprising event a user should hear of (-q: off)
        self.open_bus = OpenBus(self)
        if _boot is None:
            self.ports: dict[int, PortDevice] = {}
            self.devices: list[PortDevice] = []
            self.serial = Serial16550(stdout)
            self.add_device(self.serial)
            self.add_device(DebugExit(self._guest_exit))
            self.add_device(FwCfg(ram_size, cpus))
            self.irq = InterruptController(self)     # local APIC, interrupt points, virtual time
            self.apic = self.irq.apic
            self.devices.append(self.apic)
            self.pc = PcPlatform(self)               # PIC, PIT, I/O APIC, CMOS, PCI, ... (pc.py)
        else:
            # The platform is the boot CPU's: port devices, the I/O APIC (mapped into this CPU's
            # engine too) and the APIC bus; the 8259's INTR is offered to its LINT0 too.
            self.ports, self.devices, self.serial = _boot.ports, [], _boot.serial
            self.irq = InterruptController(self)
            self.apic = self.irq.apic
            self.devices.append(self.apic)
            self.pc = _boot.pc
            assert _boot.apic.bus is not None
            _boot.apic.bus.attach(self.apic)
            self.apic.on_level_eoi = self.pc.ioapic.eoi
            # The 8259's INTR is offered to every CPU's LINT0, as in QEMU (devices/apic.py).
            self.apic.extint = self.pc.pic
            self.apic.extint_shared = lambda: _boot.apic.enabled
            self.apic.on_startup = self.start_up
            self.irq.map_mmio(IOAPIC_BASE, IOAPIC_MMIO_SIZE, self.pc.ioapic)
            self.pc.testdev.iomem.map_into(uc)
        self.perf = PerfCounters(self)       # PerfCtr0-3 count CPU cycles (emu/core/perfctr.py)
        self.world_observers: list[Callable[[str, str], None]] = []
        self.router: ExitRouter | None = None
        # Moves with every change of `_exits`: the C paths that stand in for the machine's own
        # handlers check them again only then (fast_deliver.py, apic_fast.py).
        self.exits_generation = 0
        self._exits: dict[int, Callable[[int], None]] = {
            hostvm.VMEXIT_MSR: self._exit_msr,
            hostvm.VMEXIT_CPUID: self._exit_cpuid,
            hostvm.VMEXIT_RDTSC: self._exit_rdtsc,
            hostvm.VMEXIT_RDTSCP: self._exit_rdtscp,
            hostvm.VMEXIT_SWINT: self._exit_intn,
            hostvm.VMEXIT_HLT: self._exit_hlt,
            hostvm.VMEXIT_DR7_WRITE: self._exit_dr7_write,
            VMEXIT_IRET: self._exit_iret,
            hostvm.VMEXIT_SHUTDOWN: lambda code: self.shutdown("shutdown (triple fault)"),
        }
        for code in (hostvm.VMEXIT_VMRUN, hostvm.VMEXIT_VMMCALL, hostvm.VMEXIT_VMLOAD,
                     hostvm.VMEXIT_VMSAVE, hostvm.VMEXIT_STGI, hostvm.VMEXIT_CLGI,
                     hostvm.VMEXIT_SKINIT, hostvm.VMEXIT_INVLPGA):
            self._exits[code] = self._exit_undefined_opcode
        self.irq.register_exits()           # MOV CR8 (the TPR)
        self.cr4_writes = Cr4Writes(self)     # MOV CR4: reserved bits #GP
        self.table_loads = TableLoads(self)   # LGDT/LIDT/LLDT/LTR: non-canonical bases #GP
        self.rdpmc = Rdpmc(self)              # RDPMC: Unicorn's raises #UD
        self.general_detect = GeneralDetect(self)   # DR7.GD: MOV DRn raises #DB
        self.data_breakpoints = DataBreakpoints(self)   # DR7 R/W 01b/11b: #DB after the access
        self.breakpoints.on_load = self.data_breakpoints.sync
        self._result: RunResult | None = None
        self._pending: Callable[[], None] | None = None
        self._pause: str | None = None     # a debugger stop requested (see `pause`)
        self._by_l0 = False                # the last exit was answered by the machine's handler
        # Exits reach Python through the C replay engine when it is built (emu/engine/replay.py):
        # world switches it has a recorded program for never leave C.
        self.replay: replay.Engine | None = None
        self.replay_listeners: list[Callable[[], None]] = []
        self._replay_seen = 0
        # The engine's state word when the exit being handled reached Python (before replay_sync
        # cleared it): what a program recorded for this exit would guard on.
        self.replay_entry_state = 0
        if replay.available():
            self.replay = replay.Engine(uc, self.ctx, self.ram_addr, self.layout.below_4g,
                                        self._on_intr_c)
        # Virtual time: instructions retired, exit costs, events (emu/core/timebase.py).
        self.timebase = Timebase(self)
        # L1's RDTSC and CPUID answered in C while nothing else would happen (fast_exits.py).
        self.fast_exits = FastExits(self, TSC_STEP)
        # L1's exceptions delivered through its IDT in C on the common path (fast_deliver.py).
        self.fast_deliver = FastDeliver(self)
        if self.replay is not None:
            self.replay.set_exit_costs(self.timebase.costs)
            if self.fast_exits.env:
                self.timebase.attach_c(self.replay.fast)
        # L1's x2APIC writes (EOI, TPR, self-IPIs, the TSC deadline) in C (apic_fast.py).
        self.apic_fast = ApicFast(self)
        self._hooks = [
            *([] if self.replay else [uc.hook_add(UC_HOOK_INTR, self._on_intr_py)]),
            (self.replay.hook_in(self._on_in_c) if self.replay
             else uc.hook_add(UC_HOOK_INSN, self._on_in_py, None, 1, 0, UC_X86_INS_IN)),
            uc.hook_add(UC_HOOK_INSN, self._on_out_py, None, 1, 0, UC_X86_INS_OUT),
            uc.hook_add(UC_HOOK_INSN, self._on_syscall, None, 1, 0, UC_X86_INS_SYSCALL),
            uc.hook_add(UC_HOOK_MEM_UNMAPPED, self._on_unmapped),
        ]
        self._insn_budget: int | None = None
        self._deliveries_in_a_row = 0   # with a limit: deliveries since an instruction started
        # Instructions run, counted only while a counting hook is in (an instruction limit, or
        # count_insns: a Python hook per instruction, so never by default).
        self.count_insns = False
        self.insns = 0
        self.insns_counted = False
        self._start: int | None = None
        self.extensions = list(extensions)
        for ext in self.extensions:
            ext.attach(self)
        self._own_hooks = binding.hook_count(uc)
        # Work that must run between two emulation slices (hooks added or removed, with the
        # translated code flushed): `between_slices` queues it and stops emulation.
        self._between: list[Callable[[], None]] = []
        if tracer is not None:
            tracer.bind(self)
        self._begin = 0
        # The boot CPU as it powers on, for the platform reset of a resume from S3
        # (acpi_sleep.py; application processors are re-made instead, `reinitialised`).
        self._power_on = None if _boot is not None else (
            bytes(self.ctx.save().view), bytes(self.hostvm.buf), dict(self.msrs.values),
            {ext.name: copy.deepcopy(ext.snapshot_state()) for ext in self.extensions})
        if _boot is None:
            for _ in range(cpus - 1):
                Machine(ram_size, extensions=[ext.for_another_cpu() for ext in self.extensions],
                        cpus=cpus, quantum=quantum, _boot=self)

    # ---- extension entry points --------------------------------------------------------------------
    def register_exit(self, code: int, handler: Callable[[int], None]) -> None:
        self._exits[code] = handler
        self.exits_generation += 1

    def add_device(self, dev: PortDevice) -> None:
        self.devices.append(dev)
        for port in dev.ports():
            self.ports[port] = dev

    def level(self) -> str:
        return self.extensions[0].level() if self.extensions else "L1"

    def address_space(self) -> str:
        """The address space running now (coverage keys code on it; see Extension)."""
        return self.extensions[0].address_space() if self.extensions else "L1"

    def halts_itself(self) -> bool:
        """Does the machine's own handler still take HLT (no extension or tool replaced it)?"""
        return self._exits.get(hostvm.VMEXIT_HLT) == self._exit_hlt

    def exit_handler(self, code: int) -> Callable[[int], None] | None:
        """The handler registered for exit `code`, so a tool (the fuzzer) can wrap it."""
        return self._exits.get(code)

    def raise_exception(self, vector: int, error_code: int | None = None,
                        cr2: int | None = None) -> None:
        """Deliver a hardware exception at the current RIP (the faulting instruction)."""
        rip = self.uc.reg_read(UC_X86_REG_RIP)
        self._defer(lambda: self._deliver(Event(vector, Kind.EXCEPTION, error_code, cr2), rip))

    def deliver_event(self, event: Event, return_rip: int, injected: bool = False) -> None:
        """Deliver `event` once emulation has stopped. An injected event (EVENTINJ) is never
        itself intercepted; exceptions raised while delivering it can be."""
        self._defer(lambda: self._deliver(event, return_rip, injected))

    def stop_at_access(self, action: Callable[[int], None]) -> None:
        """From a memory hook: stop the engine (engine patch 0004 stops at the accessing
        instruction, its accesses up to this one done) and call `action` with that
        instruction's RIP, after anything already deferred."""
        earlier = self._pending

        def run() -> None:
            if earlier is not None:
                earlier()
            action(self.uc.reg_read(UC_X86_REG_RIP))
        self._defer(run)

    def step(self, rip: int) -> None:
        """Run the one instruction at `rip` in Unicorn, outside the run loop. Unicorn counts
        instructions with a code hook that only code translated while it exists calls, so the
        block cached at `rip` is dropped first: run as it was, it would not stop after one."""
        self.uc.ctl_remove_cache(rip, rip + 1)
        try:
            self.uc.emu_start(rip, _UNTIL, count=1)
        finally:
            self.replay_sync()

    def single_step_trap(self, return_rip: int) -> None:
        """The single-step #DB of an instruction that completed outside Unicorn's translator (a
        world switch L0 performed for it), which therefore never raised it: DR6.BS set, the trap
        taken with RIP at `return_rip`, the next instruction (APM vol. 2, 13.1.1.3 and 13.1.3.3)."""
        def trap() -> None:
            self.uc.reg_write(UC_X86_REG_DR6, self.uc.reg_read(UC_X86_REG_DR6) | DR6_BS)
            self._deliver(Event(DB, Kind.EXCEPTION), return_rip)
        self._defer(trap)

    def sync_cpu_features(self) -> None:
        """Tell Unicorn's own helpers and translator what the model's CPUID says where they
        check features themselves (XSETBV's XCR0 bits, CLWB, PCOMMIT, CR4.PKE); again whenever
        the CPUID table is replaced."""
        eax, _, _, edx = self.cpuid.query(LEAF_XSAVE, 0)
        set_xsave_components(self.uc, eax | edx << 32)
        _, ebx, ecx, _ = self.cpuid.query(7, 0)
        translated = CPUID_7_0_EBX_CLWB | CPUID_7_0_EBX_PCOMMIT
        set_feature_bits(self.uc, FEAT_7_0_EBX, translated, ebx)
        set_feature_bits(self.uc, FEAT_7_0_ECX, CPUID_7_0_ECX_PKU, ecx)

    def deliver_now(self, event: Event, return_rip: int) -> None:
        """Deliver `event` at once: only where emulation has already stopped (the interrupt
        check at an instruction boundary)."""
        if event.kind is Kind.EXTERNAL and self.fast_deliver.external(event.vector, return_rip):
            return
        self._deliver(event, return_rip)

    def run_deferred(self) -> None:
        """Finish now a delivery an exit handler deferred (`deliver_event`), if any: the
        interrupt window's taker runs it at the boundary it stopped at."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending()

    def interrupt_check(self, virtual: bool = False) -> None:
        """Something gating interrupts changed (GIF, V_IRQ): look at the next boundary if an
        interrupt is pending (`virtual`: the extension has one of its own). Only from exit
        handlers (the INTR hook), never from MMIO callbacks."""
        self.irq.check_soon(virtual)

    def svm_enabled(self) -> bool:
        """Is a hypervisor at work: a nested guest running, or EFER.SVME set in L1?"""
        return self.level() != "L1" or bool(self.msrs.rdmsr(MSR_EFER) & EFER_SVME)

    def at_trampoline(self) -> bool:
        """Before the guest's first instruction: the CPU is still in L0's trampoline (its
        registers and intercepts are L0's; hostvm.TRAMPOLINE_INSNS instructions enter L1)."""
        return self.uc.reg_read(UC_X86_REG_RIP) == hostvm.TRAMPOLINE

    def claim_cr8(self) -> None:
        """The world now running reaches the APIC's TPR through CR8 (no V_INTR_MASKING): L0
        intercepts its CR8 accesses as it does L1's. The next world switch undoes it."""
        self.irq.window.intercept_cr(8)

    def world_changed(self, old: str, new: str) -> None:
        self.irq.window.resync()
        for observer in self.world_observers:
            observer(old, new)

    def shutdown(self, message: str) -> None:
        """The processor shuts down (triple fault), unless a hypervisor intercepts it."""
        where = self._where() if self.tracer is not None and self.tracer.on("exc") else None
        intercepted = self.router is not None and self.router.on_shutdown(message)
        if where is not None:
            self.tracer.line("exc", where, f"{message}: " + (
                "#VMEXIT(SHUTDOWN) to the hypervisor" if intercepted else "the CPU shuts down"))
        if intercepted:
            return
        self._finish("shutdown", STATUS_SHUTDOWN, message)

    def stop(self, reason: str, status: int, message: str) -> None:
        self._finish(reason, status, message)

    def reset_request(self, message: str) -> None:
        """A device asked for a machine reset. The run ends there, as QEMU's with -no-reboot
        (how kvm-unit-tests and our tests run it) ends with a triple fault's reset."""
        self._finish("reset", STATUS_SHUTDOWN, message)

    def poweroff(self, message: str) -> None:
        """ACPI power-off: QEMU exits with status 0, and so does the run."""
        self._finish("poweroff", STATUS_HALTED, message)

    def suspend_request(self, port: int) -> None:
        """The guest wrote ACPI S3 to PM1 control with an OUT to `port`: the CPU doing it stops
        right after that instruction (an I/O trap, emu/engine/io_trap.py) and the machine
        sleeps there (emu/core/acpi_sleep.py)."""
        cpu = self.cpu_list[0].running or self

        def sleep() -> None:
            acpi_sleep.sleep(cpu)
        if not cpu.io_trap.arm(port, undo=False, action=lambda: cpu._defer(sleep)):
            raise Unsupported(f"ACPI S3 by the OUT at rip {cpu.uc.reg_read(UC_X86_REG_RIP):#x}: "
                              "the code was translated without I/O traps, so the sleep cannot "
                              "begin at that instruction")

    def reset_to_real_mode(self, cs: int, ip: int, cr0: int, sp: int) -> None:
        """A platform reset of this CPU (registers, MSRs, local APIC, nested SVM state as at
        power-on; its place in virtual time kept), then what the firmware does to jump to CS:IP
        in real mode (a resume from S3). Outside emulation."""
        assert self._power_on is not None, "only the boot CPU is reset in place"
        ctx_bytes, l0, msrs, exts = self._power_on
        uc = self.uc
        world = self.level()
        self.hostvm.buf[:] = l0
        self.ctx.view[:] = ctx_bytes
        self.ctx.restore()
        uc.ctl_flush_tb()
        flush_tlb(uc)
        self.msrs.values.clear()
        self.msrs.values.update(msrs)
        self.lbr.restored()
        for ext in self.extensions:
            ext.power_on_reset(copy.deepcopy(exts[ext.name]))
        if self.level() != world:
            self.world_changed(world, self.level())    # tracer, events, debugger: back in L1
        self.timebase.rebase()
        apic = self.apic
        old = apic.mmio_base()
        apic.base_msr = APIC_DEFAULT_BASE | APIC_BASE_EN | (APIC_BASE_BSP if self.cpu_index == 0
                                                            else 0)
        apic.reset()
        if apic.mmio_base() != old:
            apic.remap(old, apic.mmio_base())
        self.irq.halted = False
        self.irq.window.disarm()
        self._start = self._begin = self.hostvm.enter_real_mode(cs, ip, cr0, sp)
        for reg in _GENERAL_REGS:
            uc.reg_write(reg, 0)
        uc.reg_write(UC_X86_REG_RIP, self._start)
        self.io_trap.set_flag()
        self.wake()

    def between_slices(self, action: Callable[[], None]) -> None:
        """Run `action` once emulation has stopped, before it continues where it stopped (from
        hooks: adding a code hook needs the translated code flushed, which must not happen
        under the code running)."""
        self._between.append(action)
        self.uc.emu_stop()

    def pause(self, message: str) -> None:
        """Stop at the next instruction boundary for a debugger, after finishing any event in
        flight (a VMRUN's injected event, an exception being delivered): `run` returns reason
        "pause" and the next `run` continues exactly there. `stop` instead ends the run as is."""
        cpu = self.cpu_list[0].running or self     # several CPUs: the one in its turn
        cpu._pause = message
        cpu.uc.emu_stop()

    # ---- loading ----------------------------------------------------------------------------------
    def load_multiboot(self, image: "BootImage", cmdline: str,
                       modules: "ModuleLayout | None" = None) -> None:
        from emu.core import firmware
        from emu.loader.multiboot import MBI_ADDR, build_mbi
        fresh = self.fresh_ram
        for span in firmware.install(self):  # BDA, MP and ACPI tables, MTRRs: what SeaBIOS leaves
            fresh.wrote(*span)
        for ap in self.cpu_list[1:]:
            firmware.install_mtrrs(ap)   # SeaBIOS programs every CPU's MTRRs alike
        if modules is None:                  # none: mods_addr still says where they would go
            from emu.loader.modules import place_modules
            modules = place_modules(image, cmdline, "", [], self.ram_size)
        # The information block first, the kernel after it: as in QEMU's option ROM, a kernel
        # segment over the block's area wins.
        mbi = build_mbi(self.ram_size, cmdline, MBI_ADDR, mods_count=modules.count,
                        mods_addr=modules.mods_addr)
        self._write_ram(MBI_ADDR, mbi)
        for addr, length in image.bss:
            if not self.layout.is_ram(addr, length):
                raise ImageError(f"bss at {addr:#x}+{length:#x} is outside the "
                                 f"{self.ram_size >> 20} MiB of RAM")
            fresh.zero(self.ram, addr, length)
        for addr, data in image.segments:
            if not self.layout.is_ram(addr, len(data)):
                raise ImageError(f"segment at {addr:#x}+{len(data):#x} is outside the "
                                 f"{self.ram_size >> 20} MiB of RAM")
            self._write_ram(addr, data)
        for addr, data in modules.blobs:
            self._write_ram(addr, data)
        self._start = self.hostvm.enter_multiboot(image.entry, MULTIBOOT_MAGIC, MBI_ADDR)
        self.uc.reg_write(UC_X86_REG_RIP, self._start)   # so a snapshot taken now resumes here
        self.io_trap.set_flag()

    def _write_ram(self, addr: int, data: bytes) -> None:
        self.ram[addr:addr + len(data)] = data
        self.fresh_ram.wrote(addr, len(data))

    def load_linux(self, boot: "LinuxBoot") -> None:
        """A bzImage at its 32-bit entry, in the state the kernel's real-mode setup code leaves
        after running on SeaBIOS (emu/loader/linux.py): the firmware's tables, the zero page,
        command line, GDT, kernel and initrd in RAM, the 8259s masked and NMIs disabled at the
        CMOS index port, as the setup code's last port writes leave them."""
        from emu.core import firmware
        from emu.loader.linux import (CMOS_INDEX_NMI_OFF, PIC_MASTER_MASK, PIC_SLAVE_MASK)
        for span in firmware.install(self):
            self.fresh_ram.wrote(*span)
        for ap in self.cpu_list[1:]:
            firmware.install_mtrrs(ap)
        for addr, data in boot.segments:
            if not self.layout.is_ram(addr, len(data)):
                raise ImageError(f"{addr:#x}+{len(data):#x} is outside the "
                                 f"{self.ram_size >> 20} MiB of RAM")
            self._write_ram(addr, data)
        pc = self.pc
        pc.pic.write(0xA1, 1, PIC_SLAVE_MASK)
        pc.pic.write(0x21, 1, PIC_MASTER_MASK)
        pc.cmos.write(0x70, 1, CMOS_INDEX_NMI_OFF)
        self._start = self.hostvm.enter_linux32(boot.entry, boot.boot_params, *boot.gdt)
        self.uc.reg_write(UC_X86_REG_RIP, self._start)
        self.io_trap.set_flag()

    def resume_at(self, rip: int) -> None:
        """Make the next `run` continue at `rip` (after a snapshot restore)."""
        self._start = rip
        self.io_trap.set_flag()      # snapshots from before the flag existed lack it

    # ---- running ----------------------------------------------------------------------------------
    def run(self, *, max_insns: int | None = None, timeout: float | None = None) -> RunResult:
        """Run until the guest exits, halts, shuts down or a limit is reached."""
        if self._start is None:
            raise OptionError("no guest loaded")
        if max_insns is not None and max_insns <= 0:
            raise OptionError("--max-insns must be positive")
        if timeout is not None and not 0 < timeout <= MAX_TIMEOUT:
            raise OptionError(f"--timeout must be positive and at most {MAX_TIMEOUT:.0f} seconds")
        self.fresh_ram.forget()
        uc = self.uc
        extra = []
        extra_ap: list[tuple[Machine, int]] = []
        self._insn_budget = max_insns
        self._deliveries_in_a_row = 0
        self._counting = max_insns is not None or self.count_insns
        if max_insns is not None or self.count_insns:
            self.insns_counted = True
            extra.append(uc.hook_add(UC_HOOK_CODE, self._count_insn))
        if self.tracer and self.tracer.on("mem") and not self.memory_hooks:
            raise OptionError("the mem trace needs emu.tools.memtrace.attach(machine)")
        if self.tracer is not None:
            self.tracer.run_started()       # its hooks, while its focus is open
        deadline = time.monotonic() + timeout if timeout else None
        if deadline is not None:
            self.watchdog.arm(uc, deadline)
        self._begin = self._start
        aps = self.cpu_list[1:]

        def setup_ap(ap: Machine) -> None:
            """What this run's options give every CPU (and one re-made by an INIT)."""
            ap.strict, ap.explain = self.strict, self.explain
            if ap.replay is not None and self.replay is not None:
                ap.replay.enabled = self.replay.enabled
            if max_insns is not None or self.count_insns:   # one count for the machine
                extra_ap.append((ap, ap.uc.hook_add(UC_HOOK_CODE, self._count_insn)))
            if self.tracer and self.tracer.on("insn"):
                extra_ap.append((ap, ap.uc.hook_add(UC_HOOK_CODE, ap._trace_insn)))
            for install in self.memory_hooks:
                extra_ap.extend((ap, h) for h in install(ap.uc))
        for ap in aps:
            setup_ap(ap)
        self._setup_ap = setup_ap
        try:
            if aps:
                RoundRobin(self.cpu_list, self.quantum, self.smp_position, self.only_cpu).run(
                    lambda cpu, quantum, horizon, resume: cpu._turn(deadline, timeout, quantum,
                                                                    horizon, resume))
            else:
                while self._result is None and self._turn(deadline, timeout):
                    pass
        except Unsupported as e:
            self._finish("unsupported", STATUS_UNSUPPORTED, str(e))
        finally:
            for cpu in self.cpu_list:
                cpu.replay_sync()
            if deadline is not None:
                self.watchdog.disarm()
            for h in extra:
                uc.hook_del(h)
            for ap, h in extra_ap:
                ap.uc.hook_del(h)
            self._setup_ap = None
            self._insn_budget = None     # deliveries outside a run (a debugger) count nothing
            if self.tracer is not None:
                self.tracer.run_ended()
            self._between.clear()
            self._start = uc.reg_read(UC_X86_REG_RIP)
            for cpu in self.cpu_list:
                cpu._pause = None
        result, self._result = self._result, None
        for ap in self.cpu_list[1:]:
            ap._result = None
            if ap.started:
                ap._start = ap.uc.reg_read(UC_X86_REG_RIP)
        assert result is not None
        return result

    def _turn(self, deadline: float | None, timeout: float | None, quantum: int = 0,
              horizon: int | None = None, resume: Position | None = None) -> bool:
        """One pass of the run loop: an interrupt point, then guest code until emulation stops.
        With several CPUs (emu/core/smp.py) at most `quantum` instructions (0: no bound, this
        CPU runs alone), and none past virtual time `horizon` (another CPU's next timer);
        `resume`: finish a turn an earlier run cut short, where it stopped (no interrupt point:
        the turn never ended). False: the run ends."""
        uc = self.uc
        begin = self._begin
        took = resume is None and self.irq.point()   # interrupts, HLT wake-up (emu/core/irq.py)
        while resume is None and self._pending is not None and self._result is None:
            pending, self._pending = self._pending, None
            pending()                 # what a world switch there asked for (a #DB trap)
            took = True
        if took:
            begin = self._begin = self._rip()
        if self._result is not None:
            return False
        self.idle_turn = self.irq.halted
        if self.reinit:               # the scheduler re-makes this CPU (`reinitialised`)
            return True
        if self.idle_turn:            # several CPUs: halted until another's turn wakes it
            return True
        count = self.irq.slice()
        bound = 0
        if self.cpus > 1:
            if quantum:
                count = min(count, quantum) if count else quantum
            if horizon is not None:
                left = max(1, horizon - self.tsc)
                count = min(count, left) if count else left
            if resume is not None:    # the rest of a turn cut short, its time as a whole
                count, bound = resume.left or 0, resume.bound
            else:
                bound = count
            group = self.code_group
            if self.stale_code:       # code may have changed under this engine: drop it all
                uc.ctl_flush_tb()
                self.stale_code = False
            if group is not None and group.available:
                group.sync()          # drop only the code other CPUs overwrote since its last turn
            else:                     # the stock engine: no group, drop all after another CPU
                for other in self.cpu_list:
                    if other is not self:
                        other.stale_code = True
        if deadline is not None and time.monotonic() >= deadline:
            self._finish("timeout", STATUS_LIMIT, f"--timeout of {timeout} s reached")
            return False
        self.fast_exits.arm()
        boot = self.cpu_list[0]
        insns_before = boot.insns
        retired_before = self.timebase.retired()
        try:
            # one CPU: the bound is the next timer's time; several: the turn's instructions
            uc.emu_start(begin, _UNTIL, count=self.timebase.bound(count, self.cpus == 1))
        except UcError as e:
            self.timebase.unbound()
            self.replay_sync()
            if self._result is None:
                self._finish("unsupported", STATUS_UNSUPPORTED,
                             f"unsupported: CPU stopped with {e} at rip "
                             f"{uc.reg_read(UC_X86_REG_RIP):#x}")
            return False
        self.timebase.unbound()
        self.replay_sync()
        if self.cpus > 1:
            # what the turn ran, in its bound's unit: instructions retired with the engine's
            # count (the deadline), else started (Unicorn's count=, as the run's count)
            self._cut_short(count, bound, self.timebase.retired() - retired_before
                            if self.timebase.exact else boot.insns - insns_before)
        # The slice ran out only if nothing else stopped it: not an event, the end of
        # the run, a debugger pause, work between slices or the wall-clock timeout (virtual
        # time must not advance for instructions that never ran). With the engine's count
        # (emu/core/timebase.py) the instructions that ran are time already; otherwise a turn
        # resumed after a cut (several CPUs) counts its whole bound at its end.
        self.irq.slice_done(0 if self.timebase.exact else (bound or count),
                            self._pending is None and self._result is None
                            and self._pause is None and not self._between
                            and (deadline is None or time.monotonic() < deadline))
        pending, self._pending = self._pending, None
        if pending is not None:
            while pending is not None and self._result is None:
                pending()     # may itself stop and defer (an instruction run alone)
                pending, self._pending = self._pending, None
        elif self._result is None and deadline is not None and time.monotonic() >= deadline:
            self._finish("timeout", STATUS_LIMIT, f"--timeout of {timeout} s reached")
        if self._pause is not None and self._result is None:
            self.cpu_list[0].paused_cpu = self.cpu_index
            self._finish("pause", STATUS_LIMIT, self._pause)
        while self._between:            # queued by hooks or by the pending work
            self._between.pop(0)()
        self._begin = self._rip()
        return True

    def _rip(self) -> int:
        """RIP, read from the CPU state in place when its address is known (uc.reg_read(RIP)
        returns the same word through the binding's several Python calls)."""
        return self.fast_exits.rip() if self.fast_exits.env else self.uc.reg_read(UC_X86_REG_RIP)

    def _cut_short(self, count: int, bound: int, ran: int) -> None:
        """Several CPUs: did this turn stop only because the run ends here (an instruction
        limit, a pause), in the middle of what it would have run? Then the scheduler's position
        keeps the rest of its bound (`ran` instructions of `count` ran), so that a later run
        finishes the turn exactly (emu/core/smp.py). Not when it stopped for an event of its
        own, which ends a turn anyway, nor when the instructions it ran were not counted."""
        boot = self.cpu_list[0]
        result = self._result
        ending = (result.reason == "max-insns" if result is not None
                  else self._pause is not None)
        if (not ending or not boot._counting or self._pending is not None or self._between
                or self.irq.kicked):
            return
        left = count - ran if count else 0
        if count and left <= 0:
            return                    # it ran its bound out: the turn is over
        boot.smp_position.left = left
        boot.smp_position.bound = bound

    # ---- application processors --------------------------------------------------------------
    def wake(self) -> None:
        """Something may have made this CPU runnable (an IPI, a SIPI, an interrupt routed to
        it): the CPU running now, if another, ends its turn at this instruction, so the
        scheduler looks again (a CPU running alone runs unbounded until then)."""
        boot = self.cpu_list[0]
        runner = boot.running
        if runner is None:        # from outside a run (a debugger, a test): a turn an earlier
            boot.smp_position.left = None   # run cut short is not finished but starts afresh
            return
        if runner is self:
            return
        irq = runner.irq
        if irq.in_mmio:
            irq.want_kick()
        else:
            irq.kick()

    def start_up(self, vector: int) -> None:
        """A start-up IPI reached this application processor while it waited for one: it
        starts in real mode at vector * 0x1000 (CS = vector << 8, IP = 0), with the INIT
        state's registers (EDX = the CPUID family/model/stepping)."""
        self.started = True
        self.wake()
        self._start = self._begin = self.hostvm.enter_startup(vector)
        self.uc.reg_write(UC_X86_REG_RDX, self.cpuid.query(1, 0)[0])
        self.uc.reg_write(UC_X86_REG_RIP, self._start)
        self.io_trap.set_flag()

    def enter_wait_for_sipi(self) -> None:
        """An INIT reached this application processor: it waits for SIPI. One that has run
        is re-made from power-on (`reinitialised`) once its turn ends."""
        if self.started:
            self.reinit = True
        else:
            self.apic.wait_for_sipi = True

    def reinitialised(self) -> "Machine":
        """This application processor after an INIT: a new CPU in its place (registers,
        engine, APIC, MSRs and nested state from power-on, waiting for SIPI) that keeps what
        INIT leaves alone: the MTRRs and its place in virtual time."""
        boot = self.cpu_list[0]
        bus = self.apic.bus
        new = Machine(self.ram_size, extensions=[e.for_another_cpu() for e in boot.extensions],
                      cpus=self.cpus, quantum=self.quantum, _boot=boot, _index=self.cpu_index)
        if bus is not None and self.apic in bus.apics:
            bus.apics.remove(self.apic)
        new.tsc, new.tsc_adjust = self.tsc, self.tsc_adjust
        new.msrs.values.update({i: v for i, v in self.msrs.values.items()
                                if i in MTRR_MSRS})
        if boot._setup_ap is not None:
            boot._setup_ap(new)
        for attach in boot.cpu_attachers:
            attach(new)
        return new

    def _finish(self, reason: str, status: int, message: str) -> None:
        """End the run, for every CPU: the one running stops at once."""
        if self._result is None:
            result = RunResult(reason, status, message, self.uc.reg_read(UC_X86_REG_RIP))
            for cpu in self.cpu_list:
                if cpu._result is None:
                    cpu._result = result
        for cpu in self.cpu_list:
            cpu.fast_exits.stop()
            cpu.uc.emu_stop()

    def _defer(self, action: Callable[[], None]) -> None:
        """Finish an event outside the hook: emulation stops first, so the state is final."""
        self._pending = action
        self.uc.emu_stop()

    def defer(self, action: Callable[[], None]) -> None:
        """From an exit handler: run `action` once emulation has stopped."""
        self._defer(action)

    def finished(self) -> bool:
        """The run has ended (exit, shutdown, unsupported, limit)."""
        return self._result is not None

    def run_alone(self, rip: int, lifted: int) -> None:
        """Run the one instruction at `rip` with L0's misc intercepts `lifted` off, and put them
        back (in whichever world the CPU is in then: L0's bits are in every world's)."""
        ctx = self.ctx.save()
        ctx.set_u64(OFF_INTERCEPT, ctx.u64(OFF_INTERCEPT) & ~lifted)
        ctx.restore()
        try:
            self.uc.emu_start(rip, _UNTIL, count=1)
        finally:
            self.replay_sync()
            ctx = self.ctx.save()
            ctx.set_u64(OFF_INTERCEPT, ctx.u64(OFF_INTERCEPT) | lifted)
            ctx.restore()

    def _guest_exit(self, status: int) -> None:
        self._finish("exit", status, f"guest wrote {status >> 1:#x} to isa-debug-exit")

    # ---- the replay engine (emu/engine/replay.py) ----------------------------------------------------------
    def replay_sync(self) -> None:
        """Python is about to run: bring state that mirrors the CPU up to date if programs ran
        since it last did, and stop programs from running on Python state that may now change.
        Every Python entry point calls this first (hooks, MMIO callbacks, the run loop)."""
        e = self.replay
        if e is None:
            self.timebase.sync()
            return
        self.fast_exits.disarm()
        self.timebase.sync()
        seq = e.seq_word.value
        if seq != self._replay_seen:
            self._replay_seen = seq
            for listener in self.replay_listeners:
                listener()
        if e.state_word.value:
            e.state_word.value = 0

    def replay_ready(self) -> bool:
        """May programs run from here on? Not while anything else wants Python to see every
        event: a trace, a debugger's or fuzzer's hooks, a pending interrupt or I/O trap, a stop."""
        e = self.replay
        if e is not None and e.enabled:
            self.irq.release_time_window()
        return (e is not None and e.enabled and self.tracer is None and not self.world_observers
                and binding.hook_count(self.uc) == self._own_hooks and self._result is None
                and self._pending is None and self._pause is None and not self.io_trap.armed
                and not self.irq.window.armed and not self.apic.signalled())

    def _on_intr_c(self, _uch: int, intno: int, _user: int) -> None:
        """The Python hook behind the C one: the binding's exception handling, which a raw
        ctypes callback does not have (an exception stops emulation and emu_start re-raises it)."""
        uc = self.uc
        try:
            fast = self.fast_exits
            state, rip = self.replay.state_word.value, fast.rip()
            self.replay_entry_state = state
            self.replay_sync()
            self._by_l0 = False
            self._on_intr(uc, intno, None)
            if self._by_l0:
                fast.after_exit(intno, state, rip)
            self.timebase.rebound()
            if not (self.irq.kicked or self._pending is not None or self._result is not None):
                fast.arm()        # else emulation stops here: the turn's end arms again
        except BaseException as e:          # noqa: B036 - re-raised by Uc.emu_start
            binding.stop_with_exception(uc, e)

    def _on_in_c(self, _uch: int, port: int, size: int, _user: int) -> int:
        """The Python IN hook behind the C one (replay.c `replay_in`), with the binding's
        exception handling."""
        try:
            return self._on_in_py(self.uc, port, size, None)
        except BaseException as e:          # noqa: B036 - re-raised by Uc.emu_start
            binding.stop_with_exception(self.uc, e)
            return (1 << (8 * size)) - 1

    # The Python hooks as Unicorn calls them: the handler, then the run's bound in instructions
    # brought up to the time the handler spent (emu/core/timebase.py).
    def _on_intr_py(self, uc: Uc, intno: int, data: object) -> None:
        self._on_intr(uc, intno, data)
        self.timebase.rebound()

    def _on_in_py(self, uc: Uc, port: int, size: int, data: object) -> int:
        value = self._on_in(uc, port, size, data)
        self.timebase.rebound()
        return value

    def _on_out_py(self, uc: Uc, port: int, size: int, value: int, data: object) -> None:
        self._on_out(uc, port, size, value, data)
        self.timebase.rebound()

    # ---- hooks --------------------------------------------------------------------------------------
    def _on_intr(self, uc: Uc, intno: int, _data: object) -> None:
        if self.replay is None:
            self.timebase.sync()
        self.timebase.charge(intno)
        code = intno - hostvm.UC_EXIT_BASE
        if code == hostvm.VMEXIT_EXCP0 + DB and self.io_trap.armed:
            self._io_trap_fired()
            return
        if self._result is not None:
            uc.emu_stop()
            return
        if code == hostvm.VMEXIT_VINTR and self.irq.window.armed:
            self.irq.window_exit()          # our interrupt window opened
            return
        handler = self._exits.get(code)
        try:
            if self.router is not None and self.router.on_exit(code):
                return
            if handler is not None:
                self._by_l0 = True
                handler(code)
            elif hostvm.VMEXIT_EXCP0 <= code < hostvm.VMEXIT_INTR:
                self._exit_exception(code - hostvm.VMEXIT_EXCP0)
            else:
                raise Unsupported(f"event {intno:#x} at rip {uc.reg_read(UC_X86_REG_RIP):#x}")
        except Unsupported as e:
            self._finish("unsupported", STATUS_UNSUPPORTED, str(e))

    def where(self) -> str:
        """Where the CPU is, for trace lines: world, mode, CPL, RIP."""
        return self._where()

    def _where(self) -> str:
        ctx = self.ctx.save()
        rip = self.uc.reg_read(UC_X86_REG_RIP)
        named = self.tracer.symbolize(rip) if self.tracer is not None else ""
        return f"[{self._cpu_tag()}{self.level()} {ctx.mode_bits()} cpl{ctx.cpl}] {rip:#x}{named}"

    def _cpu_tag(self) -> str:
        """`cpuN ` in trace lines of a machine with several CPUs."""
        return f"cpu{self.cpu_index} " if self.cpus > 1 else ""

    def _advance(self, length: int) -> None:
        self.retire(self.uc.reg_read(UC_X86_REG_RIP) + length)

    def retire(self, next_rip: int) -> None:
        """The instruction at RIP, which L0 performed in Python, completes: RIP moves on to
        `next_rip`. Unicorn stopped before the instruction, so it raises no single-step trap
        for it; with RFLAGS.TF set the #DB (DR6.BS) is owed here, at `next_rip`."""
        self.ctx.set_rip(next_rip)
        if self.uc.reg_read(UC_X86_REG_RFLAGS) & RFLAGS_TF:
            self.single_step_trap(next_rip)

    def _exit_exception(self, vector: int) -> None:
        if vector == UD and bios_services.service(self):
            return                # a real-mode BIOS call reached its entry point
        if vector == UD and self._icebp():
            return
        ctx = self.ctx.save()
        err = ctx.error_code if vector in HAS_ERROR_CODE else None
        cr2 = self.hostvm.exitinfo2(ctx.u64(OFF_VM_VMCB)) if vector == PF else None
        if vector == GP and err == 0 and is_stack_fault(self):
            vector = SS_FAULT
        self._raise_from_exit(vector, err, cr2)

    def _raise_from_exit(self, vector: int, error_code: int | None = None,
                         cr2: int | None = None) -> None:
        """raise_exception for an exit handler that returns right after: delivered in C inside
        the hook when it can be (fast_deliver.py), else after the engine stops."""
        if not self.fast_deliver.now(vector, error_code, cr2, self.uc.reg_read(UC_X86_REG_RIP)):
            self.raise_exception(vector, error_code, cr2)

    def _exit_msr(self, code: int) -> None:
        uc = self.uc
        write = self.ctx.save().error_code == 1
        index = uc.reg_read(UC_X86_REG_RCX) & 0xFFFFFFFF
        try:
            if write:
                value = ((uc.reg_read(UC_X86_REG_RDX) & 0xFFFFFFFF) << 32) | (
                    uc.reg_read(UC_X86_REG_RAX) & 0xFFFFFFFF)
                self.msrs.wrmsr(index, value)
            else:
                value = self.msrs.rdmsr(index)
                uc.reg_write(UC_X86_REG_RAX, value & 0xFFFFFFFF)
                uc.reg_write(UC_X86_REG_RDX, value >> 32)
        except GeneralProtection as e:
            if self.tracer and self.tracer.on("msr"):
                self.tracer.line("msr", self._where(), f"{'wrmsr' if write else 'rdmsr'} "
                                 f"{index:#x} -> #GP ({e})")
            self._raise_from_exit(GP, 0)
            return
        if self.tracer and self.tracer.on("msr"):
            self.tracer.line("msr", self._where(),
                             f"{'wrmsr' if write else 'rdmsr'} {index:#x} {'<-' if write else '->'} {value:#x}")
        self._advance(2)

    def _exit_cpuid(self, code: int) -> None:
        uc = self.uc
        leaf = uc.reg_read(UC_X86_REG_RAX) & 0xFFFFFFFF
        sub = uc.reg_read(UC_X86_REG_RCX) & 0xFFFFFFFF
        a, b, c, d = regs = self.cpuid.query(leaf, sub)
        self.fast_exits.remember_cpuid(leaf, sub, regs)
        uc.reg_write(UC_X86_REG_RAX, a)
        uc.reg_write(UC_X86_REG_RBX, b)
        uc.reg_write(UC_X86_REG_RCX, c)
        uc.reg_write(UC_X86_REG_RDX, d)
        self._advance(2)

    def _read_tsc(self) -> int:
        self.tsc += TSC_STEP
        own = (self.tsc + self.tsc_adjust) & 0xFFFFFFFFFFFFFFFF    # a 64-bit count, then scaled
        if self.tsc_ratio != TSC_RATIO_RESET:       # a guest's: scaled, then offset
            own = (own * self.tsc_ratio) >> 32
        return (own + self.tsc_offset) & 0xFFFFFFFFFFFFFFFF

    def _write_tsc(self, value: int) -> None:
        own = (value - self.tsc_offset) & 0xFFFFFFFFFFFFFFFF
        if self.tsc_ratio != TSC_RATIO_RESET:
            own = (own << 32) // self.tsc_ratio if self.tsc_ratio else self.tsc
        if self.cpus > 1:       # this CPU's TSC moves; the machine's time does not
            self.tsc_adjust = (own - self.tsc) & 0xFFFFFFFFFFFFFFFF
        else:
            self.tsc = own

    def _exit_rdtsc(self, code: int) -> None:
        if self.mem.read_code(self.uc.reg_read(UC_X86_REG_RIP), 3) == b"\x0F\x01\xF9":
            self._exit_rdtscp(code)    # Unicorn 2.1.4 checks (and reports) RDTSCP as RDTSC
            return
        t = self._read_tsc()
        self.uc.reg_write(UC_X86_REG_RAX, t & 0xFFFFFFFF)
        self.uc.reg_write(UC_X86_REG_RDX, t >> 32)
        self._advance(2)

    def _exit_rdtscp(self, code: int) -> None:
        t = self._read_tsc()
        self.uc.reg_write(UC_X86_REG_RAX, t & 0xFFFFFFFF)
        self.uc.reg_write(UC_X86_REG_RDX, t >> 32)
        self.uc.reg_write(UC_X86_REG_RCX, self.msrs.rdmsr(MSR_TSC_AUX))
        self._advance(3)

    def _exit_hlt(self, code: int) -> None:
        next_rip = self.uc.reg_read(UC_X86_REG_RIP) + 1
        self.ctx.set_rip(next_rip)
        stepping = self.uc.reg_read(UC_X86_REG_RFLAGS) & RFLAGS_TF
        self.irq.halt(next_rip if stepping else None)   # wait for an interrupt

    def _exit_undefined_opcode(self, code: int) -> None:
        """SVM instructions with no extension to implement them behave as on a CPU without SVM."""
        self.raise_exception(UD)

    def _exit_intn(self, code: int) -> None:
        rip = self.uc.reg_read(UC_X86_REG_RIP)
        insn = self.mem.read_code(rip, MAX_INSN_LENGTH)
        i = split_prefixes(insn, self.ctx.save().mode_bits()).length
        op = insn[i] if i < len(insn) else -1
        if op == 0xCC:
            ev, length = Event(BP, Kind.SOFTWARE), i + 1
        elif op == 0xCD:
            ev, length = Event(insn[i + 1], Kind.SOFTWARE), i + 2
        elif op == 0xCE:
            ev, length = Event(OF, Kind.SOFTWARE), i + 1
        else:
            raise Unsupported(f"software interrupt with opcode {insn[:i + 2].hex()}")
        ev.insn_len = length
        self._defer(lambda: self._deliver(ev, rip + length))

    def _icebp(self) -> bool:
        """Unicorn 2.1.4 decodes ICEBP (INT1, F1) as an undefined opcode (its translator leaves
        the instruction out) and raises #UD at it. The APM's INT1 is a trap-like #DB instead:
        the pushed RIP is the next instruction's, DR6 is left as it is (no BS, whatever TF
        says), no gate DPL check. True when the #UD at RIP was such an ICEBP, now delivered."""
        rip = self.uc.reg_read(UC_X86_REG_RIP)
        insn = self.mem.read_code(rip, MAX_INSN_LENGTH)
        length = split_prefixes(insn, self.ctx.save().mode_bits()).length + 1
        if length > len(insn) or insn[length - 1] != OPCODE_INT1:
            return False
        ev = Event(DB, Kind.SOFTWARE, icebp=True, insn_len=length)
        self._defer(lambda: self._deliver(ev, rip + length))
        return True

    def _on_syscall(self, uc: Uc, _data: object) -> None:
        """Unicorn's SYSCALL only calls this hook (emu/core/syscall.py performs it)."""
        self.replay_sync()
        try:
            on_syscall(self)
        except Unsupported as e:
            self._finish("unsupported", STATUS_UNSUPPORTED, str(e))

    def _on_in(self, uc: Uc, port: int, size: int, _data: object) -> int:
        self.replay_sync()
        self.tsc += IOIO_COST
        if self._result is not None or self._io_exit(port, size, True):
            return (1 << (8 * size)) - 1     # undone when the trap fires
        dev = self.ports.get(port)
        value = dev.read(port, size) if dev else (1 << (8 * size)) - 1
        self._trace_io("in", port, size, value, dev)
        if self._result is not None:
            self.io_trap.arm(port, undo=False, action=None)
        return value

    def _on_out(self, uc: Uc, port: int, size: int, value: int, _data: object) -> None:
        self.replay_sync()
        self.tsc += IOIO_COST
        if self._result is not None or self._io_exit(port, size, False):
            return
        dev = self.ports.get(port)
        self._trace_io("out", port, size, value, dev)
        if dev:
            dev.write(port, size, value)
        if self.apic.nmi_pending and self._result is None:
            self.irq.check_soon()      # an NMI a device raised (I/O APIC) ignores IF
        if self._result is not None:
            # The device ended the run (isa-debug-exit): stop before the next instruction
            # rather than at the end of the translation block.
            self.io_trap.arm(port, undo=False, action=None)

    def _io_exit(self, port: int, size: int, is_in: bool) -> bool:
        """Does a hypervisor take this access as an exit *before* the instruction? Then the
        access is not performed, the instruction is undone and the exit happens at its RIP."""
        if self.router is None:
            return False
        try:
            action = self.router.on_io(port, size, is_in)
            if action is None:
                return False
            if not self.io_trap.arm(port, undo=True, action=action):
                raise Unsupported(f"port {port:#x} access at rip "
                                  f"{self.uc.reg_read(UC_X86_REG_RIP):#x} must exit to the "
                                  "hypervisor, but the code was translated without I/O traps")
        except Unsupported as e:
            self._finish("unsupported", STATUS_UNSUPPORTED, str(e))
        return True

    def _io_trap_fired(self) -> None:
        """The #DB that an armed I/O trap raised right after its instruction (emu/engine/io_trap.py)."""
        action = self.io_trap.take()
        if action is None or self._result is not None:
            self.uc.emu_stop()
            return
        try:
            action()
        except Unsupported as e:
            self._finish("unsupported", STATUS_UNSUPPORTED, str(e))

    def _exit_dr7_write(self, code: int) -> None:
        """MOV to DR7, which L0 intercepts only to keep HF_IOBPT (emu/engine/io_trap.py): run the
        instruction alone with the intercept lifted, so Unicorn applies it in full (breakpoints,
        #GP/#UD checks), then put intercept and flag back."""
        if self.general_detect.fires():
            return
        rip = self.uc.reg_read(UC_X86_REG_RIP)
        self._defer(lambda: self._run_dr7_write(rip))

    def wait_for_iret(self) -> None:
        """An NMI is pending while NMIs are blocked: exit at the next IRET, which unblocks them
        (Unicorn's IRET is no exit of its own, so the NMI would otherwise wait for whatever
        exit comes next, and a handler could take a lock the interrupted code holds).  L1 only:
        a nested guest's intercepts are its hypervisor's to merge."""
        if self.level() != "L1":
            return
        ctx = self.ctx.save()
        ctx.set_u64(OFF_INTERCEPT, ctx.u64(OFF_INTERCEPT) | _IRET_INTERCEPT)
        ctx.restore()

    def _exit_iret(self, code: int) -> None:
        """The IRET `wait_for_iret` asked for: run it alone with the intercept lifted; the
        interrupt point after it delivers the NMI it unblocked."""
        rip = self.uc.reg_read(UC_X86_REG_RIP)
        self._defer(lambda: self._run_iret(rip))

    def _run_iret(self, rip: int) -> None:
        ctx = self.ctx.save()
        ctx.set_u64(OFF_INTERCEPT, ctx.u64(OFF_INTERCEPT) & ~_IRET_INTERCEPT)
        ctx.restore()
        try:
            self.uc.emu_start(rip, _UNTIL, count=1)
        finally:
            self.replay_sync()

    def _run_dr7_write(self, rip: int) -> None:
        ctx = self.ctx.save()
        intercepts = ctx.u32(OFF_INTERCEPT_DR_WRITE) & 0xFFFF
        struct.pack_into("<H", ctx.view, OFF_INTERCEPT_DR_WRITE,
                         intercepts & ~hostvm.L0_DR_WRITE_INTERCEPTS)
        ctx.restore()
        try:
            self.uc.emu_start(rip, _UNTIL, count=1)
        finally:
            self.replay_sync()
            ctx = self.ctx.save()
            struct.pack_into("<H", ctx.view, OFF_INTERCEPT_DR_WRITE, intercepts)
            ctx.restore()
            self.io_trap.set_flag()
        self.general_detect.after_dr7_write()
        self.data_breakpoints.sync()

    def _trace_io(self, direction: str, port: int, size: int, value: int,
                  dev: PortDevice | None) -> None:
        if self.tracer and self.tracer.on("io"):
            self.tracer.line("io", self._where(), f"{direction} port {port:#06x} size {size} "
                             f"value {value:#x} ({dev.name if dev else 'no device'})")

    def _on_unmapped(self, uc: Uc, access: int, address: int, size: int, value: int,
                     _data: object) -> bool:
        self.replay_sync()
        kind = {19: "read", 20: "write", 21: "fetch"}.get(access, "access")
        if not self.strict and kind != "fetch" and self.open_bus.cover(address):
            return True           # retried: it reads all-ones now (devices/open_bus.py)
        self._finish("unsupported", STATUS_UNSUPPORTED,
                     f"unsupported: {kind} of physical address {address:#x} (no RAM or device "
                     f"there) at rip {uc.reg_read(UC_X86_REG_RIP):#x}")
        return False

    def _count_insn(self, uc: Uc, address: int, size: int, _data: object) -> None:
        budget = self._insn_budget
        if budget is not None:
            if budget <= 0:
                self._finish("max-insns", STATUS_LIMIT, "instruction limit (--max-insns) reached")
                return
            self._insn_budget = budget - 1
            self._deliveries_in_a_row = 0
        self.insns += 1

    def _trace_insn(self, uc: Uc, address: int, size: int, _data: object) -> None:
        ctx = self.ctx.save()
        try:
            code = self.mem.read_code(address, size)
        except Fault:
            code = b""
        self.tracer.insn(f"[{self._cpu_tag()}{self.level()} {ctx.mode_bits()} cpl{ctx.cpl}]", ctx.mode_bits(),
                         address, code)

    # ---- event delivery ---------------------------------------------------------------------------
    def _deliver(self, event: Event, return_rip: int, injected: bool = False) -> None:
        self._deliver_event(event, return_rip, injected)
        self._count_delivery()

    def _count_delivery(self) -> None:
        """svmemu's rule for `--max-insns N`: the limit bounds instructions plus deliveries.
        Deliveries in a row, with no instruction started between them, count one step each:
        a delivery can retire no instruction at all (an instruction breakpoint in DR7 on the
        #DB handler's first instruction raises the next #DB at every delivery, forever, as on
        hardware), and counting instructions alone would let such a run go on without end. A
        delivery is never cut: the run ends right after the one that brings the steps past N
        (instructions run plus deliveries since the last one), where the next instruction
        would start. A delivery followed by an instruction gives its step back, so positions
        counted in instructions (`insns`, --snapshot-at N) stay instruction counts."""
        boot = self.cpu_list[0]
        budget = boot._insn_budget
        if budget is None:
            return
        boot._deliveries_in_a_row += 1
        if boot._deliveries_in_a_row > budget:
            boot._finish("max-insns", STATUS_LIMIT, "instruction limit (--max-insns) reached")

    def _deliver_event(self, event: Event, return_rip: int, injected: bool) -> None:
        router = self.router

        def intercept(current: Event, outer: Event | None) -> bool:
            # An injected event is never itself intercepted; what its delivery raises can be.
            if router is None or (injected and current is event):
                return False
            return router.on_exception(current, outer)
        observe = None
        if self.tracer is not None and self.tracer.on("exc"):
            where = self._where()
            observe = lambda text: self.tracer.line("exc", where, text)  # noqa: E731
        try:
            final = self.deliverer.deliver(event, return_rip, intercept, observe)
        except Shutdown as e:
            self.shutdown(f"shutdown (triple fault): {e}")
            return
        except NestedFault as nf:
            if router is None or not router.on_nested_fault(nf, event):
                raise Unsupported(f"nested page fault outside a nested guest: {nf}")
            return
        if final is None:
            return
        if self.tracer and self.tracer.on("exc"):
            self.tracer.line("exc", self._where(), f"delivered {final.describe()} "
                             f"(return rip {return_rip:#x})" +
                             (f", escalated from {event.describe()}" if final is not event else ""))
