"""Nested-SVM pieces of the fuzzer: VMCB fields as the input, an unexpected #VMEXIT as a crash.

`--input-vmcb FIELD[,FIELD...]`: the reset point is the next VMRUN, stopped before it executes
(RIP at the instruction, vmcb12 still as L1 wrote it). Per input, the fields (vmcb.FIELDS names,
in the order given) are overwritten with consecutive input bytes, each field taking its own size;
bytes the input does not reach keep L1's values. Then VMRUN runs: its consistency checks, the
world switch and L1's exit handlers all see the fuzzed VMCB.

`--crash-on vmexit=CODE`: a #VMEXIT to L1 with that EXITCODE (VMEXIT_INVALID, -1, included) ends
the run as a crash, right at the exit.
"""
from __future__ import annotations

import struct

from unicorn.x86_const import UC_X86_REG_RAX

from emu.arch.vmcb import VMEXIT_VMRUN
from emu.errors import OptionError
from emu.tools.fuzz.harness import REASON_CRASH, Placement
from emu.core.machine import Machine

from .vcpu import Vcpu
from emu.arch.vmcb import FIELDS, exit_name

_EXITCODE = next(off for name, off, _ in FIELDS if name == "exitcode")
_SIZES = {"seg": 16, "15s": 15}


def field_layout(names: list[str]) -> list[tuple[str, int, int]]:
    """(name, offset, size) for each field named, in the order given."""
    table = {name: (off, _SIZES.get(kind) or struct.calcsize("<" + kind)) for name, off, kind in FIELDS}
    out = []
    for name in names:
        if name not in table:
            raise OptionError(f"--input-vmcb: no VMCB field {name!r} (fields: "
                              f"{', '.join(n for n, _, _ in FIELDS)})")
        out.append((name, *table[name]))
    return out


class VmrunStop:
    """Wraps the VMRUN exit handler: while armed, the next VMRUN stops the run before executing
    (the reset point for VMCB inputs); disarmed, it passes through and watches for failed
    VMRUNs (VMEXIT_INVALID does not switch worlds, so the world observer never sees it)."""

    def __init__(self, machine: Machine, ext: Vcpu) -> None:
        self.machine = machine
        self.ext = ext
        self.armed = False
        self.crash_codes: set[int] = set()
        self._inner = machine.exit_handler(VMEXIT_VMRUN)
        machine.register_exit(VMEXIT_VMRUN, self._on_vmrun)
        machine.world_observers.append(self._on_world)

    def _on_vmrun(self, code: int) -> None:
        if self.armed:
            self.armed = False
            self.machine.stop("breakpoint", 0, "stopped at VMRUN")
            return
        st = self.ext.state
        before = st.stats["vmexit"]
        assert self._inner is not None
        self._inner(code)
        if self.crash_codes and st.stats["vmexit"] != before and not st.in_l2:
            self._check(st.vmcb12_pa)

    def _on_world(self, old: str, new: str) -> None:
        if self.crash_codes and old == "L2" and new == "L1":
            self._check(self.ext.state.vmcb12_pa)

    def _check(self, vmcb_pa: int) -> None:
        code = self.machine.mem.read_u64(vmcb_pa + _EXITCODE)
        if code in self.crash_codes:
            self.machine.stop(REASON_CRASH, 0, f"unexpected #VMEXIT {exit_name(code)} "
                              f"({code:#x})")


class VmcbPlacement(Placement):
    def __init__(self, fields: list[str]) -> None:
        self.layout = field_layout(fields)
        self.pa = 0
        self.original: list[bytes] = []

    def prepare(self, machine: Machine) -> None:
        pa = machine.uc.reg_read(UC_X86_REG_RAX)
        if pa & 0xFFF or not machine.layout.is_ram(pa, 0x1000):
            raise OptionError(f"--input-vmcb: the VMRUN at the start point has rAX {pa:#x}, not "
                              "a VMCB in RAM")
        self.pa = pa
        self.original = [bytes(machine.ram[pa + off:pa + off + size])
                         for _, off, size in self.layout]

    def place(self, machine: Machine, data: bytes) -> None:
        pos = 0
        ram = machine.ram
        for (_, off, size), orig in zip(self.layout, self.original):
            chunk = data[pos:pos + size]
            pos += size
            ram[self.pa + off:self.pa + off + size] = chunk + orig[len(chunk):]


def parse_exit_code(value: str) -> int:
    try:
        code = int(value, 0)
    except ValueError:
        raise OptionError(f"--crash-on vmexit=CODE wants a number (e.g. 0x81, -1), not {value!r}")
    return code & 0xFFFFFFFFFFFFFFFF
