"""A gdb remote stub with QEMU's habits: `-s` listens on :1234, `-S` waits for gdb first.

The guest runs in the main thread, as it does without a debugger. While gdb is attached:

- breakpoints (Z0 software, Z1 hardware: the same thing here) are UC_HOOK_CODE hooks on the one
  address each, so code elsewhere runs with no hook at all; the hook stops *before* the
  instruction, which is where gdb expects a breakpoint stop;
- a single step is a code hook on every address for exactly one instruction (an instruction that
  raises an exception, VMRUNs or exits stops at the first instruction of where it went);
- watchpoints (Z2 write, Z3 read, Z4 access) are memory hooks on the watched range only. A stop
  requested from a memory hook is not honoured until the end of Unicorn's translation block
  (measured on 2.1.4: the following instructions run), so while any watchpoint exists one code
  hook on every address turns the recorded hit into a stop right after the accessing
  instruction, as x86 data breakpoints trap. The cost exists only while watchpoints do;
- Ctrl-C: while the guest runs, a watcher thread waits on gdb's socket and pauses the machine
  (`Machine.pause`, which Unicorn's emu_stop makes safe from another thread) when Ctrl-C comes.
  The guest is never cut into wall-clock time slices: a slice that ends early would be charged
  as virtual time differently from run to run (the APIC timer's instruction-bounded slices), so
  a guest under gdb would not behave as it does without. The same thread notices a gdb
  connecting while the guest runs freely (`-s` without `-S`).
- world switches: `monitor break-on vmrun|vmexit` stops right after the switch, in the new
  world, through `machine.world_observers`; stop replies carry `world:L1|L2` and gdb prints a
  line whenever the world differs from the previous stop.

Several CPUs (`-smp N`): each CPU is a thread (gdb's id = CPU index + 1), named after its world
(`CPU 1 L2`, `halted`, `waiting for SIPI`). Breakpoints, watchpoints and `break-on` act on every
CPU; a stop reports the CPU that stopped (`thread:N;`) and selects it; `Hg` picks the CPU whose
registers, memory view and `monitor` commands gdb sees; a step steps the CPU gdb names (vCont's
`s:N`, else Hc, else the selected one) while the others take their turns as usual.

Memory (m/M) goes through the current paging, nested paging included, without setting A/D bits
or checking protection (`GuestMemory.debug_translate`). Registers: see gdb_regs.py.
"""
from __future__ import annotations

import os
import select
import socket
import sys
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, TextIO

from unicorn import UC_HOOK_CODE, UC_HOOK_MEM_READ, UC_HOOK_MEM_WRITE, UcError
from unicorn.x86_const import UC_X86_REG_RIP

from emu.tools.gdb import args, physdump, regs as gdb_regs
from emu.errors import OptionError, SvmemuError, Unsupported
from emu.tools.gdb.monitor import Monitor
from emu.tools.gdb.packets import INTERRUPT, Connection
from emu.engine.hw_switch import HF_GUEST, flush_tlb
from emu.core.interrupts import Fault
from emu.arch.paging import NestedFault
from emu.tools.gdb.reverse import REPLAY, SCAN, Recorder

if TYPE_CHECKING:
    from emu.core.machine import Machine, RunResult

SIGINT, SIGILL, SIGTRAP, SIGSEGV = 2, 4, 5, 11
DEFAULT_PORT = 1234
PACKET_SIZE = 0x4000
_PAGE = 0x1000
_MAX_ACCESS = 8              # widest data access: a watch hook starts this far below its range
_UC_MEM_READ, _UC_MEM_WRITE = 16, 17
_WATCH_KIND = {2: "watch", 3: "rwatch", 4: "awatch"}


@dataclass
class Stop:
    """Why the guest stopped, as gdb will be told."""
    signal: int
    detail: str = ""          # stop-reply pairs, e.g. "swbreak:;" or "watch:1000;"
    note: str = ""            # a line for gdb's console
    cpu: int | None = None    # the CPU that stopped (None: the one selected)


def parse_address(spec: str) -> tuple[str, int]:
    """QEMU's `-gdb` device syntax: tcp::PORT or tcp:HOST:PORT (an empty host is localhost
    here, not every interface as in QEMU: the port can rewrite guest memory)."""
    parts = spec.split(":")
    if len(parts) != 3 or parts[0] != "tcp":
        raise OptionError(f"--gdb {spec!r}: expected tcp::PORT or tcp:HOST:PORT")
    host = parts[1] or "127.0.0.1"
    try:
        port = int(parts[2])
    except ValueError:
        raise OptionError(f"--gdb {spec!r}: the port {parts[2]!r} is not a number")
    if not 0 <= port <= 0xFFFF:
        raise OptionError(f"--gdb {spec!r}: port {port} is out of range")
    return host, port


