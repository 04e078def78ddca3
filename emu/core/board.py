"""The machine as the parts it is built from see it.

The interrupt controller, the PC devices, firmware, the control-register and RDPMC exits and the
extensions are constructed by `emu.core.machine.Machine` and call back into it. They name this
protocol instead of `Machine`, so the machine imports its parts and no part imports the machine:
what a part may use of the machine is exactly what is listed here.
"""
from __future__ import annotations

import mmap
from typing import TYPE_CHECKING, Any, Callable, Protocol

if TYPE_CHECKING:
    from unicorn import Uc

    from emu.core.cpuid import Cpuid
    from emu.core.devices.apic import LocalApic
    from emu.core.devices.base import PortDevice
    from emu.core.devices.serial import Serial16550
    from emu.core.firmware.layout import RamLayout
    from emu.core.interrupts import Event
    from emu.core.memory import GuestMemory
    from emu.core.msr import MsrFile
    from emu.engine.hw_switch import Context
    from emu.engine.io_trap import IoTrap
    from emu.engine.replay import Engine


class Board(Protocol):
    uc: "Uc"
    ctx: "Context"
    mem: "GuestMemory"
    ram: mmap.mmap
    ram_addr: int          # host address of `ram`, for the C engine
    ram_size: int
    layout: "RamLayout"
    cpus: int
    cpu_index: int         # 0 for the boot processor; its APIC ID
    cpu_list: list[Any]    # every CPU (Machine), the boot processor first
    cpuid: "Cpuid"
    msrs: "MsrFile"
    tsc: int
    ports: dict[int, "PortDevice"]
    devices: list["PortDevice"]
    world_observers: list[Callable[[str, str], None]]
    memory_hooks: list[Callable[["Uc"], list[int]]]   # installers of --trace mem's hooks
    replay: "Engine | None"                           # the C engine, when built
    io_trap: "IoTrap"
    apic: "LocalApic"
    serial: "Serial16550"
    # Sibling parts, typed loosely: naming their classes here would tie them back to this file.
    tracer: Any            # emu.core.trace.Tracer | None
    router: Any            # emu.core.extension.ExitRouter | None
    irq: Any               # emu.core.irq.InterruptController
    pc: Any                # emu.core.devices.pc.PcPlatform
    open_bus: Any          # emu.core.devices.open_bus.OpenBus

    def where(self) -> str: ...
    def level(self) -> str: ...
    def address_space(self) -> str: ...
    def between_slices(self, action: Callable[[], None]) -> None: ...
    def register_exit(self, code: int, handler: Callable[[int], None]) -> None: ...
    def add_device(self, dev: "PortDevice") -> None: ...
    def raise_exception(self, vector: int, error_code: int | None = None,
                        cr2: int | None = None) -> None: ...
    def deliver_event(self, event: "Event", return_rip: int, injected: bool = False) -> None: ...
    def deliver_now(self, event: "Event", return_rip: int) -> None: ...
    def wait_for_iret(self) -> None: ...
    def run_deferred(self) -> None: ...
    def interrupt_check(self, virtual: bool = False) -> None: ...
    def svm_enabled(self) -> bool: ...
    def at_trampoline(self) -> bool: ...
    def claim_cr8(self) -> None: ...
    def replay_sync(self) -> None: ...
    def shutdown(self, message: str) -> None: ...
    def stop(self, reason: str, status: int, message: str) -> None: ...
    def reset_request(self, message: str) -> None: ...
    def poweroff(self, message: str) -> None: ...
    def enter_wait_for_sipi(self) -> None: ...
    def wake(self) -> None: ...
