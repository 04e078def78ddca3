"""The `VM` class behind `svmemu.load` (see the package docstring for a tour)."""
from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Callable

import emu  # noqa: F401  (first: chooses the Unicorn engine before unicorn is imported)
from unicorn import UC_HOOK_CODE
from unicorn import x86_const as X

from emu.arch import paging
from emu.arch.vmcb import Vmcb
from emu.core import snapshot as snapshots
from emu.core.events import EventSpec, EventWatch, parse_event
from emu.core.machine import Machine, RunResult
from emu.errors import SvmemuError

_GPR = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "r8", "r9", "r10", "r11", "r12",
        "r13", "r14", "r15", "rip", "rflags", "cr0", "cr2", "cr3", "cr4", "cs", "ds", "es", "fs",
        "gs", "ss", "fs_base", "gs_base")


@dataclass(frozen=True)
class Stop:
    """Why a `run` or `step` returned.

    reason: "event" (the `until` event), "step", "stopped" (a hook called `vm.stop()`), or how
    the guest ended as `svmemu run` says it: "exit" (isa-debug-exit; `status` is QEMU's process
    status), "halt", "shutdown", "reset", "poweroff", "unsupported", "max-insns", "timeout"."""
    reason: str
    message: str
    rip: int
    world: str
    status: int

    @property
    def ended(self) -> bool:
        """Has the guest finished (nothing more to run)?"""
        return self.reason not in ("event", "step", "stopped", "max-insns", "timeout")

    def __str__(self) -> str:
        return f"{self.reason} at {self.rip:#x} in {self.world}: {self.message}"


class Registers:
    """`vm.regs.rax`, `vm.regs["cr3"]`; assignment writes the CPU (RIP too)."""

    def __init__(self, machine: Machine) -> None:
        object.__setattr__(self, "_m", machine)

    def _id(self, name: str) -> int:
        key = name.lower()
        if key not in _GPR:
            raise AttributeError(f"no register {name!r} (registers: {', '.join(_GPR)})")
        return getattr(X, "UC_X86_REG_" + ("EFLAGS" if key == "rflags" else key.upper()))

    def __getattr__(self, name: str) -> int:
        return self._m.uc.reg_read(self._id(name))

    def __setattr__(self, name: str, value: int) -> None:
        self._m.uc.reg_write(self._id(name), value)
        if name.lower() == "rip":
            self._m.resume_at(value)

    __getitem__ = __getattr__
    __setitem__ = __setattr__

    @property
    def efer(self) -> int:
        """EFER of the world running (an MSR, not a Unicorn register)."""
        return self._m.ctx.save().efer


class VmcbView:
    """vmcb12 (the VMCB of L1's last VMRUN, or one at an address you give) by the APM's field
    names, as guest memory holds it: `vm.vmcb.exitcode`, `vm.vmcb.rip = ...`,
    `vm.vmcb["intercept_misc1"]`. Writes change guest RAM, as L1's own stores would."""

    def __init__(self, machine: Machine, pa: int) -> None:
        object.__setattr__(self, "_v", Vmcb(machine.mem.view, pa))
        object.__setattr__(self, "pa", pa)

    def _holder(self, name: str) -> object:
        v = self._v
        if hasattr(type(v), name):
            return v
        if hasattr(type(v.save), name):
            return v.save
        raise AttributeError(f"no VMCB field {name!r} (emu/arch/vmcb.py's FIELDS and BITFIELDS)")

    def __getattr__(self, name: str) -> int:
        return getattr(self._holder(name), name)

    def __setattr__(self, name: str, value: int) -> None:
        setattr(self._holder(name), name, value)

    __getitem__ = __getattr__
    __setitem__ = __setattr__