class GdbStub:
    def __init__(self, machine: "Machine", host: str = "127.0.0.1", port: int = DEFAULT_PORT, *,
                 wait: bool = False, log: TextIO | None = None) -> None:
        self.m = machine              # the boot CPU: it runs the machine
        self.wait = wait
        self.log = log if log is not None else sys.stderr
        try:
            self.listener = socket.create_server((host, port), reuse_port=False)
        except OSError as e:
            raise OptionError(f"gdb stub cannot listen on {host}:{port}: {e.strerror or e}")
        self.host, self.port = host, self.listener.getsockname()[1]
        self._g = 0                   # Hg: the CPU gdb looks at
        self._mon = 0                 # the CPU `monitor` commands act on
        self._c = 0                   # Hc: the CPU a step steps (0: the selected one)
        self._files: dict[int, gdb_regs.RegisterFile] = {}
        self.break_on: set[str] = set()          # "vmrun", "vmexit"
        self.monitor = Monitor(machine, self.break_on, self.regs, self.log)
        self.conn: Connection | None = None
        self.phys_mode = False       # m/M address physical memory (Qqemu.PhyMemMode:1)
        # Hooks are per CPU engine: {engine's CPU machine: handle}.
        self._code_bps: dict[int, tuple[dict["Machine", int], set[int]]] = {}
        self._watches: dict[tuple[int, int, int], dict["Machine", int]] = {}
        self._watch_step: dict["Machine", int] = {}
        self._observed: set["Machine"] = set()
        self._watch_hit: tuple[int, int] | None = None
        self._skip: tuple["Machine", int] | None = None
        self._step_first = False
        self._stop: Stop | None = None
        self._running = False
        self._last_stop = Stop(SIGTRAP)
        self._last_world = self._world_of(machine)
        self._xml = gdb_regs.target_xml().encode()
        self.rec = Recorder(machine, stop=self._rec_stop, bp_at=self._code_bps.__contains__,
                            watch_hit=self._pop_watch, interrupted=self._interrupted)
        self.monitor.add("record", self._monitor_record,
                         "on|off|status: record for reverse-stepi/reverse-continue")
        self.monitor.add("cpu", self._monitor_cpu,
                         "[N]: the CPU monitor commands act on (default: the one that "
                         "stopped last)")
        self._sync_cpus()

    # ---- CPUs (threads) ---------------------------------------------------------------------
    @property
    def cpu(self) -> "Machine":
        """The CPU gdb looks at (Hg)."""
        cpus = self.m.cpu_list
        return cpus[self._g] if self._g < len(cpus) else self.m

    @property
    def regs(self) -> gdb_regs.RegisterFile:
        return self._regs_of(self.cpu)

    def _regs_of(self, cpu: "Machine") -> gdb_regs.RegisterFile:
        f = self._files.get(cpu.cpu_index)
        if f is None or f.m is not cpu:          # an INIT re-made that CPU
            f = self._files[cpu.cpu_index] = gdb_regs.RegisterFile(cpu)
        return f

    def _select(self, index: int) -> None:
        self._g = index

    def _monitor_on(self, index: int) -> None:
        """The CPU `monitor` commands act on: the one that stopped last, or `monitor cpu N`
        (gdb's `thread N` may send nothing: it caches registers of threads it has read)."""
        cpus = self.m.cpu_list
        self._mon = index if index < len(cpus) else 0
        self.monitor.m = cpus[self._mon]
        self.monitor.regs = self._regs_of(cpus[self._mon])

    def _monitor_cpu(self, words: list[str]) -> str:
        if len(words) > 1 or words and not words[0].isdigit():
            raise SvmemuError("usage: monitor cpu [N]")
        if words:
            if int(words[0]) >= len(self.m.cpu_list):
                raise SvmemuError(f"there is no CPU {words[0]} (CPUs 0 to "
                                  f"{len(self.m.cpu_list) - 1})")
            self._monitor_on(int(words[0]))
        return f"monitor commands act on {self._thread_name(self.m.cpu_list[self._mon])}"

    def _cpu_of(self, uc) -> "Machine":
        return next((c for c in self.m.cpu_list if c.uc is uc), self.m)

    def _world_of(self, cpu: "Machine") -> str:
        return cpu.level()

    def _sync_cpus(self) -> None:
        """Give every CPU the hooks and observers gdb asked for: CPUs an INIT re-made since are
        new engines without them."""
        for cpu in self.m.cpu_list:
            if cpu in self._observed:
                continue
            self._observed.add(cpu)
            cpu.world_observers.append(lambda old, new, c=cpu: self._on_world(old, new, c))
            for addr, (handles, _) in self._code_bps.items():
                handles[cpu] = cpu.uc.hook_add(UC_HOOK_CODE, self._on_breakpoint, None, addr, addr)
                cpu.uc.ctl_flush_tb()
            for key, handles in self._watches.items():
                handles[cpu] = self._add_watch_hook(cpu, *key)
        self._select(self._g if self._g < len(self.m.cpu_list) else 0)
        self._monitor_on(self._mon)

    def _thread_name(self, cpu: "Machine") -> str:
        state = ("waiting for SIPI" if not cpu.started else "halted" if cpu.irq.halted
                 else "")
        return f"CPU {cpu.cpu_index} {cpu.level()}" + (f" ({state})" if state else "")

    def _thread(self, text: str, what: str) -> int | None:
        """A gdb thread id: None for all (-1 or 0), else a CPU index; E-reply if no such CPU."""
        tid = -1 if text == "-1" else args.hex_int(text, what)
        if tid in (-1, 0):
            return None
        if not 1 <= tid <= len(self.m.cpu_list):
            raise SvmemuError(f"no thread {tid}")
        return tid - 1

    # ---- the outer loop ---------------------------------------------------------------------
    def serve(self) -> "RunResult":
        """Run the guest to its end under (or without) gdb; gdb may come and go meanwhile."""
        print(f"svmemu: gdb stub listening on {self.host}:{self.port}"
              + (" (waiting for gdb before the first instruction)" if self.wait else ""),
              file=self.log, flush=True)
        try:
            if self.wait:
                first = self._enter_guest()
                if first is not None:
                    return first
                self._accept(None)
            while True:
                if self.conn is None:
                    with _Watcher(self.m, self.listener, lambda: True):
                        result = self.m.run()
                    if result.reason != "pause":
                        return result
                    self._accept(0.0)
                    continue
                final = self._session()
                if final is not None:
                    return final
        finally:
            self._detach()
            self.listener.close()

    def _enter_guest(self) -> "RunResult | None":
        """Run L0's boot trampoline (it VMRUNs into the guest) so that gdb's first look is at the
        guest's first instruction, not at L0's code. Returns the result if the run ended."""
        if self.m.ctx.save().hflags & HF_GUEST:
            return None                           # already in the guest (a resumed snapshot)
        uc = self.m.uc
        hook = uc.hook_add(UC_HOOK_CODE, self._on_boot_insn)
        uc.ctl_flush_tb()
        try:
            result = self.m.run()
        finally:
            uc.hook_del(hook)
            uc.ctl_flush_tb()
        return None if result.reason == "pause" else result

    def _on_boot_insn(self, uc, address: int, size: int, _data: object) -> None:
        if self.m.ctx.save().hflags & HF_GUEST:
            self.m.pause("entered the guest")

    def _accept(self, timeout: float | None) -> None:
        if timeout is not None:
            ready, _, _ = select.select([self.listener], [], [], timeout)
            if not ready:
                return
        sock, _ = self.listener.accept()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.conn = Connection(sock)
        self._last_stop = Stop(SIGTRAP)       # QEMU stops the guest when gdb attaches
        self._last_world = self.cpu.level()

    def _detach(self) -> None:
        """gdb left (D, or the connection closed): the guest runs on freely, as under QEMU."""
        for addr in list(self._code_bps):
            for kind in list(self._code_bps.get(addr, (0, set()))[1]):
                self._remove_code_bp(kind, addr)
        for key in list(self._watches):
            self._remove_watch(*key)
        self.break_on.clear()
        self.rec.stop()
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    # ---- one gdb session --------------------------------------------------------------------
    def _session(self) -> "RunResult | None":
        conn = self.conn
        assert conn is not None
        while True:
            pkt = conn.get()
            if pkt is None:
                self._detach()
                return None
            if pkt == INTERRUPT:
                continue                         # already stopped
            outcome = self.answer(pkt)
            if outcome is _DETACH:
                conn.send("OK")
                self._detach()
                return None
            if outcome is _KILL:
                self._detach()
                return _killed(self.m)
            if isinstance(outcome, _Resumed):
                if outcome.final is not None:
                    self._report_end(outcome.final)
                    return outcome.final
                continue
            if outcome is not _ALREADY_SENT:
                conn.send(outcome)

    def answer(self, pkt: str) -> "str | _Resumed | object":
        """What one packet gets: its reply, or what the session must do next. A packet that
        cannot be carried out is answered with an E-packet (with the reason, for queries), so a
        malformed or hostile packet never ends the session."""
        try:
            return self._dispatch(pkt)
        except (SvmemuError, Fault, NestedFault, UcError) as e:
            return f"E.{e}" if pkt.startswith(("q", "Q")) else "E01"
        except (ValueError, IndexError, KeyError, OverflowError, UnicodeError) as e:
            # Every argument is parsed by emu.tools.gdb.args; reaching here is a stub bug, which
            # is reported on stderr while the session goes on.
            print(f"svmemu: gdb stub: internal error on packet {pkt[:40]!r}: "
                  f"{type(e).__name__}: {e}", file=sys.stderr)
            return "E01"

    def _dispatch(self, pkt: str) -> "str | _Resumed | object":
        head = pkt[:1]
        if head == "?":
            return self._stop_reply(self._last_stop)
        if head == "g":
            return gdb_regs.all_bytes(self.regs).hex()
        if head == "G":
            return self._write_all(args.hex_bytes(pkt[1:], "G"))
        if head == "p":
            return self.regs.read_bytes(args.hex_int(pkt[1:], "p register", 16)).hex()
        if head == "P":
            num, value = args.split(pkt[1:], "=", 2, "P")
            self.regs.write_bytes(args.hex_int(num, "P register", 16),
                                  args.hex_bytes(value, "P value"))
            return "OK"
        if head == "m":
            addr, length = args.address_range(pkt[1:], "m")
            return self._read_memory(addr, min(length, PACKET_SIZE // 2)).hex()
        if head == "M":
            where, data = args.split(pkt[1:], ":", 2, "M")
            addr, length = args.address_range(where, "M")
            raw = args.hex_bytes(data, "M data")
            if len(raw) != length:
                return "E01"
            self._write_memory(addr, raw)
            return "OK"
        if head in ("c", "C", "s", "S"):
            step = head in ("s", "S")
            addr = None
            if head in ("C", "S"):               # Csig[;addr]: the signal is not delivered
                sig, _, where = pkt[1:].partition(";")
                args.hex_int(sig, f"{head} signal", 8)
                addr = args.hex_int(where, f"{head} address") if where else None
            elif pkt[1:]:
                addr = args.hex_int(pkt[1:], f"{head} address")
            return self._resume(step, addr)
        if head in ("Z", "z"):
            return self._breakpoint(head == "Z", pkt[1:])
        if head == "D":
            return _DETACH
        if head == "k":
            return _KILL
        if head == "H":
            if pkt[1:2] not in ("g", "c"):
                return "E01"
            index = self._thread(pkt[2:], "H thread")
            if pkt[1] == "g":
                self._select(index if index is not None else self._g)
            else:
                self._c = 0 if index is None else index + 1
            return "OK"
        if head == "T":
            self._thread(pkt[1:], "T thread")
            return "OK"
        if pkt in ("bs", "bc"):
            return self._reverse(pkt == "bs")
        if pkt.startswith("vCont"):
            return self._vcont(pkt)
        if pkt == "vKill" or pkt.startswith("vKill;"):
            return _KILL
        if head == "q" or head == "Q":
            return self._query(pkt)
        return ""                                # unsupported: gdb's convention is an empty reply

    def _query(self, pkt: str) -> str:
        if pkt.startswith("qSupported"):
            return (f"PacketSize={PACKET_SIZE:x};qXfer:features:read+;qXfer:threads:read+;"
                    "swbreak+;hwbreak+;"
                    "QStartNoAckMode+;vContSupported+;ReverseStep+;ReverseContinue+")
        if pkt == "QStartNoAckMode":
            assert self.conn is not None
            self.conn.send("OK")
            self.conn.ack = False
            return _ALREADY_SENT
        if pkt.startswith("qXfer:features:read:"):
            annex, span = args.split(pkt[len("qXfer:features:read:"):], ":", 2, "qXfer")
            if annex != "target.xml":
                return "E00"
            off, length = args.address_range(span, "qXfer")
            chunk = self._xml[off:off + length]
            return ("l" if off + length >= len(self._xml) else "m") + chunk.decode()
        if pkt == "qAttached":
            return "1"
        if pkt == "qC":
            return f"QC{self._g + 1:02x}"
        if pkt == "qfThreadInfo":
            return "m" + ",".join(f"{c.cpu_index + 1:02x}" for c in self.m.cpu_list)
        if pkt == "qsThreadInfo":
            return "l"
        if pkt.startswith("qThreadExtraInfo,"):
            index = self._thread(pkt[len("qThreadExtraInfo,"):], "qThreadExtraInfo")
            return self._thread_name(self.m.cpu_list[index or 0]).encode().hex()
        if pkt.startswith("qXfer:threads:read::"):
            off, length = args.address_range(pkt[len("qXfer:threads:read::"):], "qXfer")
            xml = ("<?xml version=\"1.0\"?>\n<threads>\n" + "".join(
                f'<thread id="{c.cpu_index + 1:x}" core="{c.cpu_index}" '
                f'name="{self._thread_name(c)}"/>\n' for c in self.m.cpu_list)
                + "</threads>\n").encode()
            chunk = xml[off:off + length]
            return ("l" if off + length >= len(xml) else "m") + chunk.decode()
        if pkt.startswith("qSymbol"):
            return "OK"
        if pkt == "qqemu.Supported":
            return "PhyMemMode"
        if pkt == "qqemu.PhyMemMode":
            return "1" if self.phys_mode else "0"
        if pkt.startswith("Qqemu.PhyMemMode:"):
            mode = pkt[len("Qqemu.PhyMemMode:"):]
            if mode not in ("0", "1"):
                return "E22"
            self.phys_mode = mode == "1"
            return "OK"
        if pkt.startswith("qRcmd,"):
            text = args.hex_bytes(pkt[len("qRcmd,"):], "qRcmd").decode("utf-8", "replace")
            out = self.monitor.execute(text)
            if not out:
                return "OK"
            return (out if out.endswith("\n") else out + "\n").encode().hex()
        return ""

    # ---- registers and memory ---------------------------------------------------------------
    def _write_all(self, data: bytes) -> str:
        pos = 0
        for num, size in enumerate(gdb_regs.sizes()):
            if pos + size > len(data):
                break
            chunk = data[pos:pos + size]
            pos += size
            if chunk != self.regs.read_bytes(num):
                self.regs.write_bytes(num, chunk)
        return "OK"

    def _read_memory(self, addr: int, length: int) -> bytes:
        """As much as is mapped from `addr` on; an error only if not even the first byte is."""
        mem = self.cpu.mem
        if self.phys_mode:
            return physdump.read(mem, addr, length)
        mem.ctx.save()
        out = b""
        while len(out) < length:
            va = (addr + len(out)) & 0xFFFF_FFFF_FFFF_FFFF
            n = min(length - len(out), _PAGE - (va & (_PAGE - 1)))
            try:
                out += mem.read_phys(mem.debug_translate(va), n)
            except (Fault, NestedFault, Unsupported):
                if not out:
                    raise SvmemuError(f"cannot read {va:#x}")
                break
        return out

    def _write_memory(self, addr: int, data: bytes) -> None:
        mem = self.cpu.mem
        if self.phys_mode:
            physdump.write(mem, addr, data)
            self._flush_code()
            return
        mem.ctx.save()
        pieces = []
        pos = 0
        while pos < len(data):
            va = (addr + pos) & 0xFFFF_FFFF_FFFF_FFFF
            n = min(len(data) - pos, _PAGE - (va & (_PAGE - 1)))
            pieces.append((mem.debug_translate(va), data[pos:pos + n]))
            pos += n
        for pa, chunk in pieces:
            mem.write_phys(pa, chunk)
        self._flush_code()                # the bytes may be code that was already translated

    def _flush_code(self) -> None:
        for cpu in self.m.cpu_list:
            cpu.uc.ctl_flush_tb()

    # ---- breakpoints and watchpoints --------------------------------------------------------
    def _breakpoint(self, insert: bool, spec: str) -> str:
        kind_s, addr_s, size_s = args.split(spec.split(";")[0], ",", 3, "Z/z")
        kind = args.hex_int(kind_s, "Z/z type", 8)
        addr = args.hex_int(addr_s, "Z/z address")
        size = args.hex_int(size_s, "Z/z length", 32)
        if "," in size_s:
            raise args.PacketError("Z/z: too many fields")
        if kind in (0, 1):
            if insert:
                self._insert_code_bp(kind, addr)
            else:
                self._remove_code_bp(kind, addr)
            return "OK"
        if kind in _WATCH_KIND:
            if size <= 0:
                return "E01"
            if insert:
                self._insert_watch(kind, addr, size)
            else:
                self._remove_watch(kind, addr, size)
            return "OK"
        return ""

    def _insert_code_bp(self, kind: int, addr: int) -> None:
        if addr in self._code_bps:
            self._code_bps[addr][1].add(kind)
            return
        handles = {}
        for cpu in self.m.cpu_list:
            handles[cpu] = cpu.uc.hook_add(UC_HOOK_CODE, self._on_breakpoint, None, addr, addr)
            cpu.uc.ctl_flush_tb()         # code hooks are compiled into translated blocks
        self._code_bps[addr] = (handles, {kind})

    def _remove_code_bp(self, kind: int, addr: int) -> None:
        entry = self._code_bps.get(addr)
        if entry is None:
            return
        entry[1].discard(kind)
        if not entry[1]:
            for cpu, h in entry[0].items():
                cpu.uc.hook_del(h)
                cpu.uc.ctl_flush_tb()
            del self._code_bps[addr]

    def _add_watch_hook(self, cpu: "Machine", kind: int, addr: int, size: int) -> int:
        types = {2: UC_HOOK_MEM_WRITE, 3: UC_HOOK_MEM_READ,
                 4: UC_HOOK_MEM_READ | UC_HOOK_MEM_WRITE}[kind]
        # Unicorn matches a memory hook on the access's first byte only.
        begin = max(0, addr - (_MAX_ACCESS - 1))
        h = cpu.uc.hook_add(types, self._on_watch, (kind, addr, size), begin, addr + size - 1)
        if cpu not in self._watch_step:
            self._watch_step[cpu] = cpu.uc.hook_add(UC_HOOK_CODE, self._after_watch)
        cpu.uc.ctl_flush_tb()
        flush_tlb(cpu.uc)                 # memory hooks work through the slow TLB path
        return h

    def _insert_watch(self, kind: int, addr: int, size: int) -> None:
        key = (kind, addr, size)
        if key in self._watches:
            return
        self._watches[key] = {cpu: self._add_watch_hook(cpu, *key) for cpu in self.m.cpu_list}

    def _remove_watch(self, kind: int, addr: int, size: int) -> None:
        handles = self._watches.pop((kind, addr, size), None)
        if handles is None:
            return
        for cpu, h in handles.items():
            cpu.uc.hook_del(h)
            if not self._watches and cpu in self._watch_step:
                cpu.uc.hook_del(self._watch_step.pop(cpu))
            cpu.uc.ctl_flush_tb()
            flush_tlb(cpu.uc)

    # ---- hooks (run inside emu_start) --------------------------------------------------------
    def _request(self, stop: Stop) -> None:
        if self._stop is None:
            self._stop = stop
            self.m.pause(stop.note or "debugger stop")

    def _on_breakpoint(self, uc, address: int, size: int, _data: object) -> None:
        if self.rec.active:
            return                             # the recorder's hook sees every instruction
        cpu = self._cpu_of(uc)
        if self._skip == (cpu, address):       # the breakpoint we are resuming from
            self._skip = None
            return
        if not self._running:
            return
        kinds = self._code_bps.get(address, ({}, {0}))[1]
        self._request(Stop(SIGTRAP, "swbreak:;" if 0 in kinds else "hwbreak:;",
                           cpu=cpu.cpu_index))

    def _on_step(self, uc, address: int, size: int, _data: object) -> None:
        if self._step_first:
            self._step_first = False
            return
        self._request(Stop(SIGTRAP, cpu=self._cpu_of(uc).cpu_index))

    def _on_watch(self, uc, access: int, address: int, size: int, value: int,
                  key: tuple[int, int, int]) -> None:
        kind, addr, length = key
        if address + size <= addr or address >= addr + length or self._watch_hit is not None:
            return
        if kind == 2 and access != _UC_MEM_WRITE or kind == 3 and access != _UC_MEM_READ:
            return
        self._watch_hit = (kind, addr)

    def _after_watch(self, uc, address: int, size: int, _data: object) -> None:
        hit = self._watch_hit
        if hit is not None and self._running and not self.rec.active:
            self._watch_hit = None
            self._request(Stop(SIGTRAP, f"{_WATCH_KIND[hit[0]]}:{hit[1]:x};",
                               cpu=self._cpu_of(uc).cpu_index))

    def _on_world(self, old: str, new: str, cpu: "Machine | None" = None) -> None:
        cpu = cpu if cpu is not None else self.m
        entering = _depth(new) > _depth(old)
        what = "vmrun" if entering else "vmexit"
        if what not in self.break_on:
            return
        if self.rec.active and self.rec.mode == SCAN:
            # reverse-continue replays history (outside any forward run) to find the last
            # switch a forward run would have stopped at
            self.rec.world_switch(f"{old} -> {new}", what)
            return
        if not self._running or self.rec.active and self.rec.mode == REPLAY:
            return
        if entering:
            note = f"stopped after VMRUN: {old} -> {new}"
        else:
            why = next((e.last_exit() for e in cpu.extensions if e.last_exit()), None)
            note = f"stopped after {why or '#VMEXIT'}: {old} -> {new}"
        if self.m.cpus > 1:
            note = f"CPU {cpu.cpu_index} {note}"
        self._request(Stop(SIGTRAP, "", note, cpu=cpu.cpu_index))

    # ---- resuming ---------------------------------------------------------------------------
    def _vcont(self, pkt: str) -> "str | _Resumed":
        if pkt == "vCont?":
            return "vCont;c;C;s;S"
        parts = [a.split(":") for a in pkt.split(";")[1:]]
        steps = [p for p in parts if p[0][:1] in ("s", "S")]
        if steps:
            who = self._thread(steps[0][1], "vCont thread") if len(steps[0]) > 1 else None
            others = any(p[0][:1] in ("c", "C") for p in parts)
            return self._resume(True, None, who, alone=not others)
        if any(p[0][:1] in ("c", "C") for p in parts):
            return self._resume(False, None)
        return "E01"

    def _resume(self, step: bool, addr: int | None, who: int | None = None,
                alone: bool = True) -> "_Resumed | str":
        """Run until a stop or the guest's end; the stop reply is sent here. A step steps CPU
        `who` (else Hc's, else the selected one), `alone` (gdb's vCont;s:N) while the other
        CPUs stay stopped, as gdb expects when it steps a thread over a breakpoint."""
        self._sync_cpus()
        cpu = self.m.cpu_list[who] if who is not None else (
            self.m.cpu_list[self._c - 1] if self._c else self.cpu)
        if step and not cpu.started:
            return "E01"                         # waiting for SIPI: it has no instruction to run
        self.m.only_cpu = cpu.cpu_index if step and alone and self.m.cpus > 1 else None
        uc = cpu.uc
        if addr is not None:
            uc.reg_write(UC_X86_REG_RIP, addr)
        for other in self.m.cpu_list[1:]:        # registers gdb wrote are where they go on
            if other.started:
                other._begin = other.uc.reg_read(UC_X86_REG_RIP)
        self.m.resume_at(self.m.uc.reg_read(UC_X86_REG_RIP))
        rip = uc.reg_read(UC_X86_REG_RIP)
        self._skip = (cpu, rip) if rip in self._code_bps else None
        self._stop = None
        self._watch_hit = None
        step_hook = None
        if self.rec.active:
            self.rec.skip = self._skip
            self.rec.stop_at = self.rec.icount + 1 if step else None
        elif step:
            self._step_first = True
            step_hook = uc.hook_add(UC_HOOK_CODE, self._on_step)
            uc.ctl_flush_tb()
        self._running = True
        try:
            outcome = self._run(step)
        finally:
            self.m.only_cpu = None
            self._running = False
            self._skip = None
            self.rec.stop_at = None
            if step_hook is not None:
                uc.hook_del(step_hook)
                uc.ctl_flush_tb()
        if not isinstance(outcome, Stop):
            return _Resumed(outcome)
        self._send_stop(outcome)
        return _Resumed(None)

    def _run(self, step: bool) -> "Stop | RunResult":
        assert self.conn is not None
        conn = self.conn
        while True:
            if step or self.rec.active:
                # A step is one instruction. A recording polls Ctrl-C from its counting hook, so
                # that no stop can fall between counting an instruction and executing it.
                result = self.m.run()
            else:
                with _Watcher(self.m, conn.sock, conn.interrupted):
                    result = self.m.run()
            if result.reason != "pause":
                return result
            if self._stop is not None:
                return self._stop
            if self.rec.checkpoint_due:
                self.rec.take_checkpoint()
                continue
            return Stop(SIGINT)                  # the watcher's pause: Ctrl-C (or gdb left)

    # ---- recording and reverse execution (emu/tools/gdb/reverse.py) ---------------------------------------
    def _rec_stop(self, kind: str, address: int) -> None:
        if kind == "interrupt":
            self._request(Stop(SIGINT))
        elif kind == "bp":
            kinds = self._code_bps.get(address, (0, {0}))[1]
            self._request(Stop(SIGTRAP, "swbreak:;" if 0 in kinds else "hwbreak:;"))
        elif kind == "step":
            self._request(Stop(SIGTRAP))
        else:
            self._request(Stop(SIGTRAP, kind))        # a watchpoint's stop-reply pair

    def _pop_watch(self) -> str | None:
        hit, self._watch_hit = self._watch_hit, None
        return None if hit is None else f"{_WATCH_KIND[hit[0]]}:{hit[1]:x};"

    def _interrupted(self) -> bool:
        return self.conn is not None and self.conn.interrupted()

    def _monitor_record(self, args: list[str]) -> str:
        if args == ["on"]:
            if self.m.cpus > 1:
                raise SvmemuError(f"unsupported: reverse execution with {self.m.cpus} CPUs "
                                  "(it records one)")
            self.rec.start()
        elif args == ["off"]:
            self.rec.stop()
        elif args not in ([], ["status"]):
            raise SvmemuError("usage: monitor record on|off|status")
        return self.rec.status()

    def _reverse(self, step: bool) -> "str | _Resumed":
        assert self.conn is not None
        rec = self.rec
        if not rec.active:
            self.conn.send("O" + "svmemu: reverse execution needs 'monitor record on' first\n"
                           .encode().hex())
            return "E01"
        self._watch_hit = None
        self._stop = None
        try:
            stop = self._step_back() if step else self._continue_back()
        except SvmemuError as e:
            self.conn.send("O" + f"svmemu: {e}\n".encode().hex())
            return "E01"
        finally:
            self._stop = None
            self._watch_hit = None
        self._send_stop(stop)
        return _Resumed(None)

    def _step_back(self) -> Stop:
        rec = self.rec
        if rec.icount == 0:
            return Stop(SIGTRAP, "replaylog:begin;")
        rec.goto(rec.icount - 1)
        return Stop(SIGTRAP)

    def _continue_back(self) -> Stop:
        rec = self.rec
        cur = rec.icount
        cps = [cp for cp in rec.checkpoints if cp.icount < cur]
        for i in range(len(cps) - 1, -1, -1):
            end = cps[i + 1].icount if i + 1 < len(cps) else cur
            hits = [h for h in rec.scan(cps[i], end) if h[0] < cur]
            if hits:
                where, kind = hits[-1]
                rec.goto(where)
                if kind == "bp":
                    kinds = self._code_bps.get(self.m.uc.reg_read(UC_X86_REG_RIP), (0, {0}))[1]
                    return Stop(SIGTRAP, "swbreak:;" if 0 in kinds else "hwbreak:;")
                if kind.startswith("world:"):
                    _, what, switch = kind.split(":", 2)
                    name = "VMRUN" if what == "vmrun" else "#VMEXIT"
                    return Stop(SIGTRAP, "", f"reverse: stopped after {name}: {switch}")
                return Stop(SIGTRAP, kind)
        rec.goto(0)
        return Stop(SIGTRAP, "replaylog:begin;")

    def _send_stop(self, stop: Stop) -> None:
        conn = self.conn
        assert conn is not None
        if stop.cpu is None and self.m.cpus > 1:
            stop.cpu = self.m.paused_cpu         # Ctrl-C: the CPU that was running
        if stop.cpu is not None and stop.cpu != self._g:
            self._select(stop.cpu)               # gdb switches to the thread that stopped
            self._last_world = self.cpu.level()
        if stop.cpu is not None:
            self._monitor_on(stop.cpu)
        world = self.cpu.level()
        notes = [stop.note] if stop.note else []
        if world != self._last_world:
            notes.append(f"now in {world}")
            self._last_world = world
        for note in notes:
            conn.send("O" + f"svmemu: {note}\n".encode().hex())
        self._last_stop = stop
        conn.send(self._stop_reply(stop))

    def _stop_reply(self, stop: Stop) -> str:
        cpu = self.m.cpu_list[stop.cpu] if stop.cpu is not None else self.cpu
        return (f"T{stop.signal:02x}thread:{cpu.cpu_index + 1:02x};{stop.detail}"
                f"world:{cpu.level()};")

    def _report_end(self, result: "RunResult") -> None:
        conn = self.conn
        assert conn is not None
        conn.send("O" + f"svmemu: {result.message}\n".encode().hex())
        if result.reason in ("exit", "halt"):
            conn.send(f"W{result.status & 0xFF:02x}")
        else:
            conn.send(f"X{SIGSEGV if result.reason == 'shutdown' else SIGILL:02x}")


class _Watcher:
    """Waits in a thread until `sock` is readable and `fire()` agrees, then pauses the machine;
    leaving the `with` block wakes it through a pipe and joins it. Only this thread touches the
    socket while the guest runs."""

    def __init__(self, machine: "Machine", sock: socket.socket, fire: Callable[[], bool]) -> None:
        self.m, self.sock, self.fire = machine, sock, fire
        self._r, self._w = os.pipe()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> "_Watcher":
        self._thread.start()
        return self

    def _watch(self) -> None:
        fired = self.fire()                  # Ctrl-C may have come with the resume packet
        while not fired:
            ready, _, _ = select.select([self.sock, self._r], [], [])
            if self._r in ready:
                return
            fired = self.fire()
        self.m.pause("interrupted")
        # An emu_stop that lands between two emu_start calls of the run loop is forgotten by
        # Unicorn; repeat it until the run has returned.
        while not select.select([self._r], [], [], 0.01)[0]:
            self.m.pause("interrupted")      # several CPUs: whichever runs now

    def __exit__(self, *exc: object) -> None:
        os.write(self._w, b"x")
        self._thread.join()
        os.close(self._r)
        os.close(self._w)


@dataclass
class _Resumed:
    final: "RunResult | None"       # the guest ended (else the stop reply has been sent)


_DETACH = object()
_KILL = object()
_ALREADY_SENT: str = "\0already sent"   # QStartNoAckMode answers before acks stop


def _depth(level: str) -> int:
    return int(level[1:]) if level[1:].isdigit() else 0


def _killed(machine: "Machine") -> "RunResult":
    from emu.core.machine import RunResult, STATUS_HALTED
    return RunResult("killed", STATUS_HALTED, "killed by gdb",
                     machine.uc.reg_read(UC_X86_REG_RIP))
