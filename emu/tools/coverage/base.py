"""The base class every coverage and trace format derives from, and what they share."""
from __future__ import annotations

from typing import TYPE_CHECKING

from emu.engine.hostvm import L0_BASE, L0_SIZE

if TYPE_CHECKING:
    from emu.core.machine import Machine


def is_l0(address: int) -> bool:
    """Code in the L0-private region (the boot trampoline) is the emulator's, not the guest's."""
    return L0_BASE <= address < L0_BASE + L0_SIZE


class CoverageOutput:
    """One output format. Subclasses implement `attach` (add their hooks) and `close`."""

    name = "output"

    def __init__(self, path: str, image_name: str) -> None:
        self.path = path
        self.image_name = image_name
        self._hooks: list[int] = []
        self._machine: "Machine | None" = None
        self._space: str | None = None

    def attach(self, machine: "Machine") -> None:
        """Install the hooks; called once, before the run."""
        self._machine = machine
        machine.world_observers.append(self._world_changed)

    def detach(self) -> None:
        m = self._machine
        if m is None:
            return
        for h in self._hooks:
            m.uc.hook_del(h)
        self._hooks.clear()
        if self._world_changed in m.world_observers:
            m.world_observers.remove(self._world_changed)
        self._machine = None

    def space(self) -> str:
        """The address space running now; cached between world switches (asked per block)."""
        if self._space is None:
            assert self._machine is not None
            self._space = self._machine.address_space()
        return self._space

    def _world_changed(self, old: str, new: str) -> None:
        self._space = None

    def close(self) -> None:
        """Write the file; the machine may be gone by then."""
        raise NotImplementedError
