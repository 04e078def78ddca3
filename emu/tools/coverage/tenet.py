"""Tenet execution traces (the text format the Tenet trace explorer for IDA reads).

One line per executed instruction: the registers whose value changed since the previous line of
the same file (all of them on the first line), always `rip`, then the memory the instruction
accessed, `mr=ADDR:HEX` for reads and `mw=ADDR:HEX` for writes (HEX = the bytes in memory order),
comma-separated:

    rax=0x5,rbx=0x200000,rip=0x200010,mw=0x200000:0500000000000000

Tenet follows one address space, so each space gets its own file: L1 writes FILE, any other space
(an L2, by ASID) writes FILE.<space> (e.g. trace.txt.L2.asid1); register deltas are taken against
the previous line of that same file, so returning to L1 after a #VMEXIT shows what the world
switch changed. Memory addresses are the linear addresses the instruction used. With several
CPUs each CPU's spaces get their own files too: CPU 0's L1 writes FILE, the others
FILE.cpuN.<space> (FILE.cpu1.L1, FILE.cpu0.L2.asid1), one thread of execution each, as Tenet
expects.

Costs a Python call per instruction and per memory access: only installed with --tenet.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, TextIO

from unicorn import UC_HOOK_CODE, UC_HOOK_MEM_READ_AFTER, UC_HOOK_MEM_WRITE
from unicorn import x86_const as X

from emu.engine import binding
from emu.engine.binding import HOOK_MEM_ACCESS_CFUNC
from emu.errors import OptionError
from .base import CoverageOutput, is_l0

if TYPE_CHECKING:
    from unicorn import Uc
    from emu.core.machine import Machine

REGISTERS = ("rax", "rbx", "rcx", "rdx", "rbp", "rsp", "rsi", "rdi", "r8", "r9", "r10", "r11",
             "r12", "r13", "r14", "r15", "rip")
_UC_REGS = [getattr(X, f"UC_X86_REG_{r.upper()}") for r in REGISTERS]
_RIP = len(REGISTERS) - 1


class _SpaceFile:
    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.last: list[int] | None = None


class TenetOutput(CoverageOutput):
    name = "tenet"

    def __init__(self, path: str, image_name: str) -> None:
        super().__init__(path, image_name)
        self._files: dict[str, _SpaceFile] = {}
        # Per CPU: the line being built (written at that CPU's next instruction) and its file.
        self._line: dict[int, list[str] | None] = {}
        self._target: dict[int, _SpaceFile | None] = {}
        self._first_space: str | None = None
        self._read_cbs: list[object] = []

    def hooks(self, cpu: "Machine", index: int) -> list[int]:
        uc = cpu.uc
        self._line[index] = self._target[index] = None
        # The binding's hook_add refuses MEM_READ_AFTER (the only hook that sees the value a read
        # returned, without a second page walk), so it is registered with the binding's own
        # registration routine; the binding keeps the callback alive and hook_del removes it.
        read_cb = HOOK_MEM_ACCESS_CFUNC(
            lambda _uc, access, address, size, value, _key: self._on_read(index, address, size,
                                                                          value))
        self._read_cbs.append(read_cb)
        return [uc.hook_add(UC_HOOK_CODE, self._on_insn, index),
                binding.add_mem_hook_cfunc(uc, UC_HOOK_MEM_READ_AFTER, read_cb),
                uc.hook_add(UC_HOOK_MEM_WRITE, self._on_write, index)]

    def path_for(self, space: str) -> str:
        if self._first_space is None:
            self._first_space = space
        return self.path if space in (self._first_space, "L1") else f"{self.path}.{space}"

    def _file(self, space: str) -> _SpaceFile:
        f = self._files.get(space)
        if f is None:
            path = self.path_for(space)
            try:
                f = self._files[space] = _SpaceFile(open(path, "w"))
            except OSError as e:
                raise OptionError(f"cannot write Tenet trace {path}: {e.strerror}")
        return f

    def _flush_line(self, index: int) -> None:
        line, target = self._line.get(index), self._target.get(index)
        if line is not None and target is not None:
            target.out.write(",".join(line) + "\n")
        self._line[index] = None

    def _on_insn(self, uc: "Uc", address: int, size: int, index: int) -> None:
        self._flush_line(index)
        if is_l0(address):
            return
        target = self._target[index] = self._file(self._spaces[index] or self.space(index))
        values = list(uc.reg_read_batch(_UC_REGS))
        values[_RIP] = address
        last = target.last
        if last is None:
            parts = [f"{n}={v:#x}" for n, v in zip(REGISTERS, values)]
        else:
            parts = [f"{n}={v:#x}" for n, v, old in zip(REGISTERS, values, last)
                     if v != old and n != "rip"]
            parts.append(f"rip={address:#x}")
        target.last = values
        self._line[index] = parts

    def _on_read(self, index: int, address: int, size: int, value: int) -> None:
        line = self._line.get(index)
        if line is not None:
            line.append(f"mr={address:#x}:{_hex(value, size)}")

    def _on_write(self, uc: "Uc", access: int, address: int, size: int, value: int,
                  index: int) -> None:
        line = self._line.get(index)
        if line is not None:
            line.append(f"mw={address:#x}:{_hex(value, size)}")

    def close(self) -> None:
        for index in list(self._line):
            self._flush_line(index)
        for f in self._files.values():
            f.out.close()
        if not self._files:      # nothing ran: still leave the (empty) file the user named
            try:
                open(self.path, "w").close()
            except OSError as e:
                raise OptionError(f"cannot write Tenet trace {self.path}: {e.strerror}")


def _hex(value: int, size: int) -> str:
    size = max(1, min(size, 8))
    return (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little").hex()
