"""Human-readable traces, selected by category (`--trace insn,regs,exits,io,msr,exc,mem`) and
focused on what matters (`--trace-world`, `--trace-range`, `--trace-from`, `--trace-until`).

Only `insn`, `regs` and `mem` cost anything on the hot path (per-instruction and per-access
hooks; `mem` is emu/tools/memtrace.py, which the caller attaches); the other categories are
written from handlers that run anyway. The hooks exist only while the focus is open: a world
filter adds and removes them at world switches, a window at its from/until events, and a RIP
range bounds each code hook to that range, where Unicorn generates no hook call for code
outside it. So a trace of a few L2 instructions in a long L1 run costs the L2 instructions
(plus a restart of emulation at each switch), not the run.

L0's own instructions (the trampoline that enters L1 at boot) are not the guest's and are never
shown.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, TextIO

from unicorn import UC_HOOK_CODE
from unicorn import x86_const as X

from emu.arch.decode import MAX_INSN_LENGTH, decoder
from emu.engine import hostvm
from emu.errors import OptionError

if TYPE_CHECKING:
    from unicorn import Uc

    from emu.core.events import EventSpec, EventWatch
    from emu.core.board import Board

CATEGORIES = ("insn", "regs", "exits", "io", "msr", "exc", "mem")
_PER_INSN = ("insn", "regs")
_L0_CODE = (hostvm.L0_BASE, hostvm.L0_BASE + hostvm.L0_SIZE)


def parse_categories(spec: str) -> frozenset[str]:
    cats = {c.strip() for c in spec.split(",") if c.strip()}
    if "all" in cats:
        return frozenset(CATEGORIES)
    bad = sorted(cats - set(CATEGORIES))
    if bad:
        raise OptionError(f"unknown trace categories: {', '.join(bad)} "
                          f"(choose from {', '.join(CATEGORIES)}, all)")
    return frozenset(cats)


@dataclass(frozen=True)
class Focus:
    """What a trace is limited to; the defaults trace everything."""
    worlds: frozenset[str] = frozenset()      # "L1", "L2", "L2.asidN"; empty: every world
    ranges: tuple[tuple[int, int], ...] = ()  # [start, end) RIP ranges; empty: everywhere
    start: "EventSpec | None" = None          # tracing begins at this event
    stop: "EventSpec | None" = None           # and ends at this one
    names: tuple[str, ...] = field(default=(), compare=False)   # the ranges as written


def parse_worlds(spec: str) -> frozenset[str]:
    out = set()
    for word in (w.strip() for w in spec.split(",")):
        if not word:
            continue
        low = word.lower()
        if low in ("l1", "l2"):
            out.add(low.upper())
        elif low.startswith(("asid", "l2.asid")):
            try:
                out.add(f"L2.asid{int(low.rpartition('asid')[2], 0)}")
            except ValueError:
                raise OptionError(f"--trace-world: {word!r} is not an ASID number")
        else:
            raise OptionError(f"--trace-world: {word!r} is not L1, L2 or asidN")
    return frozenset(out)


def parse_ranges(specs: list[str], symbols: "dict[str, int] | object") -> tuple[
        tuple[tuple[int, int], ...], tuple[str, ...]]:
    """START..END, START+LENGTH, SYMBOL (to the next symbol above it) or SYMBOL..SYMBOL."""
    ranges, names = [], []
    for spec in (s.strip() for group in specs for s in group.split(",")):
        if not spec:
            continue
        if ".." in spec:
            lo_text, hi_text = spec.split("..", 1)
            lo, hi = _addr(lo_text, symbols), _addr(hi_text, symbols)
        elif "+" in spec:
            lo_text, len_text = spec.split("+", 1)
            lo, hi = _addr(lo_text, symbols), _addr(lo_text, symbols) + _addr(len_text, {})
        else:
            lo = _addr(spec, symbols)
            above = sorted(v for v in _values(symbols) if v > lo)
            if not above:
                raise OptionError(f"--trace-range: {spec!r} has no symbol after it to end the "
                                  "range; write START..END")
            hi = above[0]
        if hi <= lo:
            raise OptionError(f"--trace-range: {spec!r} is empty")
        ranges.append((lo, hi))
        names.append(spec)
    return tuple(ranges), tuple(names)


def _values(symbols: object) -> list[int]:
    if hasattr(symbols, "_load"):
        symbols._load()           # the CLI's lazily loaded table
    return list(symbols.values()) if isinstance(symbols, dict) else []


def _addr(text: str, symbols: object) -> int:
    text = text.strip()
    try:
        return int(text, 0)
    except ValueError:
        pass
    if isinstance(symbols, dict) and text in symbols:
        return symbols[text]
    raise OptionError(f"--trace-range: {text!r} is neither an address nor a symbol of the image")


class Tracer:
    def __init__(self, categories: frozenset[str], out: TextIO, focus: Focus | None = None) -> None:
        self.categories = categories
        self.out = out
        self.focus = focus or Focus()
        self.m: "Board | None" = None
        self.window = self.focus.start is None     # between from and until
        self.world_ok = True
        self.hook_calls = 0          # per-instruction hook calls (what a focused trace costs)
        self._hooks: list[int] = []
        self._running = False
        self._watches: list["EventWatch"] = []
        self._count_hook: int | None = None
        self._insns = 0
        self._refire: int | None = None

    # ---- the focus --------------------------------------------------------------------------
    def bind(self, machine: "Board") -> None:
        """Called by the machine it traces: world switches and events reach the focus."""
        from emu.core.events import EventWatch
        self.m = machine
        f = self.focus
        if f.worlds:
            machine.world_observers.append(self._on_world)
            self.world_ok = self._world_matches()
        for spec, opens in ((f.start, True), (f.stop, False)):
            if spec is None or spec.kind == "insns":
                continue
            self._watches.append(EventWatch(machine, spec, self._edge(opens), restarts=True))

    def _edge(self, opens: bool) -> Callable[[], None]:
        def fire() -> None:
            self.window = opens and (self.focus.stop is None or self._stop_not_passed())
            self._changed()
        return fire

    def _stop_not_passed(self) -> bool:
        stop = self.focus.stop
        if stop is None:
            return True
        if stop.kind == "insns":
            return self._insns < stop.count
        return all(w.seen < w.spec.count for w in self._watches if w.spec is stop)

    def _world_matches(self) -> bool:
        assert self.m is not None
        worlds = self.focus.worlds
        return self.m.level() in worlds or self.m.address_space() in worlds

    def _on_world(self, old: str, new: str) -> None:
        ok = self._world_matches()
        if ok != self.world_ok:
            self.world_ok = ok
            self._changed()

    def live(self) -> bool:
        return self.window and self.world_ok

    def _changed(self) -> None:
        """The focus opened or closed: hooks follow between two emulation slices (adding or
        removing a code hook needs the translated code flushed, never done from inside it)."""
        if self.m is not None and self._running and bool(self._hooks) != self.live():
            self.m.between_slices(self._sync)

    # ---- hooks ------------------------------------------------------------------------------
    def run_started(self) -> None:
        assert self.m is not None
        self._running = True
        f = self.focus
        if any(s is not None and s.kind == "insns" for s in (f.start, f.stop)):
            self._count_hook = self.m.uc.hook_add(UC_HOOK_CODE, self._count)
        self._sync()

    def run_ended(self) -> None:
        self._running = False
        if self._count_hook is not None:
            assert self.m is not None
            self.m.uc.hook_del(self._count_hook)
            self._count_hook = None
        self._remove()

    def _sync(self) -> None:
        want = self._running and self.live()
        if want and not self._hooks:
            self._install()
        elif not want and self._hooks:
            self._remove()

    def _install(self) -> None:
        m = self.m
        assert m is not None
        uc = m.uc
        if any(c in self.categories for c in _PER_INSN):
            if not self.focus.ranges:
                self._hooks.append(uc.hook_add(UC_HOOK_CODE, self._on_insn))
            for lo, hi in self.focus.ranges:
                self._hooks.append(uc.hook_add(UC_HOOK_CODE, self._on_insn, None, lo, hi - 1))
        for install in m.memory_hooks:
            self._hooks += install(uc)
        uc.ctl_flush_tb()

    def _remove(self) -> None:
        if not self._hooks:
            return
        assert self.m is not None
        for h in self._hooks:
            self.m.uc.hook_del(h)
        self._hooks = []
        self.m.uc.ctl_flush_tb()

    def _count(self, uc: "Uc", address: int, size: int, _data: object) -> None:
        """The instruction window: counts every instruction while a count bounds it."""
        if self._refire == address:        # the instruction we stopped before: counted already
            self._refire = None
            return
        self._refire = None
        self._insns += 1
        f = self.focus
        n = self._insns - 1                # instructions run before this one
        if f.start is not None and f.start.kind == "insns" and n == f.start.count:
            self.window = self._stop_not_passed()
        if f.stop is not None and f.stop.kind == "insns" and n == f.stop.count:
            self.window = False
        if self.m is not None and bool(self._hooks) != self.live():
            self._refire = address
            self.m.between_slices(self._sync)

    def _on_insn(self, uc: "Uc", address: int, size: int, _data: object) -> None:
        self.hook_calls += 1
        if _L0_CODE[0] <= address < _L0_CODE[1]:
            return                          # L0's trampoline: not the guest's code
        m = self.m
        assert m is not None
        ctx = m.ctx.save()
        prefix = f"[{m.level()} {ctx.mode_bits()} cpl{ctx.cpl}]"
        if "regs" in self.categories:
            self.regs(prefix, uc, ctx)
        if "insn" in self.categories:
            from emu.core.interrupts import Fault
            try:
                # Unicorn reports an undecodable instruction with a size of 0xF1F1F1F1.
                code = m.mem.read_code(address, min(size, MAX_INSN_LENGTH))
            except Fault:
                code = b""
            self.insn(prefix, ctx.mode_bits(), address, code)

    # ---- output -----------------------------------------------------------------------------
    def on(self, category: str) -> bool:
        return category in self.categories

    def line(self, category: str, prefix: str, text: str, rip: int | None = None) -> None:
        if not self.live():
            return
        if self.focus.ranges and self.m is not None:
            if rip is None:
                rip = self.m.uc.reg_read(X.UC_X86_REG_RIP)
            if not any(lo <= rip < hi for lo, hi in self.focus.ranges):
                return
        self.out.write(f"{category:5} {prefix} {text}\n")

    def insn(self, prefix: str, bits: int, address: int, code: bytes) -> None:
        for ins in decoder(bits).disasm(code, address, 1):
            self.out.write(f"insn  {prefix} {address:#018x}: {ins.mnemonic} {ins.op_str}\n")
            return
        self.out.write(f"insn  {prefix} {address:#018x}: (undecodable) {code.hex()}\n")

    def regs(self, prefix: str, uc: "Uc", ctx: object) -> None:
        """The CPU state before the instruction, as QEMU's `-d cpu` shows it."""
        r = {name: uc.reg_read(getattr(X, f"UC_X86_REG_{name}")) for name in _REG_NAMES}
        efer = ctx.efer          # type: ignore[attr-defined]
        rows = [" ".join(f"{n}={r[n]:016x}" for n in row) for row in _REG_ROWS]
        rows.append(f"RIP={r['RIP']:016x} RFL={r['EFLAGS']:08x} CPL={ctx.cpl} "  # type: ignore
                    f"CS={r['CS']:04x} SS={r['SS']:04x} DS={r['DS']:04x} ES={r['ES']:04x} "
                    f"FS={r['FS']:04x} GS={r['GS']:04x}")
        rows.append(f"CR0={r['CR0']:08x} CR2={r['CR2']:016x} CR3={r['CR3']:016x} "
                    f"CR4={r['CR4']:08x} EFER={efer:016x}")
        for row in rows:
            self.out.write(f"regs  {prefix} {row}\n")

    def close(self) -> None:
        for w in self._watches:
            w.detach()
        self._watches = []
        self.out.flush()


_REG_ROWS = (("RAX", "RBX", "RCX", "RDX"), ("RSI", "RDI", "RBP", "RSP"),
             ("R8", "R9", "R10", "R11"), ("R12", "R13", "R14", "R15"))
_REG_NAMES = tuple(n for row in _REG_ROWS for n in row) + (
    "RIP", "EFLAGS", "CS", "SS", "DS", "ES", "FS", "GS", "CR0", "CR2", "CR3", "CR4")
