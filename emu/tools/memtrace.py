"""`--trace mem`: one line per guest data read and write, with the address at every stage and
the memory type the access gets.

This is the one place svmemu hooks memory accesses, so it exists only when the user asks for
the `mem` category (`attach` registers it with the machine, whose runs install it and remove it
after). Each access is looked
up with the memory-type query (emu/tools/memquery.py) in the world that made it, so a line shows
VA -> PA natively, VA -> GPA -> SPA under nested paging, and the effective type from the PAT
that world uses. Instruction fetches are not traced: Unicorn 2.1.4 does not call fetch hooks
for code it translates, and `--trace insn` covers them.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from unicorn import UC_HOOK_CODE, UC_HOOK_MEM_READ, UC_HOOK_MEM_WRITE, Uc
from unicorn.unicorn_const import UC_MEM_WRITE

from emu.errors import SvmemuError
from emu.tools.memquery import memtype_for, world_paging

if TYPE_CHECKING:
    from emu.core.machine import Machine


def attach(machine: "Machine") -> None:
    """Trace every data access of the machine's runs (the tracer must have the `mem` category)."""
    machine.memory_hooks.append(MemTrace(machine).install)


class MemTrace:
    def __init__(self, machine: "Machine") -> None:
        self.machine = machine
        self.pc = 0

    def install(self, uc: Uc) -> list[int]:
        """Add the hooks; returns their handles for the caller to delete.

        Inside a memory hook Unicorn's RIP is the start of the translation block, not the
        instruction making the access, so a code hook records each instruction's address."""
        return [uc.hook_add(UC_HOOK_CODE, self._on_insn),
                uc.hook_add(UC_HOOK_MEM_READ | UC_HOOK_MEM_WRITE, self._on_access)]

    def _on_insn(self, uc: Uc, address: int, size: int, _data: object) -> None:
        self.pc = address

    def line(self, write: bool, va: int, size: int, value: int) -> str:
        """The text after the trace prefix, for one access of `size` bytes at `va`. A read's
        value is what memory holds at the translated address as the access begins (Unicorn's
        Python binding has no after-read hook), which is what the read returns for RAM."""
        try:
            r = memtype_for(self.machine, world_paging(self.machine), va)
        except (SvmemuError, ValueError) as e:    # a trace line must never stop the guest
            return f"{'write' if write else 'read '} size {size} va {va:#x} (no translation: {e})"
        if not write:
            value = self._peek(r.spa, size)
        shown = "?" if value is None else f"{value & ((1 << (8 * size)) - 1):#x}"
        return f"{'write' if write else 'read '} size {size} value {shown} {r.short()}"

    def _peek(self, spa: int, size: int) -> int | None:
        if (spa & 0xFFF) + size <= 0x1000 and self.machine.open_bus.covers(spa):
            return (1 << (8 * size)) - 1          # nothing there: the bus reads all-ones
        if (spa & 0xFFF) + size > 0x1000 or not self.machine.layout.is_ram(spa, size):
            return None          # crosses a page (the next may map elsewhere) or not RAM
        return int.from_bytes(self.machine.mem.view[spa:spa + size], "little")

    def _on_access(self, uc: Uc, access: int, address: int, size: int, value: int,
                   _data: object) -> None:
        m = self.machine
        if m.tracer is None:
            return
        ctx = m.ctx.save()
        where = f"[{m.level()} {ctx.mode_bits()} cpl{ctx.cpl}] {self.pc:#x}"
        m.tracer.line("mem", where, self.line(access == UC_MEM_WRITE, address, size, value),
                      rip=self.pc)
