"""`svmemu`: run and build guests.

Every user error ends in one line on stderr and a non-zero status; a Python traceback means a bug
in svmemu, and even then the user gets a one-line summary plus where to report it.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING, Sequence

from emu.errors import OptionError, SvmemuError
from emu.core.machine import MAX_TIMEOUT, STATUS_BAD_INPUT, Machine, RunResult
from emu.cli.output import guest_stdout

if TYPE_CHECKING:
    from typing import Mapping
    from emu.core.events import EventSpec
    from emu.core.trace import Tracer

STATUS_INTERNAL = 70


def _size(text: str) -> int:
    """RAM size: plain MiB, or with a K/M/G suffix, as QEMU's -m accepts."""
    t = text.strip().upper()
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(t[-1:], None)
    try:
        return int(t[:-1]) * mult if mult else int(t) << 20
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad memory size {text!r} (examples: 128, 256M, 1G)")


def _positive_int(text: str) -> int:
    try:
        v = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number")
    if v <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be positive")
    return v


def _smp(text: str) -> int:
    """QEMU's -smp: `N` or `cpus=N` (one package per CPU; sockets/cores/threads are not taken)."""
    t = text.strip()
    if t.startswith("cpus="):
        t = t[5:]
    if "," in t or "=" in t:
        raise argparse.ArgumentTypeError(f"-smp {text!r}: only N or cpus=N is supported "
                                         "(no sockets, cores, threads or maxcpus)")
    return _positive_int(t)


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number")
    if not v > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be positive")
    if not v <= MAX_TIMEOUT:
        raise argparse.ArgumentTypeError(f"{text!r} is more than {MAX_TIMEOUT:.0f} seconds")
    return v


def _terminal_columns() -> int:
    """shutil.get_terminal_size().columns, without importing shutil (which brings bz2 and lzma):
    $COLUMNS, else the width of the terminal on stdout, else 80."""
    try:
        columns = int(os.environ.get("COLUMNS", "0"))
    except ValueError:
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns or 80


class _Formatter(argparse.HelpFormatter):
    """argparse's own, told the width: the stock one asks shutil for it, and argparse makes one
    to check every option it is given, so every start would import shutil for a help text it
    almost never prints."""

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                 width: int | None = None) -> None:
        super().__init__(prog, indent_increment, max_help_position,
                         _terminal_columns() - 2 if width is None else width)


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def error(self, message: str) -> None:  # one line, status 2, no usage dump
        self.exit(STATUS_BAD_INPUT, f"svmemu: error: {message}\n")


class _VersionAction(argparse.Action):
    """Asks the binding which library it loaded, so the line is true even when the chosen
    engine could not be loaded."""

    def __init__(self, option_strings: Sequence[str], dest: str, help: str | None = None) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=help)

    def __call__(self, parser: argparse.ArgumentParser, *_args: object) -> None:
        from importlib.metadata import PackageNotFoundError, version
        from emu.engine.unicorn_build import loader
        try:
            ours = version("svmemu")
        except PackageNotFoundError:
            ours = "(not installed)"
        print(f"svmemu {ours}\nengine: {loader.current().describe()}")
        parser.exit(0)


COMMANDS = ("run", "resume", "memtype", "fuzz", "build")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """svmemu's parser. With `command`, only that subcommand gets its options (the others are
    a name and a help line): a start parses one command line, and building every
    subcommand's options was a noticeable part of a short run."""
    def full(name: str) -> bool:
        return command is None or command == name

    p = _Parser(prog="svmemu", description="x86-64 emulator with exact AMD SVM, on Unicorn")
    p.add_argument("--version", action=_VersionAction, help="print svmemu's version and the "
                   "Unicorn engine in use (svmemu's patched build or the stock wheel), and exit")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run = sub.add_parser("run", help="boot a kernel (Linux bzImage, multiboot) or an assembly "
                         "source (.S)")
    if full("run"):
        _add_run_options(run)
    resume = sub.add_parser("resume", help="continue a machine from a snapshot file")
    if full("resume"):
        _add_resume_options(resume)
    mt = sub.add_parser("memtype", help="the memory type of a virtual address in a snapshot, "
                        "step by step")
    if full("memtype"):
        _add_memtype_options(mt)
    from emu.cli.fuzz_options import add_parser as add_fuzz_parser
    add_fuzz_parser(sub, _size, _positive_int, _positive_float, options=full("fuzz"))
    build = sub.add_parser("build", help="assemble a .S guest into the multiboot image QEMU boots")
    if full("build"):
        _add_build_options(build)
    return p


