"""Run kvm-unit-tests on svmemu and QEMU TCG, write docs/conformance.md, or check svmemu against
tests/conformance/expectations.toml (`--check`, what CI runs).

    python -m tests.conformance.runner                 # both engines (QEMU from its cache), report
    python -m tests.conformance.runner --check         # svmemu only, exit 1 on anything worse
    python -m tests.conformance.runner --only 'svm.flat:*' --engines svmemu --no-report

Exit status: 0 done (with --check: nothing worse than expected), 1 some test worse than expected,
2 bad option or the suite could not be built."""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import fnmatch
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Callable, Sequence

from . import cfg, engines, expectations, report, svmtests
from . import outcome as oc

REPO = Path(__file__).resolve().parents[2]
SHARED_DEFAULT = REPO.parent / "shared" / "conformance"
BUILD_DEFAULT = REPO / "build" / "kvm-unit-tests"
QEMU_CACHE_DEFAULT = Path(__file__).with_name("qemu-results.json")
REPORT_DEFAULT = REPO / "docs" / "conformance.md"
BUILD_SCRIPT = "build-kvm-unit-tests.sh"

# The cfg entries whose options the single tests of each kernel use.
ALONE = {"svm.flat": "svm", "svm_npt.flat": "svm_npt"}
SETS = ("entries", "svm", "npt")


_PASS = expectations.Expected(oc.PASS)


class SuiteError(Exception):
    pass