class VM:
    """One machine with nested SVM. Make one with `svmemu.load` or `svmemu.resume`."""

    def __init__(self, machine: Machine, symbols: dict[str, int] | None = None) -> None:
        self.machine = machine
        self.symbols: dict[str, int] = dict(symbols or {})
        self.regs = Registers(machine)
        self._stopped_by_hook = False
        self._hooks: list[int] = []

    # ---- running ----------------------------------------------------------------------------
    def run(self, until: str | int | None = None, *, max_insns: int | None = None,
            timeout: float | None = None) -> Stop:
        """Run until the guest ends, a hook calls `stop()`, or `until` happens: "vmrun[:N]",
        "vmexit[:N]" (right after the Nth world switch that way), a symbol or an address (an
        int, or "*0x..."; the run stops before the instruction there), optionally ":N" for
        the Nth time."""
        m = self.machine
        watch = None
        if until is not None:
            spec = (EventSpec("address", 1, until, hex(until)) if isinstance(until, int)
                    else parse_event(until, self.symbols, "until"))
            if spec.kind == "insns":
                raise SvmemuError("until takes an event; give an instruction count as max_insns")
            watch = EventWatch(m, spec, lambda: m.pause(f"reached {spec.describe()}"))
        m.resume_at(m.uc.reg_read(X.UC_X86_REG_RIP))
        try:
            result = m.run(max_insns=max_insns, timeout=timeout)
        finally:
            if watch is not None:
                watch.detach()
        return self._stop(result, "event")

    def step(self) -> Stop:
        """Run one instruction (an instruction that switches worlds or takes an exception
        stops at the first instruction of where it went)."""
        m = self.machine
        first = [True]

        def on_insn(uc, address: int, size: int, _data: object) -> None:
            if first[0]:
                first[0] = False
                return
            m.pause("one instruction")
        hook = m.uc.hook_add(UC_HOOK_CODE, on_insn)
        m.uc.ctl_flush_tb()
        m.resume_at(m.uc.reg_read(X.UC_X86_REG_RIP))
        try:
            result = m.run()
        finally:
            m.uc.hook_del(hook)
            m.uc.ctl_flush_tb()
        return self._stop(result, "step")

    def stop(self) -> None:
        """From a hook: end the current run before the next instruction."""
        self._stopped_by_hook = True
        self.machine.pause("stopped by a hook")

    def _stop(self, result: RunResult, paused_as: str) -> Stop:
        reason = result.reason
        if reason == "pause":
            reason = "stopped" if self._stopped_by_hook else paused_as
        self._stopped_by_hook = False
        return Stop(reason, result.message, result.rip, self.world, result.status)

    # ---- hooks ------------------------------------------------------------------------------
    def on_code(self, fn: Callable[["VM", int], None], begin: int | str,
                end: int | str | None = None) -> int:
        """Call `fn(vm, address)` before each instruction in [begin, end] (one address when
        `end` is None; symbols allowed). Only that range is hooked; code elsewhere runs at
        full speed. Returns a handle for `remove_hook`."""
        lo = self._address(begin)
        hi = lo if end is None else self._address(end)
        m = self.machine

        def hook(uc, address: int, size: int, _data: object) -> None:
            m.replay_sync()
            fn(self, address)
        h = m.uc.hook_add(UC_HOOK_CODE, hook, None, lo, hi)
        m.uc.ctl_flush_tb()
        self._hooks.append(h)
        return h

    def on_world_switch(self, fn: Callable[["VM", str, str], None]) -> Callable[[str, str], None]:
        """Call `fn(vm, old, new)` right after every world switch ("L1" -> "L2" is a VMRUN).
        While one is registered, every switch runs in Python (no C replay). Returns a handle
        for `remove_hook`."""
        def observer(old: str, new: str) -> None:
            fn(self, old, new)
        self.machine.world_observers.append(observer)
        return observer

    def remove_hook(self, handle: int | Callable[[str, str], None]) -> None:
        """Undo `on_code` or `on_world_switch` (their return value is the handle)."""
        m = self.machine
        if isinstance(handle, int):
            m.uc.hook_del(handle)
            self._hooks.remove(handle)
            m.uc.ctl_flush_tb()
        else:
            m.world_observers.remove(handle)

    # ---- state ------------------------------------------------------------------------------
    @property
    def world(self) -> str:
        """"L1" or "L2": the world the CPU is in."""
        return self.machine.level()

    @property
    def serial(self) -> bytes:
        """Everything the guest wrote to COM1 so far."""
        return bytes(self.machine.serial.output)

    @property
    def vmcb(self) -> VmcbView:
        """vmcb12 of L1's last VMRUN, by field name (an error before the first VMRUN)."""
        for ext in self.machine.extensions:
            state = getattr(ext, "state", None)
            if state is not None and state.vmcb12 is not None:
                return VmcbView(self.machine, state.vmcb12_pa)
        raise SvmemuError("no VMRUN yet: give the VMCB's address to vm.vmcb_at(pa)")

    def vmcb_at(self, pa: int) -> VmcbView:
        """The VMCB at physical address `pa`, by field name."""
        return VmcbView(self.machine, pa)

    def read(self, va: int, size: int, world: str | None = None) -> bytes:
        """Bytes at a virtual address of `world` ("L1", "L2"; default: the one running),
        through its paging (nested paging included), with no accessed/dirty updates."""
        return self.read_phys(self._va_to_pa(va, world), size)

    def write(self, va: int, data: bytes, world: str | None = None) -> None:
        """Bytes to a virtual address of `world`, as `read` translates it (no protection
        checks: read-only code can be patched)."""
        self.write_phys(self._va_to_pa(va, world), data)

    def read_phys(self, pa: int, size: int) -> bytes:
        """System-physical memory (below every paging layer)."""
        return self.machine.mem.read_phys(pa, size)

    def write_phys(self, pa: int, data: bytes) -> None:
        """System-physical memory; translated code there is thrown away, so patches run."""
        self.machine.mem.write_phys(pa, data)
        self.machine.uc.ctl_flush_tb()         # the bytes may be code already translated

    def gpa_to_spa(self, gpa: int) -> int:
        """L2's guest-physical address to the system-physical one, through L2's nested page
        table (the same address when L2 runs without nested paging)."""
        from emu.engine.hostvm import MAXPHYADDR
        from emu.tools.memquery import world_paging
        view = world_paging(self.machine, "L2")
        if view.ncr3 is None:
            return gpa
        mem = self.machine.mem
        return paging.walk_nested(mem.read_u64, view.ncr3, gpa, paging.READ, host=view.host_regs,
                                  read_u32=mem.read_u32, maxphyaddr=MAXPHYADDR).pa

    def read_gpa(self, gpa: int, size: int) -> bytes:
        """L2's guest-physical memory (see `gpa_to_spa`)."""
        return self.read_phys(self.gpa_to_spa(gpa), size)

    def write_gpa(self, gpa: int, data: bytes) -> None:
        """L2's guest-physical memory (see `gpa_to_spa`)."""
        self.write_phys(self.gpa_to_spa(gpa), data)

    def _va_to_pa(self, va: int, world: str | None) -> int:
        m = self.machine
        if world is None or world == m.level():
            m.ctx.save()
            return m.mem.debug_translate(va)
        from emu.tools.memquery import memtype_for, world_paging
        return memtype_for(m, world_paging(m, world), va).spa

    def _address(self, where: int | str) -> int:
        if isinstance(where, int):
            return where
        if where in self.symbols:
            return self.symbols[where]
        try:
            return int(where, 0)
        except ValueError:
            raise SvmemuError(f"{where!r} is neither an address nor a symbol of the image")

    # ---- snapshots --------------------------------------------------------------------------
    def snapshot(self) -> snapshots.Snapshot:
        """The whole machine, in memory (RAM, CPU, MSRs, devices, nested state)."""
        return snapshots.take(self.machine)

    def restore(self, snap: snapshots.Snapshot) -> None:
        """Go back to a snapshot taken from this VM (or a VM of the same RAM size)."""
        snapshots.restore(self.machine, snap)

    def save(self, path: str) -> None:
        """A snapshot file `svmemu resume` and `svmemu.resume` read."""
        snapshots.save(self.machine, path)


