"""svmemu benchmarks: svmemu against raw Unicorn and QEMU TCG on the same bytes.

    python bench/run.py                  # everything but the test suite; writes bench/RESULTS.md
    python bench/run.py --suite          # also time the test suite (~60 s)
    python bench/run.py --quick          # scaled-down counts, a smoke run; writes nothing
    python bench/run.py --only switch --repeat 5

Each workload image is built twice, with N iterations and with 1; each engine runs both
`--repeat` times, and the cost per iteration is (median(N) - median(1)) / (N - 1), so boot
costs cancel. A run counts only if the guest finished with all its checks passed; a broken run
is reported as such, never timed. Numbers never fail anything: this prints and records them.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

if __package__ in (None, ""):       # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import emu  # noqa: E402,F401  (first: chooses the Unicorn engine, ours when built)
import unicorn  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.markup import escape  # noqa: E402
from rich.table import Table  # noqa: E402

from bench import profile_replay, profile_switch, runners, workloads  # noqa: E402
from bench.workloads import Workload  # noqa: E402
from emu.loader.asm import GUESTS_DIR, assemble_source  # noqa: E402
from emu.engine.unicorn_build import loader as engine_loader  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "RESULTS.md"
SVMEMU_CLI = [sys.executable, "-m", "emu.cli"]
SECTIONS = ("l1", "l2", "memloop", "switch", "msr", "guests", "memory", "profile", "suite")
GUEST_STATUS = {"triplefault": 4}      # svmemu status a bundled guest must end with (default 1)

console = Console(width=None if sys.stdout.isatty() else 160)


@dataclass
class Cost:
    """Seconds per iteration, or why there is no number."""
    per_iter: float | None = None
    error: str | None = None
    n: list[float] = field(default_factory=list)
    one: list[float] = field(default_factory=list)


@dataclass
class Row:
    key: str
    title: str
    unit: str
    iters: int
    svmemu: Cost
    raw: Cost | None
    qemu: Cost | None


def measure_all(engines: dict[str, Callable[[bytes], runners.Run]], w: Workload, iters: int,
                repeat: int) -> dict[str, Cost]:
    """Each engine's cost per iteration. The engines take turns within every repetition, so a
    drift in the machine (frequency, neighbours) lands on all of them alike."""
    img_n, img_1 = workloads.build(w, iters), workloads.build(w, 1)
    costs = {name: Cost() for name in engines}
    for _ in range(repeat):
        for name, run in engines.items():
            cost = costs[name]
            if cost.error:
                continue
            for img, acc, n in ((img_1, cost.one, 1), (img_n, cost.n, iters)):
                try:
                    r = run(img)
                except Exception as e:    # noqa: BLE001 - reported in the table, not raised
                    cost.error = f"{n} iterations: {type(e).__name__}: {e}"
                    break
                problem = workloads.completed(r.status, r.output, w.checks)
                if problem:
                    cost.error = f"{n} iterations: {problem}"
                    break
                acc.append(r.seconds)
    for cost in costs.values():
        if not cost.error:
            cost.per_iter = (statistics.median(cost.n) - statistics.median(cost.one)) / (iters - 1)
    return costs


def measure(run: Callable[[bytes], runners.Run], w: Workload, iters: int, repeat: int) -> Cost:
    return measure_all({"run": run}, w, iters, repeat)["run"]


def workload_rows(w: Workload, iters: int, repeat: int, qemu: bool) -> list[Row]:
    engines: dict[str, Callable[[bytes], runners.Run]] = {
        model: (lambda img, m=model: runners.svmemu(img, m)) for model in w.pat_models}
    if not w.nested:
        engines["raw"] = runners.raw_unicorn
    if qemu:
        engines["qemu"] = runners.qemu
    console.print(f"  {w.key}: {', '.join(engines)} x{repeat}, {iters:,} {w.unit}s", style="dim")
    costs = measure_all(engines, w, iters, repeat)
    rows = []
    for model in w.pat_models:
        title = w.title if len(w.pat_models) == 1 else f"{w.title} [{model}]"
        rows.append(Row(w.key, title, w.unit, iters, costs[model], costs.get("raw"),
                        costs.get("qemu")))
    return rows


# ---- formatting ------------------------------------------------------------------------------
def fmt_time(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1e-6:
        return f"{seconds * 1e9:.2f} ns"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.2f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds:.2f} s"


def fmt_cost(c: Cost | None) -> str:
    if c is None:
        return "n/a"
    if c.error:
        return "BROKEN"
    return fmt_time(c.per_iter)


def ratio(num: Cost | None, den: Cost | None) -> str:
    if not num or not den or num.per_iter is None or den.per_iter is None or den.per_iter <= 0:
        return "-"
    return f"{num.per_iter / den.per_iter:.2f}"


HEADERS = ["workload", "iterations", "svmemu / iter", "raw Unicorn / iter", "QEMU TCG / iter",
           "QEMU/svmemu", "raw/svmemu"]


def row_cells(r: Row) -> list[str]:
    return [r.title, f"{r.iters:,} {r.unit}s", fmt_cost(r.svmemu), fmt_cost(r.raw),
            fmt_cost(r.qemu), ratio(r.qemu, r.svmemu), ratio(r.raw, r.svmemu)]


def rich_table(title: str, headers: list[str], rows: list[list[str]]) -> Table:
    t = Table(title=title)
    for i, h in enumerate(headers):
        t.add_column(h, justify="left" if i == 0 else "right")
    for r in rows:
        t.add_row(*(escape(c) for c in r))
    return t


def md_table(headers: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


# ---- bundled guests, memory, suite -------------------------------------------------------------
def guest_rows(repeat: int, qemu: bool, tmp: Path) -> list[list[str]]:
    rows = []
    for src in sorted(GUESTS_DIR.glob("*.S")):
        name = src.stem
        img = tmp / f"{name}.bin"
        img.write_bytes(assemble_source(str(src)))
        want = GUEST_STATUS.get(name, 1)
        sv, qm = [], []
        sv_status = q_status = None
        for _ in range(repeat):
            c = runners.child(SVMEMU_CLI + ["run", str(img), "-q"], 120, cwd=str(REPO))
            sv_status = c.status
            sv.append(c.cpu)
            if qemu:
                r = runners.qemu(img.read_bytes(), timeout=60)
                q_status = r.status
                qm.append(r.seconds)
        ok = "ok" if sv_status == want else f"BROKEN (want {want})"
        sv_t, q_t = statistics.median(sv), (statistics.median(qm) if qm else None)
        rows.append([name, f"{sv_status} {ok}", fmt_time(sv_t),
                     "-" if q_status is None else str(q_status), fmt_time(q_t),
                     f"{q_t / sv_t:.2f}" if q_t else "-"])
    return rows


def goal_rows(rows: list[Row], rss_ratio: float | None) -> list[list[str]]:
    """The speed goals against this run's numbers."""
    def ratio_of(key: str, other: str) -> float | None:
        for r in rows:
            if r.key == key:
                num = r.qemu if other == "qemu" else r.raw
                if num and num.per_iter and r.svmemu.per_iter:
                    return num.per_iter / r.svmemu.per_iter
        return None

    out = []
    for goal, target, value in (
            ("L1 loop: QEMU cost / svmemu cost", 1.0, ratio_of("l1", "qemu")),
            ("L1 loop: raw Unicorn cost / svmemu cost", 0.95, ratio_of("l1", "raw")),
            ("L2 loop under NPT: QEMU / svmemu", 1.0, ratio_of("l2", "qemu")),
            ("L1 memory loop: QEMU / svmemu", 1.0, ratio_of("memloop", "qemu")),
            ("world-switch round trip: QEMU / svmemu", 1.0, ratio_of("switch", "qemu"))):
        if value is not None:
            out.append([goal, f"≥ {target:g}", f"{value:.2f}", "yes" if value >= target else "no"])
    if rss_ratio is not None:
        out.append(["RSS of a 128 MiB guest / guest RAM", "< 2", f"{rss_ratio:.2f}",
                    "yes" if rss_ratio < 2 else "no"])
    return out