def _command_of(argv: Sequence[str]) -> str | None:
    """The subcommand a command line names (its first word that is not an option), if any."""
    word = next((a for a in argv if not a.startswith("-")), None)
    return word if word in COMMANDS else None


def _add_run_options(run: argparse.ArgumentParser) -> None:
    run.add_argument("image", help="Linux bzImage, multiboot kernel (a.out kludge or ELF) or a "
                     ".S guest source")
    run.add_argument("--append", default="", help="kernel command line, as QEMU's -append "
                     "(a value may begin with '-')")
    run.add_argument("--initrd", default="", metavar='"FILE ARGS,FILE2 ARGS"',
                     help="as QEMU's -initrd: a Linux kernel's initramfs file, or multiboot "
                          "modules (',,' is a literal comma)")
    run.add_argument("-m", "--memory", type=_size, default=128 << 20, help="guest RAM (default 128M)")
    run.add_argument("--cpu", "-cpu", default="EPYC", metavar="MODEL[,+feat,-feat...]",
                     help="CPU model, as QEMU's -cpu: EPYC (default), max, qemu64; +name adds "
                          "a feature svmemu implements, -name hides one")
    run.add_argument("-smp", "--smp", type=_smp, default=1, metavar="N",
                     help="number of CPUs, as QEMU's -smp N (the boot CPU starts the others "
                          "with INIT/SIPI)")
    run.add_argument("--quantum", type=_positive_int, default=None, metavar="INSNS",
                     help="with -smp: instructions each CPU runs in its turn (default "
                          "20000); the interleaving is the same on every run")
    _add_execution_options(run)


def _add_resume_options(resume: argparse.ArgumentParser) -> None:
    resume.add_argument("snapshot_file", metavar="FILE", help="a snapshot written by --snapshot")
    resume.add_argument("-smp", "--smp", type=_smp, default=None, metavar="N",
                        help="number of CPUs (default: the snapshot's; another count is refused)")
    resume.add_argument("--quantum", type=_positive_int, default=None, metavar="INSNS",
                        help="with several CPUs: instructions per turn from here on (default: "
                             "the snapshot's, which continues the run it was taken from)")
    _add_execution_options(resume)


def _add_memtype_options(mt: argparse.ArgumentParser) -> None:
    mt.add_argument("snapshot_file", metavar="SNAPSHOT", help="a snapshot written by --snapshot")
    mt.add_argument("va", metavar="VA", type=_address, help="virtual address (0x... or decimal)")
    mt.add_argument("--world", choices=("L1", "L2", "current"), default="current",
                    help="whose address it is (default: the world running in the snapshot)")
    _add_pat_option(mt)


def _add_build_options(build: argparse.ArgumentParser) -> None:
    build.add_argument("source")
    build.add_argument("-o", "--output", required=True,
                       help="the image: a flat multiboot file, or an ELF with symbols and a "
                            "DWARF line table for gdb when the name ends in .elf")
    build.add_argument("--elf", action="store_true", help="write an ELF whatever the name")
    build.add_argument("--symbols", metavar="FILE",
                       help="also write the ELF (symbols, line table) to FILE, for gdb")


def cmd_run(args: argparse.Namespace) -> int:
    from emu.cli.image import load_image_bytes
    from emu.loader.formats import KernelRequest, load_kernel
    from svm_ext.extension import SvmExtension

    from emu.core.cpu_models import parse_cpu

    cpu = parse_cpu(args.cpu)
    data, name = load_image_bytes(args.image, args.memory)
    symbols = _lazy_symbols(args.image)
    tracer = _open_tracer(args, symbols)
    _check_smp_options(args)
    machine = Machine(args.memory, stdout=guest_stdout(), tracer=tracer, cpu=cpu,
                      extensions=[SvmExtension(pat_model=args.pat_model)] if cpu.svm else [],
                      cpus=args.smp, quantum=args.quantum)
    _attach_tools(machine, tracer)
    load_kernel(machine, KernelRequest(data, args.image, args.append, args.initrd or None))
    return _run_and_report(machine, tracer, args, _insn_limit(args, symbols))