def load(image: str, *, memory: int = 128 << 20, append: str = "", cpu: str = "EPYC",
         pat_model: str = "architectural", stdout: io.RawIOBase | None = None,
         trace: str = "", trace_out: io.TextIOBase | None = None, explain: bool = True,
         cpus: int = 1, quantum: int | None = None) -> VM:
    """Boot a multiboot image or a .S source as `svmemu run` does, stopped before the guest's
    first instruction. `stdout`: where COM1 output also goes (it is always kept in
    `vm.serial`); `trace`: categories as `svmemu run --trace`, written to `trace_out`;
    `explain=False` keeps the explanation of a failed VMRUN off stderr (as `-q`); `cpus` and
    `quantum` are `-smp` and `--quantum`."""
    from emu.cli.image import image_symbols, load_image_bytes
    from emu.core.cpu_models import parse_cpu
    from emu.core.trace import Tracer, parse_categories
    from emu.loader.multiboot import parse_image, qemu_cmdline
    from svm_ext.extension import SvmExtension
    model = parse_cpu(cpu)
    data, name = load_image_bytes(image, memory)
    tracer = None
    if trace:
        import sys
        tracer = Tracer(parse_categories(trace), trace_out or sys.stderr)
    m = Machine(memory, stdout=stdout, tracer=tracer, cpu=model,
                extensions=[SvmExtension(pat_model=pat_model)] if model.svm else [],
                cpus=cpus, quantum=quantum)
    if tracer is not None and tracer.on("mem"):
        from emu.tools import memtrace
        memtrace.attach(m)
    m.explain = explain
    m.load_multiboot(parse_image(data, name, memory), qemu_cmdline(image, append))
    return VM(m, image_symbols(image))


def resume(path: str, *, pat_model: str = "architectural",
           stdout: io.RawIOBase | None = None) -> VM:
    """A VM from a snapshot file (`svmemu run --snapshot-at ... --snapshot FILE`)."""
    from svm_ext.extension import SvmExtension
    snap = snapshots.read(path)
    m = Machine(snap.ram_size, stdout=stdout, extensions=[SvmExtension(pat_model=pat_model)],
                cpus=snap.cpus)
    snapshots.restore(m, snap)
    return VM(m)