def memory_rows(tmp: Path, qemu: bool) -> tuple[list[list[str]], float]:
    ram = runners.RAM
    touch = tmp / "memtouch.bin"
    touch.write_bytes(workloads.build_memtouch(ram))
    idle = tmp / "idle.bin"
    idle.write_bytes(workloads.build(workloads.by_key("l1"), 1))
    rows, worst = [], 0.0
    for label, img in (("every page of RAM written", touch), ("boot and exit (RAM untouched)", idle)):
        c = runners.child(SVMEMU_CLI + ["run", str(img), "-m", f"{ram >> 20}M", "-q"], 300,
                          cwd=str(REPO))
        kib, status = c.max_rss_kib, c.status
        q = "-"
        if qemu and runners.QEMU:
            qkib = runners.child([runners.QEMU, *runners.QEMU_ARGS, "-kernel", str(img)]).max_rss_kib
            q = f"{qkib / 1024:.0f} MiB"
        worst = max(worst, kib * 1024 / ram)
        rows.append([label, f"{ram >> 20} MiB", f"{kib / 1024:.0f} MiB",
                     f"{kib * 1024 / ram:.2f}x" + ("" if status == 1 else f" (status {status}!)"),
                     q])
    # Big guests that touch little: host memory follows what the guest writes, not -m.
    big = str(REPO / "guests" / "bigmem.S")
    for size in ("4G", "16G", "64G"):
        c = runners.child(SVMEMU_CLI + ["run", big, "-m", size, "-q"], 300, cwd=str(REPO))
        gib = int(size[:-1])
        rows.append(["bigmem.S: 3 qwords above 4 GiB written", f"{gib} GiB",
                     f"{c.max_rss_kib / 1024:.0f} MiB",
                     f"{c.max_rss_kib * 1024 / (gib << 30):.4f}x"
                     + ("" if c.status == 1 else f" (status {c.status}!)"), "-"])
    return rows, worst