def _lazy_symbols(path: str | None):
    """The image's symbols, looked up only if an option names one (assembling costs time)."""
    from emu.cli.image import image_symbols

    class Symbols(dict):
        loaded = False

        def _load(self) -> None:
            if not self.loaded:
                self.loaded = True
                if path is not None:
                    self.update(image_symbols(path))

        def __contains__(self, key: object) -> bool:
            self._load()
            return super().__contains__(key)

        def __getitem__(self, key: str) -> int:
            self._load()
            return super().__getitem__(key)

        def __bool__(self) -> bool:
            self._load()
            return len(self) > 0
    return Symbols()


def _check_smp_options(args: argparse.Namespace) -> None:
    """--quantum belongs to several CPUs: one clear line, status 2."""
    if args.quantum is not None and args.smp == 1:
        raise OptionError("--quantum needs -smp N with N > 1")


def _run_and_report(machine: Machine, tracer: "Tracer | None", args: argparse.Namespace,
                    limit: "tuple[int | None, EventSpec | None]") -> int:
    """Run, then end the way every run ends: flush, snapshot if asked, one summary line."""
    import time
    from emu.cli.summary import summary_line
    machine.strict = args.strict
    machine.explain = not args.quiet
    # Several CPUs: a snapshot at an event may cut a turn short, which a later run can finish
    # exactly only if the instructions it ran were counted (emu/core/smp.py).
    insns, event = limit
    machine.count_insns = args.count_insns or (event is not None and machine.cpus > 1)
    outputs = _open_coverage(args, machine)
    if args.no_replay and machine.replay is not None:
        machine.replay.enabled = False
    watch = _watch_event(machine, event)
    from contextlib import nullcontext
    from emu.cli.progress import RunProgress, wanted
    show = wanted(args.quiet, bool(args.trace and not args.trace_file),
                  bool(args.gdb or args.gdb_default))
    began = time.monotonic()
    with RunProgress(machine) if show else nullcontext():
        result: RunResult = _run(machine, args, insns)
    seconds = time.monotonic() - began
    if watch is not None:
        watch.detach()
    guest_stdout().flush()
    if tracer:
        tracer.close()
    for out in outputs:
        out.close()
    if not args.quiet:
        print(summary_line(machine, result, seconds), file=sys.stderr)
    if args.snapshot:
        return _end_with_snapshot(machine, result, args, event)
    return _process_status(result, args)


def _process_status(result: RunResult, args: argparse.Namespace) -> int:
    """QEMU's `(V << 1) | 1` by default; `--exit-status guest` passes V itself through, so that a
    guest's 0 (pass) is a shell success and `svmemu run t.S --exit-status guest && ...` chains."""
    if args.exit_status == "guest" and result.reason == "exit":
        return (result.status >> 1) & 0xFF
    return result.status & 0xFF


