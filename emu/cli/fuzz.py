"""`svmemu fuzz`: the machine up to its reset point, then one input or AFL++ (options:
emu/cli/fuzz_options.py).

The composition root for fuzzing, like cli.py for running: it is the one place that picks the
nested-SVM extension and its fuzz pieces (svm_ext/fuzz.py)."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from emu.errors import OptionError
from emu.core.machine import Machine
from emu.tools.fuzz.harness import CrashRules, Harness, MemoryPlacement, Placement, parse_crash_rules

STATUS_NO_CRASH = 0
STATUS_CRASH = 10            # --run-input: the input crashed the guest (even: not a guest status)


def _symbols(path: str) -> dict[str, int]:
    from emu.cli.image import image_symbols
    return image_symbols(path)


def _address(text: str, symbols: dict[str, int], what: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        pass
    if text in symbols:
        return symbols[text]
    raise OptionError(f"{what}: {text!r} is neither a number nor a symbol of the image")


def _input_at(spec: str, symbols: dict[str, int]) -> MemoryPlacement:
    where, _, maxlen = spec.partition(":")
    size = 4096
    if maxlen:
        try:
            size = int(maxlen, 0)
        except ValueError:
            raise OptionError(f"--input-at: MAXLEN {maxlen!r} is not a number")
        if not 0 < size <= 1 << 20:
            raise OptionError("--input-at: MAXLEN must be between 1 and 1 MiB")
    return MemoryPlacement(_address(where, symbols, "--input-at"), size)


def build_harness(args: argparse.Namespace) -> Harness:
    from svm_ext.extension import SvmExtension
    from svm_ext import fuzz as svm_fuzz
    from emu.cli.image import load_image_bytes
    from emu.loader.multiboot import parse_image, qemu_cmdline

    data, name = load_image_bytes(args.image, args.memory)
    symbols = _symbols(args.image)
    ext = SvmExtension(pat_model=args.pat_model)
    machine = Machine(args.memory, stdout=None, extensions=[ext])
    image = parse_image(data, name, args.memory)
    machine.load_multiboot(image, qemu_cmdline(args.image, args.append))
    vmrun = svm_fuzz.VmrunStop(machine, ext)

    def extra_rule(kind: str, value: str) -> bool:
        if kind == "vmexit" and value:
            vmrun.crash_codes.add(svm_fuzz.parse_exit_code(value))
            return True
        return False
    rules: CrashRules = parse_crash_rules(args.crash_on, extra_rule)
    placement: Placement
    if args.input_vmcb is not None:
        fields = [f.strip() for f in args.input_vmcb.split(",") if f.strip()]
        if not fields:
            raise OptionError("--input-vmcb needs at least one vmcb12 field name")
        placement = svm_fuzz.VmcbPlacement(fields)
    else:
        placement = _input_at(args.input_at, symbols)
    timeout = args.input_timeout
    if timeout is None and args.run_input:
        timeout = 10.0
    # Code lives in the loaded bytes, not in the zero fill after them (bss: stacks, variables).
    code = [(a, len(d.rstrip(b"\0"))) for a, d in image.segments if d.strip(b"\0")]
    harness = Harness(machine, placement, rules, code, timeout)
    start = _address(args.start_at, symbols, "--start-at") if args.start_at else None
    harness.run_to(start)
    if args.input_vmcb is not None:       # the reset point is the next VMRUN
        vmrun.armed = True
        result = machine.run()
        if result.reason != "breakpoint":
            raise OptionError(f"--input-vmcb: the guest never reached a VMRUN ({result.message})")
    harness.arm([_address(a, symbols, "--end-at") for a in args.end_at])
    return harness


def cmd_fuzz(args: argparse.Namespace) -> int:
    _check_replay_options(args)
    if args.afl_child:
        from emu.tools.fuzz.afl import run_child
        return run_child(build_harness(args), args.afl_child, args.persistent)
    if args.run_input:
        return _run_one(args)
    if args.minimize:
        return _minimize(args)
    return _drive_afl(args)


def _check_replay_options(args: argparse.Namespace) -> None:
    gdb = args.gdb or args.gdb_default or args.gdb_wait
    if (args.trace or args.trace_file or gdb) and not args.run_input:
        raise OptionError("--trace, --trace-file, -s, -S and --gdb replay one input: give "
                          "--run-input FILE")
    if args.trace_file and not args.trace:
        raise OptionError("--trace-file needs --trace")
    if args.gdb_wait and not (args.gdb or args.gdb_default):
        raise OptionError("-S waits for gdb: give -s or --gdb too")
    if args.jobs > 1 and (args.run_input or args.minimize):
        raise OptionError("--jobs runs AFL++; it does not apply to --run-input or --minimize")


def _run_one(args: argparse.Namespace) -> int:
    """One input, judged by the crash rules; under the tracer or gdb when asked, so a crash
    AFL++ found replays where it can be looked at."""
    try:
        data = Path(args.run_input).read_bytes()
    except OSError as e:
        raise OptionError(f"cannot read {args.run_input}: {e.strerror}")
    harness = build_harness(args)
    m = harness.machine
    tracer = None
    if args.trace:
        from emu.cli.output import NamedOutput
        from emu.core.trace import Tracer, parse_categories
        cats = parse_categories(args.trace)
        try:
            out = open(args.trace_file, "w") if args.trace_file else sys.stderr
        except OSError as e:
            raise OptionError(f"cannot open trace file {args.trace_file}: {e.strerror}")
        tracer = Tracer(cats, NamedOutput(out, f"trace file {args.trace_file}"
                                          if args.trace_file else "standard error (the trace)"))
        if tracer.on("mem"):
            from emu.tools import memtrace
            memtrace.attach(m)
        m.tracer = tracer
        tracer.bind(m)
    harness.prepare_input(data)
    spec = args.gdb or ("tcp::1234" if args.gdb_default else None)
    if spec is not None:
        from emu.tools.gdb.stub import GdbStub, parse_address
        host, port = parse_address(spec)
        stub = GdbStub(m, host, port, wait=args.gdb_wait)
        verdict = harness.execute(run=stub.serve)
    else:
        verdict = harness.execute()
    if tracer is not None:
        tracer.close()
    print(f"svmemu: {'crash' if verdict.crashed else 'no crash'}: {verdict.why}",
          file=sys.stderr)
    return STATUS_CRASH if verdict.crashed else STATUS_NO_CRASH


def _minimize(args: argparse.Namespace) -> int:
    """afl-tmin on the crash, with the same target options; the result is checked to crash."""
    import shutil
    from emu.tools.fuzz.afl import afl_environment, load_unicornafl
    tmin = shutil.which("afl-tmin")
    if tmin is None:
        raise OptionError("afl-tmin is not on PATH (Debian: apt-get install afl++)")
    crash = Path(args.minimize)
    if not crash.is_file():
        raise OptionError(f"cannot read {args.minimize}: no such file")
    out = Path(args.output) if args.output else crash.with_name(crash.name + ".min")
    load_unicornafl()
    harness = build_harness(args)        # one line, on anything the child would fail on
    before = harness.run_input(crash.read_bytes())
    if not before.crashed:
        raise OptionError(f"{args.minimize} does not crash with these options ({before.why}); "
                          "afl-tmin keeps only inputs that crash")
    env = afl_environment()
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[2])]
                                        + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    # The child is Python booting a machine: give its fork server and each run room on a busy
    # host (afl-tmin's defaults, 10 s and 1 s, are for native targets).
    env.setdefault("AFL_FORKSRV_INIT_TMOUT", "120000")
    cmd = [tmin, "-U", "-i", str(crash), "-o", str(out), "-t", str(args.afl_timeout or 10000)]
    cmd += ["--", sys.executable, "-m", "emu.cli", *_child_argv(args, persistent=1),
            "--afl-child", "@@"]
    run = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True, errors="replace")
    if run.returncode != 0 or not out.is_file():
        last = [l for l in run.stdout.splitlines() if l.strip()][-1:]
        raise OptionError(f"afl-tmin failed (status {run.returncode}): "
                          f"{last[0].strip() if last else 'no output'}")
    after = build_harness(args).run_input(out.read_bytes())
    print(f"svmemu: minimized {crash.stat().st_size} -> {out.stat().st_size} bytes in {out} "
          f"({'still crashes: ' + after.why if after.crashed else 'NO LONGER CRASHES'})",
          file=sys.stderr)
    return 0 if after.crashed else STATUS_CRASH + 1


def _child_argv(args: argparse.Namespace, persistent: int | None = None) -> list[str]:
    argv = ["fuzz", os.path.abspath(args.image), "-m", f"{args.memory >> 10}K",
            "--persistent", str(persistent or args.persistent), "--pat-model", args.pat_model]
    if args.append:
        argv += ["--append", args.append]
    if args.input_at:
        argv += ["--input-at", args.input_at]
    if args.input_vmcb is not None:
        argv += ["--input-vmcb", args.input_vmcb]
    if args.start_at:
        argv += ["--start-at", args.start_at]
    for end in args.end_at:
        argv += ["--end-at", end]
    for rule in args.crash_on:
        argv += ["--crash-on", rule]
    if args.input_timeout:
        argv += ["--input-timeout", str(args.input_timeout)]
    return argv


def _drive_afl(args: argparse.Namespace) -> int:
    from emu.tools.fuzz.afl import afl_command, afl_environment, afl_fuzz_path, load_unicornafl
    afl = afl_fuzz_path()
    if afl is None:
        raise OptionError("afl-fuzz is not on PATH (Debian: apt-get install afl++); "
                          "--run-input FILE runs one input without it")
    if not args.seeds or not args.output:
        raise OptionError("fuzzing with AFL++ needs -i SEED_DIR and -o OUTPUT_DIR")
    if not Path(args.seeds).is_dir() or not any(Path(args.seeds).iterdir()):
        raise OptionError(f"seed directory {args.seeds} is missing or empty")
    load_unicornafl()
    build_harness(args)          # fail here, with one line, on anything the child would fail on
    env = afl_environment()
    if args.until_crash:
        env["AFL_BENCH_UNTIL_CRASH"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[2])]
                                        + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    if args.jobs == 1 and not args.afl_name and not args.secondaries_only:
        cmd = afl_command(afl, args.seeds, args.output, _child_argv(args),
                          duration=args.duration, timeout_ms=args.afl_timeout, extra=args.afl_arg)
        status = subprocess.run(cmd, env=env).returncode
    else:
        status = _drive_instances(args, afl, env)
    crashes = sorted(p for p in Path(args.output).glob("*/crashes/id:*"))
    print(f"svmemu: afl-fuzz ended with status {status}; {len(crashes)} crashing input(s)"
          + (f" in {crashes[0].parent}" if crashes else ""), file=sys.stderr)
    return 0 if status == 0 else status


def instance_names(jobs: int, prefix: str, secondaries_only: bool) -> list[str]:
    """AFL++'s naming: one main, the rest secondaries, unique within the output folder."""
    stem = f"{prefix}-" if prefix else ""
    names = [] if secondaries_only else [f"{stem}main"]
    names += [f"{stem}s{i}" for i in range(1, jobs + 1 - len(names))]
    return names