def build_suite(shared: Path, build: Path) -> Path:
    """Build (once) the pinned kernels into `build` with the shared build script."""
    script = shared / BUILD_SCRIPT
    if not script.exists():
        raise SuiteError(f"no {BUILD_SCRIPT} in {shared}")
    if not (build / ".built").exists():
        build.parent.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(["bash", str(script), str(build)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise SuiteError(f"building kvm-unit-tests failed: {(proc.stdout + proc.stderr)[-600:]}")
    return build


def plan(suite: Path, sets: Sequence[str], timeout_cap: float | None
         ) -> tuple[list[tuple[str, list[engines.Run]]], list[tuple[str, str]]]:
    """The runs, grouped for the report, and the entries left out with the reason."""
    entries = cfg.parse_cfg((suite / "x86" / "unittests.cfg").read_text())
    by_name = {e.name: e for e in entries}
    excluded = [(e.name, why) for e in entries if (why := cfg.exclusion(e))]

    def timeout(t: float) -> float:
        return min(t, timeout_cap) if timeout_cap else t

    groups: list[tuple[str, list[engines.Run]]] = []
    if "entries" in sets:
        runs = [engines.Run(e.name, suite / "x86" / e.file, e.append, e.cpu, e.memory,
                            timeout(e.timeout), e.name, e.test_args, e.smp)
                for e in entries if not cfg.exclusion(e)]
        groups.append(("Entries of x86/unittests.cfg", runs))
    for kernel, key in (("svm.flat", "svm"), ("svm_npt.flat", "npt")):
        if key not in sets:
            continue
        default = by_name[ALONE[kernel]]
        runs = []
        for name in svmtests.list_tests(suite, kernel):
            e = own_entry(entries, kernel, name) or default
            runs.append(engines.Run(f"{kernel}:{name}", suite / "x86" / kernel, name, e.cpu,
                                    e.memory, timeout(cfg.DEFAULT_TIMEOUT_S), e.name, name, e.smp))
        groups.append((f"{kernel} tests alone", runs))
    return groups, excluded


def own_entry(entries: Sequence[cfg.Entry], kernel: str, test: str) -> cfg.Entry | None:
    """The entry that runs `test` of `kernel` by itself (its test_args name only that test),
    if it applies here. Such a test is left out of the kernel's main entry because it needs its
    own options (svm_unsupported_instruction_intercept_test needs a CPU without RDTSCP, XSAVE,
    INVPCID and SKINIT): run alone, it gets those options, not the main entry's."""
    for e in entries:
        if e.file == kernel and e.test_args.strip() == test and not cfg.exclusion(e):
            return e
    return None


def source_id(shared: Path) -> str | None:
    """The pinned source the kernels are built from (its tarball's hash), or None."""
    tarballs = sorted(shared.glob("kvm-unit-tests-*.tar.gz"))
    if len(tarballs) != 1:
        return None
    return hashlib.sha1(tarballs[0].read_bytes()).hexdigest()[:12]


def qemu_key(run: engines.Run, source: str | None = None) -> str:
    """What a QEMU result is cached under. The kernel is named by the source it was built from
    and its file name when the source is known: its bytes hold the build directory's path (in
    assertion messages), so a digest of them differs from one checkout to the next."""
    kernel = (f"{source}/{run.kernel.name}" if source
              else hashlib.sha1(run.kernel.read_bytes()).hexdigest()[:12])
    smp = f"|smp{run.smp}" if run.smp > 1 else ""
    devices = ";".join(engines.QEMU_DEVICES)           # results from another platform are stale
    return f"{run.id}|{kernel}|{run.args_key}|{run.cpu}|{run.memory}{smp}|{devices}"


def load_cache(path: Path) -> dict[str, dict]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def default_svmemu() -> list[str]:
    env = os.environ.get("SVMEMU_CONFORMANCE_SVMEMU")
    if env:
        return shlex.split(env)
    beside = Path(sys.executable).with_name("svmemu")
    if beside.exists():
        return [str(beside)]
    found = shutil.which("svmemu")
    if found:
        return [found]
    return [sys.executable, "-m", "emu.cli"]


class Progress:
    """A live bar with verdict counts on a terminal; one line per finished run elsewhere."""

    def __init__(self, total: int, quiet: bool) -> None:
        self.total, self.done, self.quiet = total, 0, quiet
        self.counts: dict[str, int] = {}
        self.lock = threading.Lock()
        self.bar = None
        if not quiet and sys.stderr.isatty():
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress as Bar,
                                       TextColumn, TimeElapsedColumn)
            self.bar = Bar(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                           TimeElapsedColumn(), TextColumn("{task.fields[counts]}"),
                           transient=False)
            self.task = self.bar.add_task("kvm-unit-tests", total=total, counts="")
            self.bar.start()

    def finished(self, engine: str, run: engines.Run, o: oc.Outcome) -> None:
        with self.lock:
            self.done += 1
            key = f"{engine}:{o.verdict}"
            self.counts[key] = self.counts.get(key, 0) + 1
            line = (f"[{self.done:>3}/{self.total}] {engine:<6} {run.id:<52} {o.verdict:<14}"
                    f" {o.counts():>9} {o.seconds:6.1f}s")
            if self.bar is not None:
                summary = " ".join(f"{k}={v}" for k, v in sorted(self.counts.items()))
                self.bar.update(self.task, advance=1, description=run.id[:40], counts=summary)
                if o.verdict not in (oc.PASS, oc.SKIP):
                    self.bar.console.print(line, highlight=False)
            elif not self.quiet:
                print(line, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def execute_all(jobs: list[tuple[str, engines.Run, Callable[[], oc.Outcome]]], workers: int,
                progress: Progress,
                each: Callable[[str, engines.Run, oc.Outcome], None] = lambda *a: None
                ) -> dict[tuple[str, str], oc.Outcome]:
    """Run the jobs in a pool; `each` sees every outcome as it comes (to save it at once: a run
    of the whole suite takes long enough to be interrupted)."""
    results: dict[tuple[str, str], oc.Outcome] = {}
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = {pool.submit(fn): (engine, run) for engine, run, fn in jobs}
        for fut in as_completed(futures):
            engine, run = futures[fut]
            try:
                o = fut.result()
            except Exception as exc:       # the runner's own failure, never the engine's
                o = oc.Outcome(oc.INTERNAL, detail=f"runner: {exc!r}")
            results[(engine, run.id)] = o
            progress.finished(engine, run, o)
            each(engine, run, o)
    return results


class Saved:
    """A JSON file of outcomes kept up to date as runs finish: the QEMU cache (keyed by
    qemu_key) or --results (keyed by engine, then run id)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.data: dict = load_cache(path) if path else {}

    def put(self, keys: tuple[str, ...], o: oc.Outcome) -> None:
        if self.path is None:
            return
        d = self.data
        for k in keys[:-1]:
            d = d.setdefault(k, {})
        d[keys[-1]] = o.to_json()
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, sort_keys=True) + "\n")
        tmp.replace(self.path)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tests.conformance.runner",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--shared", type=Path,
                   default=Path(os.environ.get("SVMEMU_CONFORMANCE_SHARED", SHARED_DEFAULT)),
                   help="directory with build-kvm-unit-tests.sh and the source tarball "
                        "(env SVMEMU_CONFORMANCE_SHARED; default ../shared/conformance)")
    p.add_argument("--build-dir", type=Path,
                   default=Path(os.environ.get("SVMEMU_CONFORMANCE_BUILD", BUILD_DEFAULT)),
                   help="where the kernels are built, once (env SVMEMU_CONFORMANCE_BUILD; "
                        "default build/kvm-unit-tests)")
    p.add_argument("--sets", default=",".join(SETS),
                   help="comma list of: entries (unittests.cfg), svm (svm.flat tests alone), "
                        "npt (svm_npt.flat tests alone)")
    p.add_argument("--only", action="append", default=[],
                   help="run only ids matching this glob (repeatable), e.g. 'svm.flat:npt*'")
    p.add_argument("--engines", default=None,
                   help="comma list of svmemu, qemu (default both; svmemu with --check)")
    p.add_argument("-j", "--jobs", type=int, default=2, help="runs in parallel (default 2)")
    p.add_argument("--timeout", type=float, default=None,
                   help="cap on every run's time limit in seconds (default: the entry's own, 90)")
    p.add_argument("--expected-timeout-limit", type=float, default=None, metavar="S",
                   help="with --check: time limit for runs expected to time out (they only "
                        "have to end no worse within it)")
    p.add_argument("--svmemu", type=shlex.split, default=None,
                   help="svmemu command (env SVMEMU_CONFORMANCE_SVMEMU; default the installed one)")
    p.add_argument("--qemu-cache", type=Path, default=QEMU_CACHE_DEFAULT,
                   help="QEMU's results are kept here and reused (default "
                        "tests/conformance/qemu-results.json)")
    p.add_argument("--rerun-qemu", action="store_true", help="ignore the QEMU cache")
    p.add_argument("--report", type=Path, default=None,
                   help="write the report here (default docs/conformance.md for a full run)")
    p.add_argument("--no-report", action="store_true")
    p.add_argument("--check", action="store_true",
                   help="compare svmemu with the expectations; exit 1 if any test does worse")
    p.add_argument("--expectations", type=Path, default=expectations.EXPECTATIONS)
    p.add_argument("--write-expectations", action="store_true",
                   help="rewrite the expectations from this run, keeping recorded reasons")
    p.add_argument("--results", type=Path, default=None,
                   help="keep every svmemu outcome in this JSON file as runs finish; the report "
                        "then covers the whole suite, with earlier outcomes for runs not "
                        "repeated (refresh a few with --only)")
    p.add_argument("--retry-factor", type=float, default=2.0, metavar="F",
                   help="with --check: a run that times out where a better verdict is expected "
                        "runs again alone with F times its limit (default 2; 1 turns it off)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress")
    args = p.parse_args(argv)
    sets = [s.strip() for s in args.sets.split(",") if s.strip()]
    if any(s not in SETS for s in sets):
        p.error(f"--sets takes {', '.join(SETS)}")
    args.sets = sets
    default_engines = "svmemu" if args.check else "svmemu,qemu"
    args.engines = [e.strip() for e in (args.engines or default_engines).split(",") if e.strip()]
    if any(e not in ("svmemu", "qemu") for e in args.engines):
        p.error("--engines takes svmemu, qemu")
    if args.jobs < 1:
        p.error("--jobs must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        suite = build_suite(args.shared, args.build_dir)
        source = source_id(args.shared)
        groups, excluded = plan(suite, args.sets, args.timeout)
        expected = expectations.load(args.expectations) if (
            args.check or args.write_expectations) else {}
    except (SuiteError, OSError, ValueError) as exc:
        print(f"conformance: {exc}", file=sys.stderr)
        return 2
    all_groups = groups
    if args.only:
        groups = [(t, [r for r in runs if any(fnmatch.fnmatchcase(r.id, g) for g in args.only)])
                  for t, runs in groups]
        groups = [(t, runs) for t, runs in groups if runs]
    if args.check and args.expected_timeout_limit:
        limit = args.expected_timeout_limit
        groups = [(t, [dataclasses.replace(r, timeout=min(r.timeout, limit))
                       if expected.get(r.id, _PASS).verdict == oc.TIMEOUT else r for r in rs])
                  for t, rs in groups]
    runs = [r for _, rs in groups for r in rs]
    # Whole-kernel svm runs are the longest: start them first so the pool ends together.
    order = sorted(runs, key=lambda r: (r.kernel.name != "svm.flat" or ":" in r.id,))

    svmemu_cmd = args.svmemu or default_svmemu()
    cache = {} if args.rerun_qemu else load_cache(args.qemu_cache)
    qemu: dict[str, oc.Outcome] = {}
    jobs: list[tuple[str, engines.Run, Callable[[], oc.Outcome]]] = []
    if "qemu" in args.engines and not shutil.which(engines.QEMU_BINARY):
        print("conformance: qemu-system-x86_64 not found; QEMU column left empty",
              file=sys.stderr)
        args.engines.remove("qemu")
    for r in order:
        if "svmemu" in args.engines:
            jobs.append(("svmemu", r, lambda r=r: engines.run_svmemu(r, svmemu_cmd)))
        if "qemu" in args.engines:
            hit = cache.get(qemu_key(r, source))
            if hit:
                qemu[r.id] = oc.Outcome.from_json(hit)
            else:
                jobs.append(("qemu", r, lambda r=r: engines.run_qemu(r)))

    qemu_cache = Saved(args.qemu_cache)
    saved = Saved(args.results)

    def each(engine: str, run: engines.Run, o: oc.Outcome) -> None:
        if engine == "qemu":
            qemu_cache.put((qemu_key(run, source),), o)
        saved.put((engine, run.id), o)

    progress = Progress(len(jobs), args.quiet)
    try:
        done = execute_all(jobs, args.jobs, progress, each)
    finally:
        progress.close()
    # --results: earlier outcomes of runs not repeated now still count (a partial re-run with
    # --only refreshes the report without running everything again).
    report_groups = all_groups if args.results and not args.check else groups
    report_runs = [r for _, rs in report_groups for r in rs]
    known = {r.id for r in report_runs}
    svm = {rid: oc.Outcome.from_json(v) for rid, v in saved.data.get("svmemu", {}).items()
           if rid in known and not args.check}
    svm.update({rid: o for (eng, rid), o in done.items() if eng == "svmemu"})
    qemu.update({rid: o for (eng, rid), o in done.items() if eng == "qemu"})
    if "qemu" in args.engines:
        for r in report_runs:
            hit = cache.get(qemu_key(r, source))
            if r.id not in qemu and hit:
                qemu[r.id] = oc.Outcome.from_json(hit)
    report_path = args.report or (
        REPORT_DEFAULT if (args.results or not args.only) and not args.check else None)
    if report_path and not args.no_report:
        report_path.write_text(report.render(report_groups, svm, qemu, excluded,
                                             report.load_notes(),
                                             header(suite, args, svmemu_cmd)))
        print(f"conformance: wrote {report_path}", file=sys.stderr)

    for title, rs in groups:
        ids = [r.id for r in rs]
        print(f"{title}: svmemu {report.totals_line(ids, svm)}"
              + (f"; QEMU {report.totals_line(ids, qemu)}" if qemu else ""))

    if args.write_expectations:
        merged = {k: v for k, v in expected.items()}
        text = expectations.render({**{k: _as_outcome(v) for k, v in merged.items()}, **svm},
                                   expected)
        args.expectations.write_text(text)
    if args.check:
        svm.update(retry_load_timeouts(runs, svm, expected, svmemu_cmd, args.retry_factor,
                                       progress_quiet=args.quiet))
        return check(runs, svm, expected)
    return 0


def retry_load_timeouts(runs: list[engines.Run], svm: dict[str, oc.Outcome],
                        expected: dict[str, expectations.Expected], svmemu_cmd: list[str],
                        factor: float, progress_quiet: bool = True) -> dict[str, oc.Outcome]:
    """Runs that timed out where a better verdict is expected, run again one at a time with
    `factor` times the limit.  A wall-clock limit measures the machine's load as much as
    svmemu: two parallel runs on a busy 2-core machine can take twice as long as on an idle one,
    and a pass that needs 20 s idle should not fail CI there.  Only the second outcome counts;
    its detail keeps the first run's time so a slow-but-passing test stays visible."""
    again = [r for r in runs if (o := svm.get(r.id)) is not None and o.verdict == oc.TIMEOUT
             and oc.rank(expected.get(r.id, _PASS).verdict) < oc.rank(oc.TIMEOUT)]
    if factor <= 1 or not again:
        return {}
    jobs = [("svmemu", r, lambda r=r: engines.run_svmemu(
        dataclasses.replace(r, timeout=r.timeout * factor), svmemu_cmd)) for r in again]
    progress = Progress(len(jobs), progress_quiet)
    try:
        done = execute_all(jobs, 1, progress)
    finally:
        progress.close()
    out = {}
    for r in again:
        o = done[("svmemu", r.id)]
        note = (f"timed out at {r.timeout:g} s among parallel runs; alone with "
                f"{r.timeout * factor:g} s: {o.verdict} in {o.seconds:.1f} s")
        print(f"conformance: {r.id} {note}")
        o.detail = f"{o.detail}; {note}" if o.detail else note
        out[r.id] = o
    return out


def _as_outcome(e: expectations.Expected) -> oc.Outcome:
    return oc.Outcome(e.verdict, fails=e.fails or 0)


def check(runs: list[engines.Run], svm: dict[str, oc.Outcome],
          expected: dict[str, expectations.Expected]) -> int:
    worse, better = [], []
    for r in runs:
        got = svm.get(r.id)
        if got is None:
            continue
        kind, why = expectations.compare(expected.get(r.id), got)
        if kind == expectations.WORSE:
            worse.append(f"  {r.id}: {why} [{got.seconds:.1f} s]")
        elif kind == expectations.BETTER:
            better.append(f"  {r.id}: {why}")
    if better:
        print("better than expected (update expectations):\n" + "\n".join(better))
    if worse:
        print("worse than expected:\n" + "\n".join(worse))
        return 1
    print(f"conformance: {len(runs)} runs, none worse than expected")
    return 0


def header(suite: Path, args: argparse.Namespace, svmemu_cmd: list[str]) -> list[str]:
    qemu_version = ""
    if shutil.which(engines.QEMU_BINARY):
        qemu_version = subprocess.run([engines.QEMU_BINARY, "--version"], capture_output=True,
                                      text=True).stdout.splitlines()[0]
    today = datetime.date.today().isoformat()
    return [
        f"Generated by `python -m tests.conformance.runner` on {today} from the kvm-unit-tests "
        "source pinned in `../shared/conformance` (commit 1da1819e); "
        f"QEMU: {qemu_version or 'not found'}.  Regenerate with the same command (QEMU's results "
        "come from `tests/conformance/qemu-results.json`; `--rerun-qemu` measures them again).",
        "",
        "How each run is made:",
        "- svmemu: `svmemu run KERNEL --cpu CPU -m MEM -smp N --append ARGS --timeout T`, with the "
        "entry's `-cpu` less what svmemu refuses (a model it lacks becomes EPYC; features it "
        "does not implement, QEMU-only options such as `vendor=`): a cell says "
        "`(without ...)` then; `-m` above "
        f"{engines.SVMEMU_MAX_MEMORY_MIB} MiB is capped there (svmemu's RAM lies below the 4 GiB "
        "hole).",
        "- QEMU TCG: `qemu-system-x86_64 -accel tcg -cpu CPU -m MEM -smp N -kernel KERNEL "
        "-append ARGS " + " ".join(f"-device {d}" for d in engines.QEMU_DEVICES)
        + " -no-reboot -nodefaults`, with the entry's `-cpu` (default qemu64) and `-m` (default "
        "128 MiB), and the devices kvm-unit-tests' own runner adds; the entry's other options "
        "(`-machine`, `-overcommit`, devices) are not passed.",
        "- Both run the entry's CPU count (`smp`, default 1).",
        "- Each test of svm.flat and svm_npt.flat also runs alone (`-append NAME`) with the "
        "options of the `svm` and `svm_npt` entries.",
        "- Time limit: the entry's `timeout` (default 90 s)"
        + (f", capped at {args.timeout:g} s" if args.timeout else "") + ".  Times are wall "
        "seconds on a shared 2-core machine with two runs in parallel: compare them only "
        "roughly (speed is measured in bench/).",
        "- A cell reads `verdict PASS/FAIL/SKIP` (the kernel's result lines).  Verdicts: pass, "
        "fail, skip (exit statuses 1, 3, 77 after isa-debug-exit), timeout, unsupported "
        "(svmemu's `unsupported:` stop), crash (no verdict: shutdown, halt, abort), "
        "internal error.",
    ]


if __name__ == "__main__":
    sys.exit(main())