def _add_execution_options(p: argparse.ArgumentParser) -> None:
    """What `run` and `resume` share: tracing, limits, snapshots, the PAT model."""
    p.add_argument("--trace", default="",
                   help="comma list of: insn, regs, exits, io, msr, exc, mem, all")
    p.add_argument("--trace-file", help="write the trace here instead of stderr")
    p.add_argument("--trace-world", metavar="L1|L2|asidN[,...]",
                   help="trace only while this world (or nested guest ASID) runs")
    p.add_argument("--trace-range", action="append", default=[],
                   metavar="START..END|START+LEN|SYMBOL",
                   help="trace only code in these RIP ranges (a symbol: up to the next symbol; "
                        "repeatable)")
    p.add_argument("--trace-from", metavar="N|vmrun[:N]|vmexit[:N]|SYMBOL[:N]",
                   help="start tracing after N instructions, at the Nth VMRUN/#VMEXIT or when "
                        "RIP reaches a symbol")
    p.add_argument("--trace-until", metavar="N|vmrun[:N]|vmexit[:N]|SYMBOL[:N]",
                   help="stop tracing there (same forms as --trace-from)")
    p.add_argument("--max-insns", type=_positive_int,
                   help="stop after N instructions (deliveries in a row count too: README)")
    p.add_argument("--timeout", type=_positive_float, help="stop after N seconds")
    p.add_argument("-q", "--quiet", action="store_true", help="no summary line at the end")
    p.add_argument("--count-insns", action="store_true",
                   help="count instructions for the summary line (a hook per instruction: slower)")
    p.add_argument("--exit-status", choices=("qemu", "guest"), default="qemu",
                   help="qemu (default): a guest's isa-debug-exit value V ends the process with "
                        "(V << 1) | 1; guest: with V itself (0 = pass)")
    p.add_argument("--strict", action="store_true",
                   help="stop at an access to a physical address with nothing behind it "
                        "(a PC reads all-ones and drops the write)")
    p.add_argument("--no-replay", action="store_true",
                   help="handle every world switch in Python (no C replay; for comparison)")
    p.add_argument("--coverage", metavar="drcov:FILE",
                   help="write block coverage (drcov v2, one module per address space)")
    p.add_argument("--tenet", metavar="FILE", help="write a Tenet trace (per-instruction hook)")
    _add_snapshot_options(p)
    _add_pat_option(p)
    _add_gdb_options(p)


def _add_pat_option(p: argparse.ArgumentParser) -> None:
    from svm_ext.pat import MODELS
    p.add_argument("--pat-model", choices=MODELS, default="architectural",
                   help="how L1 and L2 PATs relate under nested paging (default: architectural)")


# ---- the gdb stub -------------------------------------------------------------------------------

def _add_gdb_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("-s", dest="gdb_default", action="store_true",
                   help="gdb stub on tcp::1234 (shorthand for --gdb tcp::1234), as QEMU's -s")
    p.add_argument("-S", dest="gdb_wait", action="store_true",
                   help="wait for gdb before the first instruction, as QEMU's -S")
    p.add_argument("--gdb", metavar="tcp:[HOST]:PORT",
                   help="gdb stub listening there (empty host: localhost; port 0: any free port)")


def _run(machine: Machine, args: argparse.Namespace, limit: int | None) -> RunResult:
    """Run the guest, under the gdb stub when one was asked for."""
    spec = args.gdb or ("tcp::1234" if args.gdb_default else None)
    if spec is None:
        if args.gdb_wait:
            raise OptionError("-S waits for gdb: give -s or --gdb too")
        return machine.run(max_insns=limit, timeout=args.timeout)
    if limit is not None or args.timeout is not None:
        raise OptionError("the gdb stub cannot be combined with --max-insns, --timeout or "
                          "--snapshot-at")
    from emu.tools.gdb.stub import GdbStub, parse_address
    host, port = parse_address(spec)
    return GdbStub(machine, host, port, wait=args.gdb_wait).serve()


# ---- snapshots ----------------------------------------------------------------------------------

def _add_snapshot_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--snapshot-at", metavar="N|vmrun[:N]|vmexit[:N]|SYMBOL[:N]|*ADDR[:N]",
                   help="save a snapshot to --snapshot FILE and exit: after N instructions, "
                        "right after the Nth VMRUN or #VMEXIT, or when RIP reaches a symbol or "
                        "address (the Nth time) before that instruction runs")
    p.add_argument("--snapshot", metavar="FILE", help="where --snapshot-at writes the snapshot")


def _insn_limit(args: argparse.Namespace,
                symbols: "Mapping[str, int]") -> "tuple[int | None, EventSpec | None]":
    """--snapshot-at N is an instruction limit whose end is a snapshot rather than status 8; an
    event (vmrun:3, a symbol) is watched instead, and the run pauses there."""
    if (args.snapshot_at is None) != (args.snapshot is None):
        raise OptionError("--snapshot-at and --snapshot must be given together")
    if args.snapshot_at is None:
        return args.max_insns, None
    from emu.core.events import parse_event
    if args.gdb or args.gdb_default:
        raise OptionError("the gdb stub cannot be combined with --max-insns, --timeout or "
                          "--snapshot-at")
    event = parse_event(args.snapshot_at, symbols, "--snapshot-at")
    if event.kind == "insns":
        if args.max_insns is not None:
            raise OptionError("--snapshot-at N and --max-insns cannot be combined")
        return event.count, event
    return args.max_insns, event


