"""`monitor ...` commands of the gdb stub: the machine's view that gdb itself has no words for.

Each command reads state and returns text; none changes what the guest will do, except
`break-on`, which only decides where the debugger stops. World-specific knowledge comes from the
extension interface (`world_summary`, `control_block`, `last_exit`, `world_paging`).
"""
from __future__ import annotations

import sys

from typing import TYPE_CHECKING, Callable, TextIO

from emu.arch import paging, vmcb_text
from emu.errors import SvmemuError
from emu.engine.hostvm import MAXPHYADDR
from emu.tools.gdb import physdump
from emu.tools.memquery import NotMapped, effective_memtype, world_paging

if TYPE_CHECKING:
    from emu.tools.gdb.regs import RegisterFile
    from emu.core.machine import Machine

_LEVEL_NAMES = {4: "PML4E", 3: "PDPE", 2: "PDE", 1: "PTE"}
BREAK_EVENTS = ("vmrun", "vmexit")


class Monitor:
    def __init__(self, machine: "Machine", break_on: set[str], regs: "RegisterFile",
                 log: "TextIO | None" = None) -> None:
        """`break_on` is the stub's own set of world-switch events to stop at (`break-on` edits
        it); `regs` its register file, so the decoded views read what gdb reads; `log` where
        `monitor trace` writes without a file (svmemu's stderr)."""
        self.m = machine
        self.log = log if log is not None else sys.stderr
        self._trace_file: "TextIO | None" = None        # `monitor trace ... FILE`
        self.stop_events = break_on
        self.regs = regs
        self.commands: dict[str, tuple[Callable[[list[str]], str], str]] = {
            "help": (self.help, "this list"),
            "world": (self.world, "which world runs (L1/L2) and what defines it"),
            "vmcb": (self.vmcb, "[FIELD|PREFIX ...]: the current (or last) nested guest's "
                     "control block, flags and intercepts by name"),
            "xp": (self.xp, "[/Nfu] ADDR: physical memory, as QEMU's xp (f: x, d, u, c; "
                   "u: b, h, w, g)"),
            "sysregs": (self.sysregs, "control registers, EFER, PAT, RFLAGS, descriptor tables, "
                        "flags by name"),
            "npt-walk": (self.npt_walk, "GPA: the nested page walk of a guest-physical address"),
            "memtype": (self.memtype, "VA [L1|L2]: the memory type an access to VA gets, and why"),
            "trace": (self.trace, "CATS [L1|L2|asidN] [FILE] | off: trace from here on "
                      "(categories as --trace; to svmemu's stderr or FILE)"),
            "break-on": (self.break_on, "vmrun|vmexit|off ...: also stop right after world switches"),
        }

    def add(self, name: str, handler: Callable[[list[str]], str], doc: str) -> None:
        """Commands that live in other modules (reverse execution) register here."""
        self.commands[name] = (handler, doc)

    def execute(self, line: str) -> str:
        words = line.split()
        if not words:
            return self.help([])
        if "/" in words[0]:                     # xp/4xg ADDR: the format rides on the name
            name, _, fmt = words[0].partition("/")
            words[0:1] = [name, "/" + fmt]
        entry = self.commands.get(words[0])
        if entry is None:
            return f"unknown monitor command {words[0]!r}; try 'monitor help'"
        try:
            return entry[0](words[1:])
        except (SvmemuError, ValueError) as e:
            return f"error: {e}"

    # ---- commands ---------------------------------------------------------------------------
    def help(self, args: list[str]) -> str:
        width = max(len(n) for n in self.commands)
        return "\n".join(f"{n.ljust(width)}  {doc}" for n, (_, doc) in self.commands.items())

    def world(self, args: list[str]) -> str:
        for ext in self.m.extensions:
            return ext.world_summary()
        return f"{self.m.level()} running (no extension: there is no nested guest)"

    def vmcb(self, args: list[str]) -> str:
        fields: list[tuple[str, int]] = []
        for ext in self.m.extensions:
            fields = ext.control_block()
            if fields:
                break
        if not fields:
            return "no nested guest has been entered yet"
        if args:
            fields = _select(fields, args)
        width = max(len(n) for n, _ in fields)
        lines = []
        for n, v in fields:
            words = vmcb_text.describe(n, v)
            lines.append(f"{n.ljust(width)} = {v:#x}" + (f"  ({words})" if words else ""))
        return "\n".join(lines)

    def sysregs(self, args: list[str]) -> str:
        """gdb lists CR0-CR4, EFER and PAT with the general registers (its x86 register groups
        ignore the target description's `system` group); this is the decoded view."""
        from unicorn.x86_const import UC_X86_REG_GDTR, UC_X86_REG_IDTR
        from emu.tools.gdb.regs import INDEX
        regs = self.regs
        lines = [f"world  {self.m.level()}"]
        for name in ("cr0", "cr2", "cr3", "cr4", "efer", "pat", "eflags"):
            value = regs.read(INDEX[name])
            words = vmcb_text.describe("rflags" if name == "eflags" else name, value) \
                if name not in ("cr2", "cr3", "pat") else ""
            lines.append(f"{name:6} {value:#018x}" + (f"  ({words})" if words else ""))
        for name, reg in (("gdtr", UC_X86_REG_GDTR), ("idtr", UC_X86_REG_IDTR)):
            _, base, limit, _ = self.m.uc.reg_read(reg)
            lines.append(f"{name:6} base {base:#x} limit {limit:#x}")
        return "\n".join(lines)

    def xp(self, args: list[str]) -> str:
        fmt, rest = ("", args) if not args or not args[0].startswith("/") else (args[0], args[1:])
        if len(rest) != 1:
            raise SvmemuError("usage: monitor xp[/Nfu] ADDR (e.g. xp/4xg 0x800000)")
        return physdump.dump(self.m.mem, _number(rest[0]), fmt)

    def npt_walk(self, args: list[str]) -> str:
        if len(args) != 1:
            raise SvmemuError("usage: monitor npt-walk GPA")
        gpa = _number(args[0])
        try:
            view = world_paging(self.m, "L2")
        except SvmemuError:
            return "no nested guest has been entered yet, so there is no nested page table"
        if view.ncr3 is None:
            return "the nested guest runs without nested paging (NP_ENABLE=0)"
        mem = self.m.mem
        lines = [f"nested walk of gpa {gpa:#x} from nCR3 {view.ncr3:#x}"]
        try:
            t = paging.walk_nested(mem.read_u64, view.ncr3, gpa, paging.READ, host=view.host_regs,
                                   read_u32=mem.read_u32, maxphyaddr=MAXPHYADDR)
        except paging.NestedFault as nf:
            lines += _steps(nf.walk)
            lines.append(f"-> #VMEXIT(NPF) exitinfo1 {nf.exitinfo1:#x}: {nf}")
            return "\n".join(lines)
        lines += _steps(t.walk)
        rights = ("U" if t.user else "S") + ("W" if t.writable else "R") + ("-NX" if t.nx else "")
        lines.append(f"-> spa {t.pa:#x} ({t.page_size >> 10} KiB page, {rights}, "
                     f"PAT index {t.pat_index})")
        return "\n".join(lines)

    def memtype(self, args: list[str]) -> str:
        if not 1 <= len(args) <= 2:
            raise SvmemuError("usage: monitor memtype VA [L1|L2]")
        world = args[1] if len(args) == 2 else "current"
        try:
            return effective_memtype(self.m, _number(args[0]), world).describe()
        except NotMapped as e:
            return str(e)

    def trace(self, args: list[str]) -> str:
        """Switch tracing on (or off) while stopped: the next continue or step traces."""
        from emu.core.trace import Focus, Tracer, parse_categories, parse_worlds
        m = self.m
        if not args:
            t = m.tracer
            return ("tracing: " + ",".join(sorted(t.categories))) if t else "not tracing"
        if m.tracer is not None:
            m.tracer.close()
            m.tracer = None
        if self._trace_file is not None:
            self._trace_file.close()
            self._trace_file = None
        if args == ["off"]:
            return "tracing off"
        cats = parse_categories(args[0])
        worlds: frozenset[str] = frozenset()
        path = None
        for word in args[1:]:
            if word.lower().startswith(("l1", "l2", "asid")) and "/" not in word:
                worlds = parse_worlds(word)
            else:
                path = word
        if "mem" in cats:
            from emu.tools import memtrace
            if not m.memory_hooks:
                memtrace.attach(m)
        try:
            self._trace_file = open(path, "w", buffering=1) if path else None
        except OSError as e:
            raise SvmemuError(f"cannot open {path}: {e.strerror}")
        out = self._trace_file or self.log
        tracer = Tracer(cats, out, Focus(worlds=worlds))
        m.tracer = tracer
        tracer.bind(m)
        where = f" to {path}" if path else " to svmemu's standard error"
        return f"tracing {','.join(sorted(cats))}" + (f" in {', '.join(sorted(worlds))}"
                                                       if worlds else "") + where

    def break_on(self, args: list[str]) -> str:
        if not args:
            return "stopping on: " + (", ".join(sorted(self.stop_events)) or "no world switch")
        for word in args:
            if word == "off":
                self.stop_events.clear()
            elif word in BREAK_EVENTS:
                self.stop_events.add(word)
            else:
                raise SvmemuError(f"break-on takes {', '.join(BREAK_EVENTS)} or off, not {word!r}")
        return "stopping on: " + (", ".join(sorted(self.stop_events)) or "no world switch")


def _select(fields: list[tuple[str, int]], wanted: list[str]) -> list[tuple[str, int]]:
    """Fields named exactly, or whose names begin with the word (`cs` gives cs_selector ...)."""
    out: list[tuple[str, int]] = []
    for word in wanted:
        word = word.lower()
        match = ([f for f in fields if f[0] == word]
                 or [f for f in fields if f[0].startswith(word + "_")]
                 or [f for f in fields if f[0].startswith(word)])
        if not match:
            raise SvmemuError(f"no VMCB field {word!r} (fields: "
                              f"{', '.join(n for n, _ in fields)})")
        out += [f for f in match if f not in out]
    return out


def _number(text: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise SvmemuError(f"{text!r} is not a number (write hex as 0x...)")


def _steps(walk: tuple[paging.WalkStep, ...]) -> list[str]:
    return [f"  {_LEVEL_NAMES.get(s.level, f'level {s.level}'):5} at spa {s.addr:#x} = "
            f"{s.value:#018x}" for s in walk]
