"""Points in a run a user names: the Nth VMRUN or #VMEXIT, the Nth time RIP reaches an address
or symbol, or an instruction count (`--snapshot-at`, and the trace window's from/until).

A world switch is seen through `Machine.world_observers` (a VMRUN that fails its checks switches
no world and is not counted); an address through a code hook on that one address, so code
elsewhere runs without a hook. Watching either keeps world switches in Python (no C replay) for
as long as the watch is attached, which is what makes each one visible.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Mapping

from unicorn import UC_HOOK_CODE

from emu.errors import OptionError

if TYPE_CHECKING:
    from emu.core.board import Board

KINDS = ("vmrun", "vmexit")
SYNTAX = "N (instructions), vmrun[:N], vmexit[:N], SYMBOL[:N] or *ADDRESS[:N]"


@dataclass(frozen=True)
class EventSpec:
    kind: str                 # "insns" | "vmrun" | "vmexit" | "address"
    count: int                # instructions for "insns"; otherwise which occurrence (1 = first)
    address: int = 0
    text: str = ""            # as the user wrote it, for messages

    def describe(self) -> str:
        if self.kind == "insns":
            return f"instruction {self.count}"
        nth = f"{_ordinal(self.count)} " if self.count != 1 else ""
        if self.kind == "address":
            name = self.text.rpartition(":")[0] if self.count != 1 or ":" in self.text \
                else self.text
            where = f"{name} ({self.address:#x})" if not name.startswith("*") else name[1:]
            return f"the {nth}arrival at {where}" if nth else where
        return f"the {nth}{'VMRUN' if self.kind == 'vmrun' else '#VMEXIT'}"


def parse_event(text: str, symbols: Mapping[str, int], what: str) -> EventSpec:
    """`what` names the option in the error line."""
    spec = text.strip()
    try:
        n = int(spec, 0)
    except ValueError:
        pass
    else:
        if n <= 0:
            raise OptionError(f"{what}: {text!r} must be positive")
        return EventSpec("insns", n, text=text)
    name, sep, count_text = spec.rpartition(":")
    if not sep:
        name, count_text = spec, "1"
    try:
        count = int(count_text, 0)
    except ValueError:
        raise OptionError(f"{what}: {text!r}: the count {count_text!r} is not a number "
                          f"(expected {SYNTAX})")
    if count <= 0:
        raise OptionError(f"{what}: {text!r}: the count must be positive")
    if name in KINDS:
        return EventSpec(name, count, text=text)
    if name.startswith("*"):
        try:
            return EventSpec("address", count, int(name[1:], 0), text)
        except ValueError:
            raise OptionError(f"{what}: {name[1:]!r} is not an address")
    if name in symbols:
        return EventSpec("address", count, symbols[name], text)
    raise OptionError(f"{what}: {text!r} is not {SYNTAX}"
                      + ("" if symbols else " (this image has no symbols)"))


class EventWatch:
    """Calls `fire` once, when the event happens; for an address, before the instruction there
    runs; for a world switch, right after it, in the new world."""

    def __init__(self, machine: "Board", spec: EventSpec, fire: Callable[[], None],
                 restarts: bool = False) -> None:
        """`restarts`: `fire` stops emulation before the instruction at the address, which
        then runs from the start again; its second arrival there is the same one."""
        if spec.kind == "insns":
            raise ValueError("instruction counts are the run's own limit (Machine.run max_insns)")
        self.m, self.spec, self.fire = machine, spec, fire
        self.seen = 0
        self._restarts = restarts
        self._again = False
        self._hook: int | None = None
        if spec.kind == "address":
            self._hook = machine.uc.hook_add(UC_HOOK_CODE, self._on_code, None, spec.address,
                                             spec.address)
        else:
            machine.world_observers.append(self._on_world)

    def _hit(self) -> None:
        self.seen += 1
        if self.seen == self.spec.count:
            self.fire()

    def _on_code(self, uc, address: int, size: int, _data: object) -> None:
        self.m.replay_sync()
        if self._again:
            self._again = False
            return
        self._hit()
        self._again = self._restarts and self.seen == self.spec.count

    def _on_world(self, old: str, new: str) -> None:
        entering = old == "L1"
        if (self.spec.kind == "vmrun") == entering:
            self._hit()

    def detach(self) -> None:
        if self._hook is not None:
            self.m.uc.hook_del(self._hook)
            self._hook = None
        elif self._on_world in self.m.world_observers:
            self.m.world_observers.remove(self._on_world)


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"