def _watch_event(machine: Machine, event: "EventSpec | None"):
    if event is None or event.kind == "insns":
        return None
    from emu.core.events import EventWatch
    return EventWatch(machine, event, lambda: machine.pause(f"reached {event.describe()}"))


def _end_with_snapshot(machine: Machine, result: RunResult, args: argparse.Namespace,
                       event: "EventSpec") -> int:
    from emu.core import snapshot
    expected = "max-insns" if event.kind == "insns" else "pause"
    if result.reason != expected:
        if not args.quiet:
            print(f"svmemu: {result.message} (rip {result.rip:#x}) before {event.describe()}; "
                  "no snapshot written", file=sys.stderr)
        return result.status & 0xFF
    snapshot.save(machine, args.snapshot)
    where = (f"after {event.count} instructions" if event.kind == "insns"
             else f"at {event.describe()}")
    print(f"svmemu: snapshot {where} written to {args.snapshot} (rip {result.rip:#x}, "
          f"{machine.level()})", file=sys.stderr)
    return 0


def _open_coverage(args: argparse.Namespace, machine: Machine) -> list:
    """The coverage outputs asked for, attached; their hooks exist only when asked."""
    if not (args.coverage or args.tenet):
        return []
    from emu.tools.coverage import open_output, parse_spec    # here: only asked-for coverage
    name = getattr(args, "image", None) or args.snapshot_file
    outputs = []
    if args.coverage:
        outputs.append(open_output(*parse_spec(args.coverage), name))
    if args.tenet:
        outputs.append(open_output("tenet", args.tenet, name))
    for out in outputs:
        out.attach(machine)
    return outputs


def _open_tracer(args: argparse.Namespace, symbols: "Mapping[str, int]") -> "Tracer | None":
    if args.trace:
        from emu.core.trace import Tracer, parse_categories   # here: a plain run has no tracer
        cats = parse_categories(args.trace)
        focus = _trace_focus(args, symbols)
        from emu.cli.output import NamedOutput
        try:
            out = open(args.trace_file, "w") if args.trace_file else sys.stderr
        except OSError as e:
            raise OptionError(f"cannot open trace file {args.trace_file}: {e.strerror}")
        from emu.core.trace import SymbolMap
        named = SymbolMap(dict(symbols.items())) if symbols else None
        return Tracer(cats, NamedOutput(out, f"trace file {args.trace_file}" if args.trace_file
                                        else "standard error (the trace)"), focus, named)
    for option in ("trace_file", "trace_world", "trace_from", "trace_until", "trace_range"):
        if getattr(args, option):
            raise OptionError(f"--{option.replace('_', '-')} needs --trace")
    return None


def _trace_focus(args: argparse.Namespace, symbols: "Mapping[str, int]"):
    from emu.core.events import parse_event
    from emu.core.trace import Focus, parse_ranges, parse_worlds
    ranges, names = parse_ranges(args.trace_range, symbols)
    return Focus(worlds=parse_worlds(args.trace_world) if args.trace_world else frozenset(),
                 ranges=ranges, names=names,
                 start=parse_event(args.trace_from, symbols, "--trace-from")
                 if args.trace_from else None,
                 stop=parse_event(args.trace_until, symbols, "--trace-until")
                 if args.trace_until else None)


def _attach_tools(machine: Machine, tracer: "Tracer | None") -> None:
    """The tools a run's options ask for that hook the machine (`--trace mem`)."""
    if tracer is not None and tracer.on("mem"):
        from emu.tools import memtrace
        memtrace.attach(machine)