def suite_line() -> tuple[float, float, str]:
    """(wall seconds, CPU seconds, pytest's summary line) of the whole test suite."""
    c = runners.child([sys.executable, "-m", "pytest", "-q", "tests/", "-x",
                       "-p", "no:cacheprovider"], 1800, cwd=str(REPO))
    last = [line for line in c.output.strip().splitlines() if line.strip()][-1:] or ["(no output)"]
    return c.wall, c.cpu, f"{last[0]} (status {c.status})"


# ---- machine facts, RESULTS.md ---------------------------------------------------------------
def machine_facts() -> list[str]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    qemu_v = "not installed"
    if runners.QEMU:
        qemu_v = subprocess.run([runners.QEMU, "--version"], capture_output=True,
                                text=True).stdout.splitlines()[0]
    return [f"svmemu source: {source_revision()}",
            f"CPU: {cpu}, {os.cpu_count()} logical CPUs, load average "
            f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} at start",
            f"Python {platform.python_version()}, unicorn {unicorn.__version__}, {qemu_v}",
            f"engine (svmemu and raw Unicorn): {engine_loader.current().describe()}",
            f"{platform.system()} {platform.release()}"]


def source_revision() -> str:
    """The commit measured, and whether emu/ or svm_ext/ had uncommitted changes."""
    try:
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "emu", "svm_ext"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return os.environ.get("SVMEMU_BENCH_SOURCE", "not a git checkout")
    return f"commit {head}" + (" with uncommitted changes in emu/ or svm_ext/" if dirty else "")


def profile_section(iters: int) -> tuple[list[list[str]], dict[str, tuple[float, float]]]:
    """Step rows for workloads 3 and 4 side by side, and per workload (unprofiled CPU µs per
    round trip, the top-level Python steps' share of the profiled run)."""
    per: dict[str, list[str]] = {}
    totals = {}
    for key in ("switch", "msr"):
        plain, steps, wrapped = profile_switch.breakdown(iters, key)
        wall = wrapped * iters / 1e6          # the profiled run's wall seconds
        top_level = 0.0
        for s in steps:
            share = s.seconds / wall
            calls = "" if abs(s.calls / iters - 1) < 0.01 else f", {s.calls / iters:.3g} calls"
            per.setdefault(s.name, [("· " * s.depth) + s.name]).append(
                f"{100 * share:.1f}% ≈ {share * plain:.1f}{calls}")
            if s.depth == 0 and not s.name.startswith("ctx."):
                top_level += share
        totals[key] = (plain, top_level)
    width = 1 + len(totals)
    rows = [cells + ["-"] * (width - len(cells)) + [profile_switch.REMEDY.get(name, "")]
            for name, cells in per.items()]
    return rows, totals


