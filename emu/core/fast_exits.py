"""L1's RDTSC and CPUID answered in C (emu/engine/replay.c, `fast_exit`), with the Python
handlers in machine.py as the reference.

A kernel that reads the TSC or runs CPUID in a loop (kvm-unit-tests' vmexit and latency tests,
a hypervisor timing its guests) pays ~20 us of Python per exit; the work itself is a few
register writes. The C hook answers these two exits itself while it is *armed*, and arming
makes that exact:

- it is armed only at the end of a Python entry (the INTR hook, the run loop before each
  emu_start) when nothing but the answer would happen in Python: no trace, no tool's hooks, no
  observers, no stop requested, no I/O trap pending. Every Python entry disarms it first
  (Machine.replay_sync), so anything Python changes is seen before C answers again;
- only exits of L1 are answered (the CPU runs under vmcb01; for L2 a hypervisor may intercept
  them, which the router decides), and only without nested paging (the code read below);
- RDTSC: the TSC takes the instructions retired since Python last looked and moves by
  TSC_STEP, and RDX:EAX get it plus this CPU's tsc_adjust (L1's TSC offset is always 0), RIP
  moves 2, as Machine._exit_rdtsc. The instruction bytes are read first through Unicorn's debug walk,
  as Machine.mem.read_code does it: RDTSCP (which Unicorn reports as RDTSC) or a failed read
  goes to Python. What the C side moved (its `ticks`, emu/core/timebase.py) is added to
  Machine.tsc when Python next runs;
- MOV to and from CR8 (the TPR's bits 7:4, irq._cr8_exit) in 64-bit mode, in the spelling
  REX.R 0F 20/22 with a register operand: C keeps the APIC's TPR from the arming and gives it
  back at the next Python entry. Writes only while nothing is requested that a lower priority
  could let in and no APIC timer could fire meanwhile (then the write is all Python would do;
  a write of bits 63:4, #GP, goes to Python);
- MOV to CR4 at CPL 0 in 64-bit mode (control_regs.Cr4Writes), in the spelling 0F 22 /4 with
  a register operand: C writes it through uc_reg_write as Python does when the value has no bit
  the model reserves, keeps PAE and leaves PCIDE clear; anything else (the #GP cases
  included) goes to Python. The allowed bits come from the CPUID table, recomputed with the
  kept CPUID answers whenever an arming finds the table's inputs moved;
- IN from the ACPI PM timer (replay.c `replay_in`, in front of Machine._on_in) in L1 on one
  CPU: the port's cost and the read's time step, then the counter from the TSC, as
  PmBlock.read computes it; every other port, and any port while disarmed, goes to Python;
- RDMSR in L1 (EXITINFO1 0) of an MSR whose MsrFile reader is the CPU's own copy (MsrFile.
  cpu_backed: FS/GS bases, KERNEL_GS_BASE, the syscall MSRs; the table is rebuilt at an
  arming whenever an owner was registered since): EDX:EAX from the CPU state, RIP past it, as
  Machine._exit_msr. Any other MSR, and every WRMSR, goes to Python;
- L1's VMLOAD, VMSAVE, STGI and CLGI, through a companion the SVM extension adds
  (svm_ext/fast_insn.py: `companions` are armed and disarmed with the rest);
- CPUID: only answers Python itself gave in L1, kept with the inputs (leaf, subleaf) exactly as
  the exit gave them and with L1's whole CR4 at the time (CPUID 1 mirrors CR4.OSXSAVE); C
  answers only when all of them match. The rest of what Cpuid.query reads (its table, its
  overrides, the APIC's enable bit) can only change in Python: each arming compares them with
  what the kept answers were computed from, and forgets every answer if they moved.

A completed RDMSR that Python answered (no reader changes anything but the TSC; one that
raises #GP leaves RIP in place) is neutral like RDTSC and CPUID (see below).

L2's RDTSC, when its hypervisor does not intercept it, is answered in C too, by replay programs
(emu/engine/replay.py) this module records: the exit changes nothing of the Python-side state the
world-switch programs stand for (the engine's `state` word: svm_ext/fast_switch.py), so after
Python answered one the word is put back as it was, and the chain of replayed world switches
around it goes on in C. A program answers the next RDTSC at the same RIP in the same state,
guarded on everything the answer depended on: the state word (which pins the hypervisor's
intercepts and the TSC offset), the world and paging registers, the instruction bytes and every
paging entry the fetch of them went through (Memory.code_path).

`svmemu run --no-replay` (or SVMEMU_REPLAY=0) turns the C hook off, and with it this: the
Python path alone, the reference that tests/test_fast_exits.py compares against.
"""
from __future__ import annotations