def cmd_resume(args: argparse.Namespace) -> int:
    from emu.core import snapshot
    from svm_ext.extension import SvmExtension

    limit = _insn_limit(args, _lazy_symbols(None))
    snap = snapshot.read(args.snapshot_file)
    if args.smp is None:
        args.smp = snap.cpus
    _check_smp_options(args)
    tracer = _open_tracer(args, _lazy_symbols(None))
    machine = Machine(snap.ram_size, stdout=guest_stdout(), tracer=tracer,
                      extensions=[SvmExtension(pat_model=args.pat_model)], cpus=args.smp)
    _attach_tools(machine, tracer)
    snapshot.restore(machine, snap)       # a CPU count other than -smp's is refused here
    if args.quantum is not None:
        machine.quantum = args.quantum
    return _run_and_report(machine, tracer, args, limit)


def cmd_memtype(args: argparse.Namespace) -> int:
    from emu.core import snapshot
    from emu.tools.memquery import effective_memtype
    from svm_ext.extension import SvmExtension

    snap = snapshot.read(args.snapshot_file)
    machine = Machine(snap.ram_size, stdout=None,
                      extensions=[SvmExtension(pat_model=args.pat_model)], cpus=snap.cpus)
    snapshot.restore(machine, snap)       # the boot CPU's view
    print(effective_memtype(machine, args.va, args.world).describe())
    return 0


def _address(text: str) -> int:
    try:
        v = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an address")
    if not 0 <= v < 1 << 64:
        raise argparse.ArgumentTypeError(f"{text!r} is not a 64-bit address")
    return v


def cmd_build(args: argparse.Namespace) -> int:
    from emu.loader.asm import assemble
    asm = assemble(args.source)
    image = asm.image
    from emu.loader.gas.elfout import write_elf
    if args.elf or args.output.endswith(".elf"):
        image = write_elf(asm, args.source)
    if args.symbols:
        try:
            with open(args.symbols, "wb") as f:
                f.write(write_elf(asm, args.source))
        except OSError as e:
            raise OptionError(f"cannot write {args.symbols}: {e.strerror}")
    try:
        with open(args.output, "wb") as f:
            f.write(image)
    except OSError as e:
        raise OptionError(f"cannot write {args.output}: {e.strerror}")
    return 0


def _cmd_fuzz(args: argparse.Namespace) -> int:
    from emu.cli.fuzz import cmd_fuzz
    return cmd_fuzz(args)


_VALUE_OPTIONS = ("--append", "--initrd")


def _join_values(argv: Sequence[str]) -> list[str]:
    """`--append -x` as `--append=-x`: argparse would take a value beginning with '-' for an
    option; these two options always take the next word as their value, as QEMU's do."""
    out, i = [], 0
    while i < len(argv):
        if argv[i] in _VALUE_OPTIONS and i + 1 < len(argv):
            out.append(f"{argv[i]}={argv[i + 1]}")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


def main(argv: Sequence[str] | None = None) -> int:
    words = _join_values(sys.argv[1:] if argv is None else argv)
    args = build_parser(_command_of(words)).parse_args(words)
    try:
        return {"run": cmd_run, "resume": cmd_resume, "build": cmd_build,
                "memtype": cmd_memtype, "fuzz": _cmd_fuzz}[args.command](args)
    except SvmemuError as e:
        print(f"svmemu: error: {e}", file=sys.stderr)
        return STATUS_BAD_INPUT
    except KeyboardInterrupt:
        print("svmemu: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # Whoever read our output left (`svmemu run ... | head`): end quietly, with the status
        # of a command that SIGPIPE ended, and keep Python's exit-time flush from failing too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except Exception as e:  # a bug in svmemu: one line, and the details only on request
        if os.environ.get("SVMEMU_DEBUG"):
            raise
        print(f"svmemu: internal error: {type(e).__name__}: {e} "
              f"(set SVMEMU_DEBUG=1 for the traceback)", file=sys.stderr)
        return STATUS_INTERNAL


def entry() -> None:
    """The `svmemu` command: main(), then the process ends without tearing down what it built.
    Freeing a machine (its engines, its object graph, then every module) was ~14 ms of a
    ~120 ms boot, and the kernel reclaims all of it at exit anyway. Every file a command
    writes is closed by the time main() returns; only the standard streams are left."""
    status = main()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (BrokenPipeError, ValueError):    # a reader that left, or a stream closed
        pass
    os._exit(status)


if __name__ == "__main__":
    entry()