@contextlib.contextmanager
def steps_progress(total: int, what: str):
    """A transient bar on a terminal (which workload runs, how long so far); nothing otherwise,
    so redirected output and CI logs stay as they were. Yields `advance(label)`."""
    if not sys.stderr.isatty() or total == 0:
        yield lambda label: None
        return
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn)
    bar = Progress(TextColumn(what), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TextColumn("{task.description}"), console=Console(file=sys.stderr),
                   transient=True)
    task = bar.add_task("", total=total)
    started = [False]

    def advance(label: str) -> None:
        if started[0]:
            bar.advance(task)
        started[0] = True
        bar.update(task, description=label)
    with bar:
        yield advance


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="scaled-down counts (a smoke run)")
    ap.add_argument("--repeat", type=int, default=None, help="runs per measurement (default 3, "
                    "--quick 1)")
    ap.add_argument("--only", action="append", choices=SECTIONS, help="only this part "
                    "(repeatable)")
    ap.add_argument("--suite", action="store_true", help="also time the test suite (~60 s)")
    ap.add_argument("--no-qemu", action="store_true", help="skip the QEMU columns")
    ap.add_argument("--results", help="write the report here (default bench/RESULTS.md; "
                    "--quick writes none unless given)")
    args = ap.parse_args(argv)
    repeat = args.repeat or (1 if args.quick else 3)
    if repeat < 1:
        ap.error("--repeat must be at least 1")
    only = set(args.only or [s for s in SECTIONS if s != "suite" or args.suite])
    qemu = not args.no_qemu and runners.QEMU is not None
    results = Path(args.results) if args.results else (None if args.quick else RESULTS)

    started = datetime.datetime.now(datetime.timezone.utc)
    facts = machine_facts()
    console.print(f"[bold]svmemu benchmarks[/bold] {started:%Y-%m-%d %H:%M} UTC; "
                  f"repeat {repeat}{', quick' if args.quick else ''}")
    for f in facts:
        console.print("  " + f, style="dim")
    md = [f"# svmemu benchmark results\n\n{started:%Y-%m-%d %H:%M} UTC, `python bench/run.py"
          f"{' --quick' if args.quick else ''}{' --suite' if args.suite else ''}` "
          f"(repeat {repeat}).\n", *[f"- {f}" for f in facts], ""]

    rows: list[Row] = []
    chosen = [w for w in workloads.WORKLOADS if w.key in only]
    with steps_progress(len(chosen), "workloads") as advance:
        for w in chosen:
            advance(w.title)
            rows += workload_rows(w, w.quick if args.quick else w.full, repeat, qemu)
    if rows:
        cells = [row_cells(r) for r in rows]
        console.print(rich_table("cost per iteration (ratio > 1: svmemu faster)", HEADERS, cells))
        md += ["## Workloads", "", "Cost per iteration after subtracting a 1-iteration build of "
               "the same image (medians). QEMU/svmemu > 1 means svmemu is faster than QEMU TCG; "
               "raw/svmemu is the share of bare Unicorn's speed svmemu keeps (goal ≥ 0.95).", "",
               md_table(HEADERS, cells), ""]
        broken = [(r.title, name, c.error) for r in rows
                  for name, c in (("svmemu", r.svmemu), ("raw Unicorn", r.raw), ("QEMU", r.qemu))
                  if c is not None and c.error]
        for title, name, err in broken:
            console.print(f"[red]BROKEN[/red] {title} on {name}: {err}")
        if broken:
            md += ["Broken runs (not timed):", ""] + [f"- {t} on {n}: {e}" for t, n, e in broken]
            md.append("")

    rss_ratio: float | None = None
    with tempfile.TemporaryDirectory(prefix="svmemu-bench-") as tmpdir:
        tmp = Path(tmpdir)
        if "guests" in only:
            console.print("  bundled guests", style="dim")
            gh = ["guest", "svmemu status", "svmemu CPU", "QEMU status", "QEMU CPU",
                  "QEMU/svmemu"]
            g = guest_rows(repeat, qemu, tmp)
            console.print(rich_table("bundled guests: whole process, CPU time", gh, g))
            md += ["## Bundled guests", "", "CPU time of one whole process (`svmemu run x.bin` "
                   "including Python start-up and imports, against `qemu-system-x86_64 -kernel "
                   "x.bin`), median. Status: 1 = all checks passed; QEMU 3 = some checks fail "
                   "on QEMU TCG (tests/test_guests_qemu.py lists why); triplefault: svmemu 4 "
                   "(shutdown), QEMU 0.", "", md_table(gh, g), ""]
        if "memory" in only:
            console.print("  memory", style="dim")
            mh = ["guest", "guest RAM", "svmemu max RSS", "RSS / guest RAM", "QEMU max RSS"]
            mrows, rss_ratio = memory_rows(tmp, qemu)
            console.print(rich_table("memory (goal: RSS < 2x guest RAM)", mh, mrows))
            md += ["## Memory", "", "Peak resident set of `svmemu run -m 128M` (wait4 "
                   "ru_maxrss), for a guest that writes every page of its RAM and for one that "
                   "boots and exits. Goal: below 2x guest RAM.", "", md_table(mh, mrows), ""]
    if "suite" in only:
        console.print("  test suite", style="dim")
        wall, cpu, line = suite_line()
        console.print(f"test suite: {wall:.1f} s wall, {cpu:.1f} s CPU: {line}")
        md += ["## Test suite", "", f"`python -m pytest -q tests/ -x -p no:cacheprovider`: "
               f"{wall:.1f} s wall, {cpu:.1f} s CPU (pytest and its children) ({line}).", ""]
    if "profile" in only:
        console.print("  world-switch profile", style="dim")
        iters = 2000 if args.quick else 20000
        top_iters = 1000 if args.quick else 5000
        prow, totals = profile_section(iters)
        ph = ["step (· = inside the one above)", "VMMCALL trip: share ≈ µs",
              "RDMSR + NPT trip: share ≈ µs", "what it is / what would remove it"]
        console.print(rich_table("world-switch profile (share of the profiled run ≈ µs per "
                                 "round trip)", ph[:3], [r[:3] for r in prow]))
        (p3, py3), (p4, py4) = totals["switch"], totals["msr"]
        trips = 40_000 if args.quick else 400_000
        md += ["## World-switch profile: the replayed switch (C)", "",
               "A round trip that repeats runs in C (emu/engine/replay.c, programs recorded by "
               "svm_ext/fast_switch.py). `python -m bench.profile_replay`: perf samples "
               f"(software clock) over {trips:,} VMMCALL round trips, whole process, grouped by "
               "symbol; start-up is in the Python row, and the µs column spreads the measured "
               "round trip (above) over the other rows by their share:", ""]
        try:
            counts, _ = profile_replay.profile("switch", trips)
            trip = next((r for r in rows if r.key == "switch"), None)
            md += [md_table(profile_replay.HEADER, profile_replay.rows(
                counts, trip.svmemu.per_iter * 1e6
                if trip is not None and trip.svmemu.per_iter else None)), ""]
        except (SystemExit, subprocess.CalledProcessError) as e:
            md += [f"(not measured: {e})", ""]
        md += ["## World-switch profile: the Python path", "",
               "What a switch costs when it is met for the first time, does not repeat, or runs "
               "with `--no-replay` (this profile turns replay off). "
               f"Workloads 3 (`world_switch.S`) and 4 (`world_switch_msr.S`, architectural "
               f"model), {iters:,} round trips each. Unprofiled: **{p3:.1f} µs** and "
               f"**{p4:.1f} µs** of CPU per round trip. A timer wraps each step below (wall "
               "clock: a CPU clock costs ~0.9 µs a read, more than many steps); each cell is "
               "the step's share of the profiled run, inclusive (a step includes the indented "
               "ones under it, one timer's own cost subtracted per call), and that share of "
               "the unprofiled cost in µs. Shares survive a loaded machine better than times "
               "do; nested timers still inflate the small steps. The top-level Python steps "
               f"take {100 * py3:.0f}% and {100 * py4:.0f}% of the run; the rest is Unicorn "
               "(the L1 and L2 instructions, raising the intercept, finding translated code "
               "again after each TLB flush), the ctypes hook dispatch and the run loop.", "",
               md_table(ph, prow), ""]
        for key, name in (("switch", "workload 3"), ("msr", "workload 4")):
            top = profile_switch.cprofile_top(top_iters, 18, key)
            md += [f"cProfile, own time, {name}, {top_iters:,} round trips (profiler overhead "
                   "inflates small functions; read it for proportions):", "", "```", top, "```",
                   ""]
    goals = goal_rows(rows, rss_ratio)
    if goals:
        gh = ["goal", "target", "this run", "met"]
        console.print(rich_table("speed goals", gh, goals))
        md += ["## Goals", "", md_table(gh, goals), ""]
    md += ["## Notes", "",
           "- Workloads are bench/guests/*.S, assembled by svmemu's assembler with the iteration "
           "count substituted; the same bytes boot on QEMU "
           "(`-accel tcg -cpu qemu64,+svm,+npt -m 128 -device isa-debug-exit,iobase=0xf4,iosize=4`).",
           "- svmemu, raw Unicorn and QEMU take turns within each repetition (1 and N iterations "
           "each), so drift in the machine lands on all of them alike.",
           "- Times are CPU seconds (user + system), not wall time: the machine is shared, and "
           "wall time there measures the neighbours too. svmemu is timed in-process "
           "(`Machine.run`), raw Unicorn around `emu_start`, QEMU as a whole process (all "
           "threads, from wait4); the 1-iteration subtraction removes each one's boot cost.",
           "- Raw Unicorn: a bare `UC_MODE_32` instance, RAM mapped, multiboot EAX/EBX, and two "
           "IN/OUT instruction hooks (COM1 always ready, isa-debug-exit stops); no SVM, no "
           "intercepts. Only the L1 loop runs there (the nested workloads need svmemu's SVM).",
           "- Workload 3 has no nested paging; workload 4 turns it on (so the PAT models' gPAT "
           "work at VMRUN/#VMEXIT is on the path) and each trip is L1's MSR intercept of L2's "
           "RDMSR(PAT) rather than VMMCALL.",
           "- The machine is shared (2 cores, other work running): even CPU time varies by "
           "10-20% between runs (caches, frequency).",
           "- Why the loops trail QEMU (bench/LOOPS.md, with the disassembly): raw Unicorn, "
           "svmemu's L1 and svmemu's L2 run the same host code for the loop, byte for byte; "
           "it differs from QEMU 7.2's only in Unicorn 2.1.4's call to "
           "helper_check_exit_request at the start of every translated block (QEMU and "
           "Unicorn 2.1.3: a 3-instruction inline test), ~0.5 ns per block, ~40% of the "
           "loop. Replacing it in the live block gives 0.95-0.99 ns/iteration, faster than "
           "QEMU. Closing it needs a decision on the pinned Unicorn (a rebuilt wheel, or "
           "rewriting block entries at run time). The PAT model changes the round trip by "
           "less than the noise. A bundled guest's process is ~150 ms of CPU, nearly all "
           "Python start-up, imports and assembly, against QEMU's ~70 ms.",
           "- The profile's per-step times use a wall clock (a CPU clock costs ~0.9 µs per read, "
           "more than many steps), so they are only as quiet as the machine was.", ""]
    if results is not None:
        results.write_text("\n".join(md))
        console.print(f"wrote {results.relative_to(REPO) if results.is_relative_to(REPO) else results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