def _drive_instances(args: argparse.Namespace, afl: str, env: dict[str, str]) -> int:
    """N afl-fuzz processes on one output folder; AFL++ syncs their queues through it. The
    main instance keeps the terminal; secondaries log to OUTPUT/NAME.log. With --until-crash
    the first instance to stop (it found a crash) stops the others."""
    import signal
    import time
    from emu.tools.fuzz.afl import afl_command
    Path(args.output).mkdir(parents=True, exist_ok=True)
    procs: list[tuple[str, subprocess.Popen]] = []
    try:
        for name in instance_names(args.jobs, args.afl_name, args.secondaries_only):
            role = ["-S", name] if not name.endswith("main") else ["-M", name]
            cmd = afl_command(afl, args.seeds, args.output, _child_argv(args),
                              duration=args.duration, timeout_ms=args.afl_timeout,
                              extra=role + args.afl_arg)
            main_ui = not procs and role[0] == "-M"
            log = None if main_ui else open(Path(args.output) / f"{name}.log", "w")
            procs.append((name, subprocess.Popen(cmd, env=env if main_ui else
                                                 dict(env, AFL_NO_UI="1"),
                                                 stdout=log, stderr=subprocess.STDOUT if log
                                                 else None)))
            if log is not None:
                log.close()
        while all(p.poll() is None for _, p in procs):
            time.sleep(0.5)
        if args.until_crash:
            for _, p in procs:
                if p.poll() is None:
                    p.send_signal(signal.SIGINT)
        statuses = [p.wait() for _, p in procs]
    except KeyboardInterrupt:
        for _, p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        for _, p in procs:
            p.wait()
        raise
    return next((s for s in statuses if s), 0)
