"""One fuzz input, start to verdict: reset, place the input, run, judge.

The machine is run once to the start point (`--start-at`, or the next VMRUN for VMCB inputs),
which becomes a fast reset point (emu/core/fastreset.py). Every input then costs a reset of the pages
the previous input dirtied, the input's bytes written where the user said, and the guest's own
run at Unicorn speed; Python sees only the events it always sees (port I/O, MSRs, world
switches), never instructions or memory accesses.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

from unicorn import UC_HOOK_CODE

from emu.errors import OptionError
from emu.core.fastreset import ResetPoint
from emu.core.machine import Machine, RunResult

REASON_CRASH = "crash"         # a rule stopped the run from inside (e.g. an unexpected #VMEXIT)


class Placement:
    """Where an input's bytes go. `prepare` runs once at the reset point; `place` per input."""

    def prepare(self, machine: Machine) -> None:
        pass

    def place(self, machine: Machine, data: bytes) -> None:
        raise NotImplementedError


class MemoryPlacement(Placement):
    """`--input-at ADDR|SYMBOL[:MAXLEN]`: the input, truncated to MAXLEN and zero-padded to it
    (so a short input never leaves a longer one's tail behind), at a guest linear address as the
    CPU translates it at the reset point."""

    def __init__(self, address: int, maxlen: int) -> None:
        self.address = address
        self.maxlen = maxlen
        self._pieces: list[tuple[int, int]] = []     # (physical address, length)

    def prepare(self, machine: Machine) -> None:
        from emu.core.interrupts import Fault
        va, left = self.address, self.maxlen
        machine.ctx.save()
        while left > 0:
            n = min(left, 0x1000 - (va & 0xFFF))
            try:
                pa = machine.mem.translate(va, write=True)
            except Fault:
                raise OptionError(f"--input-at {self.address:#x}+{self.maxlen:#x}: linear address "
                                  f"{va:#x} is not mapped writable at the start point")
            if not machine.layout.is_ram(pa, n):
                raise OptionError(f"--input-at {self.address:#x}: not backed by RAM")
            self._pieces.append((pa, n))
            va += n
            left -= n

    def place(self, machine: Machine, data: bytes) -> None:
        data = data[:self.maxlen].ljust(self.maxlen, b"\0")
        ram = machine.ram
        off = 0
        for pa, n in self._pieces:
            ram[pa:pa + n] = data[off:off + n]
            off += n


@dataclass
class Verdict:
    crashed: bool
    why: str
    result: RunResult


@dataclass
class CrashRules:
    """`--crash-on` rules; the ones the machine can judge after a run. Rules that must watch the
    run from inside (an unexpected #VMEXIT) stop it with reason "crash" and say why."""

    triple_fault: bool = False
    statuses: set[int] = field(default_factory=set)
    serial: list[re.Pattern[bytes]] = field(default_factory=list)

    def judge(self, result: RunResult, serial: bytes) -> tuple[bool, str]:
        if result.reason == REASON_CRASH:
            return True, result.message
        if self.triple_fault and result.reason == "shutdown":
            return True, f"triple fault: {result.message}"
        if result.status in self.statuses:
            return True, f"exit status {result.status} ({result.message})"
        for pat in self.serial:
            m = pat.search(serial)
            if m:
                return True, f"serial output matched {pat.pattern.decode(errors='replace')!r}"
        return False, f"{result.reason}: {result.message}"


def parse_crash_rules(specs: list[str], extra: Callable[[str, str], bool]) -> CrashRules:
    """triple-fault | status=N | serial=REGEX; other KIND=VALUE go to `extra` (the extension's
    rules), which returns False for kinds it does not know either."""
    rules = CrashRules()
    for spec in specs:
        kind, _, value = spec.partition("=")
        if spec == "triple-fault":
            rules.triple_fault = True
        elif kind == "status" and value:
            try:
                rules.statuses.add(int(value, 0))
            except ValueError:
                raise OptionError(f"--crash-on status=N wants a number, not {value!r}")
        elif kind == "serial" and value:
            try:
                rules.serial.append(re.compile(value.encode()))
            except re.error as e:
                raise OptionError(f"--crash-on serial=REGEX: bad pattern ({e})")
        elif not extra(kind, value):
            raise OptionError(f"unknown --crash-on rule {spec!r} (triple-fault, status=N, "
                              "serial=REGEX, vmexit=CODE)")
    if not (rules.triple_fault or rules.statuses or rules.serial) and not specs:
        rules.triple_fault = True        # the default: a triple fault is a crash
    return rules


class Harness:
    def __init__(self, machine: Machine, placement: Placement, rules: CrashRules,
                 code_ranges: list[tuple[int, int]], input_timeout: float | None = None) -> None:
        self.machine = machine
        self.placement = placement
        self.rules = rules
        self.code_ranges = code_ranges
        self.input_timeout = input_timeout
        self.reset_point: ResetPoint | None = None
        self.executions = 0
        self._serial_base = 0

    def run_to(self, address: int | None) -> RunResult | None:
        """Run from boot until RIP reaches `address` (None: do not run, start where we are)."""
        if address is None:
            return None
        m = self.machine

        def reached(uc, addr, size, _data) -> None:
            m.stop("breakpoint", 0, f"start point {address:#x} reached")
        hook = m.uc.hook_add(UC_HOOK_CODE, reached, None, address, address)
        try:
            result = m.run()
        finally:
            m.uc.hook_del(hook)
        if result.reason != "breakpoint":
            raise OptionError(f"the guest never reached the start point {address:#x}: "
                              f"{result.message} (rip {result.rip:#x})")
        return result

    def arm(self, end_at: list[int] = ()) -> None:
        """The machine is at the start point: prepare the placement and take the reset point.
        Reaching an `end_at` address ends an input's run (not a crash): Unicorn instruments only
        those addresses, so the rest of the code runs unhooked."""
        self.placement.prepare(self.machine)
        self.reset_point = ResetPoint(self.machine, self.code_ranges)
        m = self.machine
        for address in end_at:
            m.uc.hook_add(UC_HOOK_CODE, self._on_end, None, address, address)

    def _on_end(self, uc, address: int, size: int, _data: object) -> None:
        self.machine.stop("end", 0, f"end point {address:#x} reached")

    def prepare_input(self, data: bytes) -> None:
        assert self.reset_point is not None
        if self.executions:
            self.reset_point.reset()
        self.executions += 1
        self.placement.place(self.machine, data)
        self._serial_base = len(self.machine.serial.output)

    def execute(self, run: "Callable[[], RunResult] | None" = None) -> Verdict:
        """Run the placed input and judge it; `run` replaces the plain run (the gdb stub's)."""
        m = self.machine
        result = run() if run is not None else m.run(timeout=self.input_timeout)
        crashed, why = self.rules.judge(result, bytes(m.serial.output[self._serial_base:]))
        return Verdict(crashed, why, result)

    def run_input(self, data: bytes) -> Verdict:
        self.prepare_input(data)
        return self.execute()