import ctypes
from typing import TYPE_CHECKING

from unicorn.x86_const import UC_X86_REG_CR4

from emu.arch.bits import CR4_PAE, CR4_PCIDE, RFLAGS_TF
from emu.core.control_regs import cr4_allowed
from emu.core.devices.clock import PM_TIMER_HZ, TSC_HZ
from emu.core.devices.pm_timer import PM_TMR, TIME_PER_READ
from emu.core.timebase import IOIO_COST
from emu.engine import binding, hostvm, replay
from emu.arch.vmcb import VMEXIT_CPUID, VMEXIT_MSR, VMEXIT_RDTSC
from emu.core.msrs_amd import TSC_RATIO_RESET
from emu.arch.msrs import (MSR_CSTAR, MSR_FS_BASE, MSR_GS_BASE, MSR_KERNEL_GS_BASE, MSR_LSTAR,
                           MSR_SFMASK, MSR_STAR, MSR_SYSENTER_CS, MSR_SYSENTER_EIP,
                           MSR_SYSENTER_ESP)
from emu.engine.hw_switch import (FS, GS, HF2_NPT, HF_CS64, OFF_CR, OFF_CSTAR, OFF_EFER, OFF_EIP,
                                  OFF_EFLAGS, OFF_ERROR_CODE, OFF_FMASK, OFF_HFLAGS, OFF_HFLAGS2,
                                  OFF_KERNEL_GS_BASE, OFF_LSTAR, OFF_NESTED_PG_MODE, OFF_RAX,
                                  OFF_RCX, OFF_SEGS, OFF_STAR, OFF_SYSENTER_CS, OFF_SYSENTER_EIP,
                                  OFF_SYSENTER_ESP, OFF_VM_VMCB, SEG_OFF_BASE, SEG_SIZE,
                                  cpu_and_env)

if TYPE_CHECKING:
    from emu.core.board import Board

MASK64 = (1 << 64) - 1
_CS = 1
_OFFSETS = {"rax": OFF_RAX, "rcx": OFF_RCX, "rdx": OFF_RAX + 2 * 8, "rbx": OFF_RAX + 3 * 8,
            "eip": OFF_EIP, "hflags": OFF_HFLAGS, "hflags2": OFF_HFLAGS2,
            "cs_base": OFF_SEGS + _CS * SEG_SIZE + 8, "vm_vmcb": OFF_VM_VMCB,
            "cr4": OFF_CR + 4 * 8, "error_code": OFF_ERROR_CODE, "eflags": OFF_EFLAGS}
# Where Unicorn keeps the MSRs MsrFile reads from the CPU (hw_switch, proven by layout_check),
# and their width: L1's RDMSR of one of them is a load C can do (replay.c `fast_rdmsr`).
_CPU_MSRS = {MSR_FS_BASE: (OFF_SEGS + FS * SEG_SIZE + SEG_OFF_BASE, 8),
             MSR_GS_BASE: (OFF_SEGS + GS * SEG_SIZE + SEG_OFF_BASE, 8),
             MSR_KERNEL_GS_BASE: (OFF_KERNEL_GS_BASE, 8), MSR_STAR: (OFF_STAR, 8),
             MSR_LSTAR: (OFF_LSTAR, 8), MSR_CSTAR: (OFF_CSTAR, 8), MSR_SFMASK: (OFF_FMASK, 8),
             MSR_SYSENTER_CS: (OFF_SYSENTER_CS, 4), MSR_SYSENTER_ESP: (OFF_SYSENTER_ESP, 8),
             MSR_SYSENTER_EIP: (OFF_SYSENTER_EIP, 8)}

