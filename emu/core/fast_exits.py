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
- RDTSC: the TSC moves by TSC_STEP and RDX:EAX get it (L1's TSC offset is always 0), RIP moves
  2, as Machine._exit_rdtsc. The instruction bytes are read first through Unicorn's debug walk,
  as Machine.mem.read_code does it: RDTSCP (which Unicorn reports as RDTSC) or a failed read
  goes to Python. The TSC the C side moved is added to Machine.tsc when Python next runs;
- CPUID: only answers Python itself gave in L1, kept with the inputs (leaf, subleaf) exactly as
  the exit gave them and with L1's whole CR4 at the time (CPUID 1 mirrors CR4.OSXSAVE); C
  answers only when all of them match. The rest of what Cpuid.query reads (its table, its
  overrides, the APIC's enable bit) can only change in Python: each arming compares them with
  what the kept answers were computed from, and forgets every answer if they moved.

`svmemu run --no-replay` (or SVMEMU_REPLAY=0) turns the C hook off, and with it this: the
Python path alone, the reference that tests/test_fast_exits.py compares against.
"""
from __future__ import annotations

import ctypes
from typing import TYPE_CHECKING

from emu.engine import binding, hostvm, replay
from emu.engine.hw_switch import (HF2_NPT, HF_CS64, OFF_CR, OFF_EIP, OFF_HFLAGS, OFF_HFLAGS2,
                                  OFF_RAX, OFF_RCX, OFF_SEGS, OFF_VM_VMCB, SEG_SIZE, cpu_and_env)

if TYPE_CHECKING:
    from emu.core.board import Board

MASK64 = (1 << 64) - 1
_CS = 1
_OFFSETS = {"rax": OFF_RAX, "rcx": OFF_RCX, "rdx": OFF_RAX + 2 * 8, "rbx": OFF_RAX + 3 * 8,
            "eip": OFF_EIP, "hflags": OFF_HFLAGS, "hflags2": OFF_HFLAGS2,
            "cs_base": OFF_SEGS + _CS * SEG_SIZE + 8, "vm_vmcb": OFF_VM_VMCB,
            "cr4": OFF_CR + 4 * 8}


class FastExits:
    """The Python side of the C fast exits: arming, the TSC hand-over, the CPUID table."""

    def __init__(self, machine: "Board", tsc_step: int) -> None:
        self.m = machine
        self._fx = None
        self._base: int | None = None      # fx.tsc when armed
        self._inputs: tuple = ()            # what the kept CPUID answers were computed from
        self._evict = 0
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
        fx.n_cpuid = 0
        self._fx = fx
        self._slots = fx.cpuid_slots
        self._env_vmcb = ctypes.c_uint64.from_address(env + OFF_VM_VMCB)
        self._env_cr4 = ctypes.c_uint64.from_address(env + OFF_CR + 4 * 8)

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

    def arm(self) -> None:
        """End of a Python entry: let C answer from here on if nothing else would happen."""
        fx, m = self._fx, self.m
        if fx is None or self._base is not None:
            return
        e = m.replay
        if not (e.enabled and m.tracer is None and not m.world_observers
                and binding.hook_count(m.uc) == m._own_hooks and m._result is None
                and m._pending is None and m._pause is None and not m.io_trap.armed):
            return
        inputs = self._cpuid_inputs()
        if inputs != self._inputs:
            self._inputs = inputs
            fx.n_cpuid = 0
        base = self._base = m.tsc & MASK64
        fx.tsc = base
        fx.armed = 1

    def stop(self) -> None:
        """The run is ending (possibly from another thread): answer nothing more in C. The TSC
        hand-over waits for the next `disarm`."""
        if self._fx is not None:
            self._fx.armed = 0

    def disarm(self) -> None:
        """A Python entry: C answers nothing more, and the TSC it moved is the machine's."""
        fx = self._fx
        if fx is None or self._base is None:
            return
        fx.armed = 0
        moved = (fx.tsc - self._base) & MASK64
        self._base = None
        if moved:
            self.m.tsc += moved

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
