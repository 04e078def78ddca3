"""The base class every coverage and trace format derives from, and what they share."""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from emu.engine.hostvm import L0_BASE, L0_SIZE

if TYPE_CHECKING:
    from emu.core.machine import Machine


def is_l0(address: int) -> bool:
    """Code in the L0-private region (the boot trampoline) is the emulator's, not the guest's."""
    return L0_BASE <= address < L0_BASE + L0_SIZE


class CoverageOutput:
    """One output format. Subclasses implement `hooks` (add theirs to one CPU's engine) and
    `close`. With several CPUs every CPU is hooked, and each space name starts with its CPU
    (`cpu1.L2.asid1`): what each CPU ran stays apart, as L1 and L2 do."""

    name = "output"

    def __init__(self, path: str, image_name: str) -> None:
        self.path = path
        self.image_name = image_name
        self._hooks: list[tuple["Machine", int]] = []
        self._observers: list[tuple["Machine", Callable[[str, str], None]]] = []
        self._machine: "Machine | None" = None
        self._cpus: dict[int, "Machine"] = {}
        self._spaces: dict[int, str | None] = {}   # per CPU: the space running, cached

    def attach(self, machine: "Machine") -> None:
        """Install the hooks on every CPU; called once, before the run."""
        self._machine = machine
        for cpu in machine.cpu_list:
            self._attach_cpu(cpu)
        machine.cpu_attachers.append(self._attach_cpu)     # CPUs an INIT re-makes

    def _attach_cpu(self, cpu: "Machine") -> None:
        index = cpu.cpu_index
        self._cpus[index] = cpu
        self._spaces[index] = None

        def changed(old: str, new: str) -> None:
            self._spaces[index] = None
        cpu.world_observers.append(changed)
        self._observers.append((cpu, changed))
        self._hooks += [(cpu, h) for h in self.hooks(cpu, index)]

    def hooks(self, cpu: "Machine", index: int) -> list[int]:
        """Add this format's hooks to CPU `index`'s engine (its index is their user data)."""
        raise NotImplementedError

    def detach(self) -> None:
        m = self._machine
        if m is None:
            return
        for cpu, h in self._hooks:
            cpu.uc.hook_del(h)
        self._hooks.clear()
        for cpu, changed in self._observers:
            if changed in cpu.world_observers:
                cpu.world_observers.remove(changed)
        self._observers.clear()
        if self._attach_cpu in m.cpu_attachers:
            m.cpu_attachers.remove(self._attach_cpu)
        self._machine = None

    def space(self, index: int = 0) -> str:
        """The address space CPU `index` runs now; cached between its world switches (asked
        per block)."""
        space = self._spaces.get(index)
        if space is None:
            assert self._machine is not None
            space = self._cpus[index].address_space()
            if self._machine.cpus > 1:
                space = f"cpu{index}.{space}"
            self._spaces[index] = space
        return space

    def close(self) -> None:
        """Write the file; the machine may be gone by then."""
        raise NotImplementedError
