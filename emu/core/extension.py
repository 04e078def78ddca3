"""The interface through which an extension (nested SVM) plugs into the machine.

The machine (L0) knows nothing of the guest-visible SVM. An extension gets, in `attach`, the
machine object and uses only these entry points on it:

- `machine.register_exit(code, handler)`: handle a hardware exit code L0 intercepts (VMRUN,
  VMMCALL, ...); the handler runs in the INTR hook with RIP at the instruction.
- `machine.msrs.register(index, read, write)` and `machine.msrs.efer_writable`, `efer_write_hooks`.
- `machine.cpuid.set_leaf / set_bits / overrides`.
- `machine.raise_exception(vector, error_code)`, `machine.deliver_event(event, rip)`,
  `machine.stop(reason, status, message)`, `machine.shutdown(message)`.
- `machine.router`: an ExitRouter (below) that sees exits, exceptions, nested faults, port I/O
  and shutdown first while a nested guest runs.
- `machine.world_observers`: called with (old_level, new_level) on every world switch.
- `machine.claim_cr8()`: the world just entered uses the APIC's TPR as its CR8.
- `machine.interrupt_check(virtual)`: something that gates interrupts changed (STGI, VMRUN):
  look for a deliverable interrupt at the next instruction boundary (`virtual`: the extension
  has a virtual interrupt of its own pending, e.g. V_IRQ).
- snapshot sections: `snapshot_state` / `load_snapshot_state` below.
- memory types: `world_paging` below tells queries and `--trace mem` how a world translates
  and which PAT its page tables index (the machine alone knows only L1 and its one PAT).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Optional

from emu.errors import Unsupported

from emu.arch.paging import PagingRegs

if TYPE_CHECKING:
    from emu.core.board import Board


class WorldPaging:
    """How one world turns its linear addresses into system-physical ones and which PAT types
    them (APM vol. 2, 7.8 and 15.25.8). With nested paging ``ncr3`` is set: the world's own
    walk gives a guest-physical address, the nested table (in the host's paging mode
    ``host_regs``) gives the system-physical one, and the nested leaf indexes ``host_pat``."""

    __slots__ = ("world", "regs", "pat", "pat_name", "ncr3", "host_regs", "host_pat",
                 "host_cr0")

    def __init__(self, world: str, regs: PagingRegs, pat: int, pat_name: str,
                 ncr3: Optional[int] = None, host_regs: Optional[PagingRegs] = None,
                 host_pat: Optional[int] = None, host_cr0: int = 0) -> None:
        self.world = world              # "L1" or "L2"
        self.regs = regs                # the world's own CR0/CR3/CR4/EFER
        self.pat = pat                  # the PAT the world's leaves index
        self.pat_name = pat_name        # which register that is: "PAT", "hPAT", "gPAT", ...
        self.ncr3 = ncr3                # nested page table root, None without nested paging
        self.host_regs = host_regs
        self.host_pat = host_pat
        self.host_cr0 = host_cr0


# What `ExitRouter.on_interrupt_window` did at an interrupt point (emu/core/irq.py).
WINDOW_NONE = 0       # nothing to do
WINDOW_WANTED = 1     # an interrupt waits for RFLAGS.IF / the interrupt shadow: open a window
WINDOW_TAKEN = 2      # it delivered or exited: RIP or the world changed


class ExitRouter:
    """Gets first sight of events while a nested guest runs, so it can turn them into #VMEXITs.

    The machine calls these only when `machine.router` is set; each returns True when it took
    the event (the machine then does nothing more with it)."""

    def on_exit(self, code: int) -> bool:
        """A hardware exit code from the INTR hook, RIP at the instruction."""
        return False

    def on_exception(self, event: Any, during: Any | None) -> bool:
        """An exception about to be delivered; `during` is the event whose delivery raised it."""
        return False

    def on_nested_fault(self, fault: Any, during: Any | None) -> bool:
        """A nested page fault met by L0 itself (e.g. pushing an exception frame)."""
        return False

    def on_shutdown(self, reason: str) -> bool:
        return False

    # ---- interrupts (emu/core/irq.py) -------------------------------------------------------------
    def gif(self) -> bool:
        """The global interrupt flag: False holds every interrupt pending (CLGI)."""
        return True

    def physical_if(self) -> bool | None:
        """The flag that masks physical interrupts now, when it is not the running guest's
        RFLAGS.IF (a nested guest with V_INTR_MASKING: the host's IF); None otherwise."""
        return None

    def on_interrupt(self, vector: int) -> bool:
        """A physical interrupt can be taken now; True: the router took it as an exit (it then
        stays pending in the APIC)."""
        return False

    def on_nmi(self) -> bool:
        """An NMI can be taken now; True: the router took it as an exit (it stays pending)."""
        return False

    def on_smi(self) -> bool:
        """An SMI can be taken now; True: the router took it as an exit (it stays pending)."""
        return False

    def on_init(self) -> bool:
        """An INIT can be taken now; True: the router took it (an exit, after which it stays
        pending, or a redirection it consumed: the router then clears `apic.init_pending`)."""
        return False

    def on_interrupt_window(self) -> int:
        """An interrupt point after physical interrupts were considered: deliver a virtual
        interrupt if one can be taken. Returns WINDOW_NONE, WINDOW_WANTED or WINDOW_TAKEN."""
        return WINDOW_NONE

    def on_io(self, port: int, size: int, is_in: bool) -> Optional[Callable[[], None]]:
        """A port access (from the IN/OUT hook, RIP at the instruction). To take it as an exit
        before the instruction, return the action to run once the machine has undone the
        instruction (RIP back at it, registers as before); None lets the access happen."""
        return None


class Extension:
    name = "extension"

    def attach(self, machine: "Board") -> None:
        """Register handlers; called once, before the guest is loaded."""

    def for_another_cpu(self) -> "Extension":
        """A new, unattached extension configured as this one, for another CPU of the machine
        (`-smp N`): each CPU has its own."""
        raise Unsupported(f"unsupported: the {self.name} extension with more than one CPU")

    def level(self) -> str:
        """The world now running, for traces and the debugger ("L1", "L2")."""
        return "L1"

    def address_space(self) -> str:
        """A name for the address space now running, unique per guest context (e.g. "L2.asid1"):
        coverage files keep code of different spaces apart even at equal addresses."""
        return self.level()

    def world_paging(self, world: str) -> Optional[WorldPaging]:
        """The paging and PAT of ``world`` ("L1"/"L2") as things stand, whichever world is
        running; None when this extension has no say (the machine then answers for L1)."""
        return None

    # ---- what the debugger (emu/tools/gdb/stub.py) asks about worlds ---------------------------------
    def world_summary(self) -> str:
        """One line for `monitor world`: the world running and what defines it."""
        return self.level()

    def control_block(self) -> list[tuple[str, int]]:
        """The control block of the nested guest running or last run (for SVM the VMCB), field by
        field under the architecture's names, as guest memory holds it now; [] when none."""
        return []

    def last_exit(self) -> Optional[str]:
        """Why the nested guest last stopped running (exit code by name, exit information), for
        the debugger's stop messages; None before the first exit."""
        return None

    def world_switches(self) -> Optional[tuple[int, int, dict[str, int]]]:
        """(entries into the nested guest, exits from it, exits by name) since the machine was
        made, for the end-of-run summary; None when this extension switches no worlds."""
        return None

    def switches_so_far(self) -> int:
        """World switches so far, cheap enough to ask twice a second from another thread while
        the guest runs (the progress line)."""
        return 0

    def snapshot_state(self) -> dict[str, Any]:
        return {}

    def load_snapshot_state(self, state: dict[str, Any]) -> None:
        pass

    def power_on_reset(self, state: dict[str, Any]) -> None:
        """A platform reset mid-run (the wake-up from ACPI S3): back to `state`, what
        `snapshot_state` gave at power-on. Counts a run reports over its whole length may be
        kept."""
        self.load_snapshot_state(state)