_EXIT_RDTSC = hostvm.UC_EXIT_BASE + VMEXIT_RDTSC
# What an L2 RDTSC program guards in the live CPU state besides RIP: the CS descriptor cache,
# CR0, CR3, CR4, EFER, hflags, and the world (the VMCB it runs under) with nested paging's CR3
# and mode: the fetch's inputs.
_WORLD_SPANS = ((OFF_SEGS + _CS * SEG_SIZE, SEG_SIZE), (OFF_CR, 8), (OFF_CR + 24, 16),
                (OFF_EFER, 8), (OFF_HFLAGS, 8),
                (OFF_VM_VMCB, OFF_NESTED_PG_MODE + 4 - OFF_VM_VMCB))
assert len(_CPU_MSRS) <= replay.FX_MSR_SLOTS
_RDTSC = b"\x0F\x31"
_RECORDINGS_PER_RIP = 2      # a program that keeps failing its guards is not recorded again
_MAX_KEYS = 4096


class FastExits:
    """The Python side of the C fast exits: arming, the TSC hand-over, the CPUID table."""

    def __init__(self, machine: "Board", tsc_step: int) -> None:
        self.m = machine
        self._fx = None
        self.env = 0
        self._base: int | None = None      # fx.tsc when armed
        self._tpr = 0                       # the APIC's TPR when armed
        self._inputs: tuple = ()            # what the kept CPUID answers were computed from
        self._met: dict[tuple[int, int], int] = {}   # (state, RIP) of L2 RDTSCs: times met
        # Exits whose handling by the machine's own handler changes no Python-side state a
        # replay program stands for (only the CPU, guest RAM, the TSC), when the instruction
        # completed (RIP moved past it): exit number -> (length, also in L2, the EXITINFO1 it
        # needs or None). RDMSR (EXITINFO1 0; WRMSR is 1) reads: no MsrFile reader changes
        # anything but the TSC (an MSR that raises #GP leaves RIP where it was).
        self._neutral: dict[int, tuple[int, bool, int | None]] = {
            _EXIT_RDTSC: (2, True, None), hostvm.UC_EXIT_BASE + VMEXIT_CPUID: (2, True, None),
            hostvm.UC_EXIT_BASE + VMEXIT_MSR: (2, True, 0)}
        self._evict = 0
        self._msr_generation = -1
        # Others' fast paths that live and die with this arming (svm_ext/fast_insn.py): each
        # has arm(), called just before C may answer, and disarm(), at the next Python entry.
        self.companions: list = []
        # LocalApic.signalled() at the arming in progress, for the companions: nothing moves it
        # between the arming and theirs.
        self.signalled = False
        e = machine.replay
        if e is None:
            return
        _, env = cpu_and_env(machine.uc)
        if not env:
            return
        fx = e.fast
        fx.armed = 0
        fx.env = env
        fx.l1_vmcb = hostvm.VMCB01
        fx.hf_cs64, fx.hf2_npt = HF_CS64, HF2_NPT
        fx.tsc_step = tsc_step
        for i, name in enumerate(replay.FX_OFFSETS):
            fx.off[i] = _OFFSETS[name]
        fx.vmem_read = binding.c_function("uc_vmem_read")
        fx.io_cost, fx.pm_read_ticks = IOIO_COST, TIME_PER_READ
        fx.pm_hz, fx.tsc_hz = PM_TIMER_HZ, TSC_HZ
        fx.cr4_pae, fx.cr4_pcide, fx.cr4_regid = CR4_PAE, CR4_PCIDE, UC_X86_REG_CR4
        fx.eflags_tf = RFLAGS_TF
        fx.reg_write = binding.c_function("uc_reg_write")
        fx.n_cpuid = 0
        self._fx = fx
        self._slots = fx.cpuid_slots
        self._env_vmcb = ctypes.c_uint64.from_address(env + OFF_VM_VMCB)
        self._env_cr4 = ctypes.c_uint64.from_address(env + OFF_CR + 4 * 8)
        self._env_eip = ctypes.c_uint64.from_address(env + OFF_EIP)
        self._env_error = ctypes.c_uint32.from_address(env + OFF_ERROR_CODE)
        self._env = env
        self.env = env               # the live CPU state's address, for programs that use it
        self._armed_addr = ctypes.addressof(fx) + type(fx).armed.offset

    def _cpuid_inputs(self) -> tuple:
        """What Cpuid.query reads besides (leaf, subleaf) and CR4: its table (replaced whole by
        a snapshot restore, grown by set_leaf), its overrides, the APIC's IA32_APIC_BASE."""
        c = self.m.cpuid
        return (id(c.table), len(c.table), len(c.overrides), self.m.apic.base_msr)

    @property
    def answered(self) -> tuple[int, int]:
        """(RDTSC, CPUID) exits answered in C so far."""
        fx = self._fx
        return (fx.rdtsc, fx.cpuid) if fx is not None else (0, 0)

    @property
    def answered_pm_timer(self) -> int:
        """PM timer reads answered in C so far."""
        return self._fx.pm_reads if self._fx is not None else 0

    @property
    def answered_cr4(self) -> int:
        """MOV to CR4 answered in C so far."""
        return self._fx.cr4 if self._fx is not None else 0

    @property
    def answered_cr8(self) -> int:
        """MOV to or from CR8 answered in C so far."""
        return self._fx.cr8 if self._fx is not None else 0

    def _ready(self) -> bool:
        m = self.m
        return (m.replay.enabled and m.tracer is None and not m.world_observers
                and binding.hook_count(m.uc) == m._own_hooks and m._result is None
                and m._pending is None and m._pause is None and not m.io_trap.armed)

    def quiet(self) -> bool:
        """Would nothing but an answer happen in Python now (no trace, tool hooks, observers,
        stop, pending work or I/O trap)? Other C paths ask it too (fast_deliver.py)."""
        return self._ready()

    def rip(self) -> int:
        """RIP as the CPU holds it (in a hook: the exiting instruction's)."""
        return self._env_eip.value if self._fx is not None else 0

    def arm(self) -> None:
        """End of a Python entry: let C answer from here on if nothing else would happen."""
        fx = self._fx
        if fx is None or self._base is not None or not self._ready():
            return
        m = self.m
        inputs = self._cpuid_inputs()
        if inputs != self._inputs:
            self._inputs = inputs
            fx.n_cpuid = 0
            fx.cr4_allowed = cr4_allowed(m.cpuid)
        if m.msrs.generation != self._msr_generation:
            self._msr_generation = m.msrs.generation
            self._set_msr_slots()
        m.timebase.sync()
        self._base = fx.tsc = m.tsc & MASK64
        fx.tsc_adjust = m.tsc_adjust & MASK64      # this CPU's own TSC (Machine._read_tsc)
        apic = m.apic
        self._tpr = fx.tpr = apic.tpr
        self.signalled = signalled = apic.signalled()
        fx.cr8_write_ok = int(not signalled and apic.deadline() is None)
        pm = getattr(getattr(m, "pc", None), "pm", None) if m.cpus == 1 else None
        fx.pm_port = (pm.base + PM_TMR if pm is not None and pm.base is not None
                      and m.ports.get(pm.base + PM_TMR) is pm else 0)
        for companion in self.companions:
            companion.arm()
        fx.armed = 1

    def _set_msr_slots(self) -> None:
        """The MSRs C may read for L1's RDMSR: those whose MsrFile owner is the CPU's copy."""
        fx, backed = self._fx, self.m.msrs.cpu_backed
        slots = [(index, place) for index, place in _CPU_MSRS.items() if index in backed]
        for slot, (index, (off, width)) in zip(fx.msr_slots, slots):
            slot.index, slot.width, slot.env_off = index, width, off
        fx.n_msr = len(slots)

    @property
    def answered_rdmsr(self) -> int:
        """L1's RDMSRs answered in C so far."""
        return self._fx.rdmsr if self._fx is not None else 0

    def neutral_exit(self, code: int, length: int, in_l2: bool = False) -> None:
        """Declare that the handler registered for exit `code` (Machine.register_exit), when
        its instruction of `length` bytes completes in L1 (and in L2 if `in_l2`), changes no
        Python-side state but what replay programs check themselves (CPU state, guest RAM)."""
        self._neutral[hostvm.UC_EXIT_BASE + code] = (length, in_l2, None)

    def after_exit(self, intno: int, state: int, rip: int) -> None:
        """Python answered exit `intno` of the instruction at `rip` itself (the machine's own
        handler, not a hypervisor's), with the engine's state word `state` before it. For a
        neutral exit, put the word back (see the module's docstring) and, for L2's RDTSC,
        record the program that answers it in C next time."""
        fx = self._fx
        if fx is None or not state:
            return
        neutral = self._neutral.get(intno)
        if neutral is None or self._env_eip.value != rip + neutral[0] or not self._ready():
            return
        length, also_l2, info1 = neutral
        in_l2 = self._env_vmcb.value != hostvm.VMCB01
        if (in_l2 and not also_l2) or (info1 is not None and self._env_error.value != info1):
            return
        e = self.m.replay
        if e.state:
            return
        e.state = state
        if intno == _EXIT_RDTSC and in_l2:
            self._record_rdtsc(state, rip)

    def _record_rdtsc(self, state: int, rip: int) -> None:
        key = (state, rip)
        met = self._met.get(key, 0)
        if met > _RECORDINGS_PER_RIP:
            return
        if len(self._met) >= _MAX_KEYS:
            self._met.clear()
        self._met[key] = met + 1
        if not met:
            return                          # recorded when met again: it repeats
        m, e = self.m, self.m.replay
        path = m.mem.code_path(rip)
        if path is None or path.page_end < len(_RDTSC):
            return
        code = e.ram_addr(path.pa, len(_RDTSC))
        if code is None or bytes(m.mem.view[path.pa:path.pa + len(_RDTSC)]) != _RDTSC:
            return
        p = replay.Program()
        p.eq64(e.state_addr, state)
        p.eq64(self._armed_addr, 1)
        p.eq64(self._env + OFF_EIP, rip)
        for off, n in _WORLD_SPANS:
            p.same(self._env + off, ctypes.string_at(self._env + off, n))
        p.same(code, _RDTSC)
        for addr, value, width in path.entries:
            host = e.ram_addr(addr, width)
            if host is None:
                return
            p.same(host, value.to_bytes(width, "little"))
        p.commit()
        p.rdtsc(m.tsc_offset, 0 if m.tsc_ratio == TSC_RATIO_RESET else m.tsc_ratio)
        e.add_program(_EXIT_RDTSC, p)

    def stop(self) -> None:
        """The run is ending (possibly from another thread): answer nothing more in C. The TSC
        hand-over waits for the next `disarm`."""
        if self._fx is not None:
            self._fx.armed = 0

    def disarm(self) -> None:
        """A Python entry: C answers nothing more (the time it moved is taken by
        Timebase.sync, which follows)."""
        fx = self._fx
        if fx is None or self._base is None:
            return
        fx.armed = 0
        self._base = None
        if fx.tpr != self._tpr:         # MOV CR8 answered in C
            self.m.apic.tpr = fx.tpr
        for companion in self.companions:
            companion.disarm()

    def remember_cpuid(self, leaf: int, subleaf: int, regs: tuple[int, int, int, int]) -> None:
        """Python answered L1's CPUID (leaf, subleaf) with `regs`; C may repeat the answer while
        CR4 and the other inputs stay what they are now."""
        fx = self._fx
        if fx is None or self._env_vmcb.value != hostvm.VMCB01:
            return
        if self._inputs != self._cpuid_inputs():
            return                  # computed from inputs the table is not kept for
        n = fx.n_cpuid
        if n >= replay.FX_CPUID_SLOTS:      # full: the oldest answers make room, in turn
            slot = self._slots[self._evict]
            self._evict = (self._evict + 1) % replay.FX_CPUID_SLOTS
            n -= 1
        else:
            slot = self._slots[n]
        slot.leaf, slot.subleaf = leaf, subleaf
        slot.regs[0], slot.regs[1], slot.regs[2], slot.regs[3] = regs
        slot.cr4 = self._env_cr4.value
        fx.n_cpuid = n + 1
