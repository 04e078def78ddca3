"""Real code: kvm-unit-tests kernels on svmemu and QEMU TCG, side by side in one run.

    python -m bench.kut                       # every workload, cap 60 s each; prints a table
    python -m bench.kut --cap 120 --only sieve --only vmexit_cpuid
    python -m bench.kut --markdown FILE       # also write the table as Markdown

The kernels come from ../shared/conformance, built (once) by the conformance runner's
build_suite into build/kvm-unit-tests; their command lines are the conformance runner's own
(tests/conformance/engines.py), so a workload here is exactly the run the conformance suite
makes. What is measured is the CPU time (user + system, from wait4) of each whole process,
svmemu and QEMU alternating. The cap is CPU time too (RLIMIT_CPU in the child; wall time is
allowed 10x that): on a shared machine a wall-clock limit measures the neighbours. A run that
reaches it is shown as "> cap". The verdict column says whether the kernel completed (a kernel
that failed or timed out is not a speed figure). Numbers never fail anything.
"""
from __future__ import annotations

import argparse
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import runners  # noqa: E402
from tests.conformance import cfg, engines, runner  # noqa: E402
from tests.conformance import outcome as oc  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SVM_ENTRY = "svm"
# (workload id, cfg entry or svm.flat test, what it exercises)
WORKLOADS = (
    ("boot", "dummy", "boot of a kvm-unit-tests kernel that does nothing (x86/dummy.flat)"),
    ("sieve", "sieve", "memory: the sieve of Eratosthenes, with and without paging"),
    ("access", "access", "every page-table permission combination, most ending in a #PF"),
    ("vmexit_cpuid", "vmexit_cpuid", "CPUID in a loop, timed with RDTSC"),
    ("vmexit_mov_from_cr8", "vmexit_mov_from_cr8", "MOV from CR8 in a loop"),
    ("vmexit_mov_to_cr8", "vmexit_mov_to_cr8", "MOV to CR8 in a loop"),
    ("vmexit_inl_pmtimer", "vmexit_inl_pmtimer", "IN from the ACPI PM timer in a loop"),
    ("vmexit_cr0_wp", "vmexit_cr0_wp", "toggling CR0.WP in a loop"),
    ("vmexit_cr4_pge", "vmexit_cr4_pge", "toggling CR4.PGE in a loop"),
    ("vmexit_ple_round_robin", "vmexit_ple_round_robin", "PAUSE in a loop"),
    ("vmexit_ipi", "vmexit_ipi", "IPI round trips between 2 CPUs (the target waits in HLT)"),
    ("vmexit_ipi_halt", "vmexit_ipi_halt", "IPI round trips to a halted CPU, then a 2000-tick wait"),
    ("vmexit_tscdeadline", "vmexit_tscdeadline", "TSC-deadline timer interrupts 3000 ticks apart"),
    ("vmexit_tscdeadline_immed", "vmexit_tscdeadline_immed",
     "TSC-deadline timer armed in the past (an interrupt at once)"),
    ("xapic", "xapic", "x86/apic.flat in xAPIC mode on 2 CPUs: IPIs, NMIs, APIC timer modes"),
    ("latency_run_exit", "svm.flat:latency_run_exit", "L2 RDTSC + VMMCALL, L1 RDTSC + VMRUN"),
    ("latency_run_exit_clean", "svm.flat:latency_run_exit_clean",
     "the same with VMCB clean bits set"),
    ("latency_svm_insn", "svm.flat:latency_svm_insn", "VMLOAD/VMSAVE/STGI/CLGI timed with RDTSC"),
    ("msr_intercept_check", "svm.flat:msr_intercept_check",
     "RDMSR/WRMSR of every MSR index range, each intercepted by L1"),
)


@dataclass
class Result:
    cpu: float
    wall: float
    verdict: str
    capped: bool


def suite_dir() -> Path:
    shared = Path(os.environ.get("SVMEMU_CONFORMANCE_SHARED", runner.SHARED_DEFAULT))
    return runner.build_suite(shared, runner.BUILD_DEFAULT)


# Workloads that need longer than the default cap (QEMU's sieve: ~35 s of CPU).
CAPS = {"sieve": 180.0}
WALL_PER_CPU = 10.0       # wall-clock allowance per CPU second of cap (a busy machine)


def plan_runs(suite: Path, cap: float) -> dict[str, engines.Run]:
    entries = {e.name: e for e in cfg.parse_cfg((suite / "x86" / "unittests.cfg").read_text())}
    runs: dict[str, engines.Run] = {}
    for wid, target, _ in WORKLOADS:
        limit = max(cap, CAPS.get(wid, 0.0))
        if target.startswith("svm.flat:"):
            name = target.split(":", 1)[1]
            e = entries[SVM_ENTRY]
            runs[wid] = engines.Run(target, suite / "x86" / "svm.flat", name, e.cpu, e.memory,
                                    limit, e.name, name)
        elif target in entries:
            e = entries[target]
            runs[wid] = engines.Run(e.name, suite / "x86" / e.file, e.append, e.cpu, e.memory,
                                    limit, e.name, e.test_args, e.smp)
        else:       # dummy.flat has no cfg entry
            runs[wid] = engines.Run(target, suite / "x86" / f"{target}.flat", "", None, None,
                                    limit, target, "")
    return runs


def run_svmemu(run: engines.Run, svmemu: list[str], cap: float) -> Result:
    cpu, _ = engines.svmemu_cpu(run.cpu, svmemu, run.kernel)
    wall = engines.Run(run.id, run.kernel, run.append, run.cpu, run.memory, cap * WALL_PER_CPU,
                       run.entry, run.args_key, run.smp)
    cmd = engines.svmemu_command(wall, svmemu, cpu)
    status, out, used, seconds = _child(cmd, cap)
    capped = status == -1
    o = oc.classify_svmemu(status, out, "", capped)
    return Result(used, seconds, o.verdict, o.verdict == oc.TIMEOUT)


def run_qemu(run: engines.Run, cap: float) -> Result:
    status, out, used, seconds = _child(engines.qemu_command(run), cap)
    o = oc.classify_qemu(status, out, "", status == -1)
    return Result(used, seconds, o.verdict, o.verdict == oc.TIMEOUT)


def _limit_cpu(cap: float) -> None:
    soft = int(cap) + 1
    resource.setrlimit(resource.RLIMIT_CPU, (soft, soft + 5))


def _child(cmd: list[str], cap: float) -> tuple[int, str, float, float]:
    """(status, -1 when the CPU cap or the wall allowance killed it; stdout; CPU seconds of the
    process and its threads; wall seconds)."""
    with tempfile.TemporaryFile() as out:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out,
                             stderr=subprocess.DEVNULL, preexec_fn=lambda: _limit_cpu(cap))
        killer = threading.Timer(cap * WALL_PER_CPU + engines.KILL_GRACE_S, p.kill)
        killer.start()
        try:
            _, wstatus, usage = os.wait4(p.pid, 0)
        finally:
            killer.cancel()
        p.returncode = 0
        out.seek(0)
        text = out.read().decode("utf-8", "replace")
    status = os.waitstatus_to_exitcode(wstatus)
    if status < 0 and -status in (signal.SIGXCPU, signal.SIGKILL):
        status = -1
    return status, text, usage.ru_utime + usage.ru_stime, time.perf_counter() - t0


def fmt(r: Result | None, cap: float) -> str:
    if r is None:
        return "-"
    return f"> {cap:.0f} s" if r.capped else f"{r.cpu:.2f} s"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.kut", description=__doc__.split("\n\n")[0])
    p.add_argument("--cap", type=float, default=60.0,
                   help="CPU seconds per run (default 60)")
    p.add_argument("--only", action="append", default=[], help="workload id (repeatable)")
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--no-qemu", action="store_true")
    p.add_argument("--markdown", type=Path)
    args = p.parse_args(argv)
    try:
        suite = suite_dir()
    except runner.SuiteError as e:
        print(f"bench.kut: {e}", file=sys.stderr)
        return 2
    runs = plan_runs(suite, args.cap)
    unknown = [w for w in args.only if w not in runs]
    if unknown:
        print(f"bench.kut: unknown workload {', '.join(unknown)}", file=sys.stderr)
        return 2
    svmemu = runner.default_svmemu()
    rows = []
    for wid, _, what in WORKLOADS:
        if args.only and wid not in args.only:
            continue
        run = runs[wid]
        cap = run.timeout
        s_runs, q_runs = [], []
        for _ in range(args.repeat):
            s_runs.append(run_svmemu(run, svmemu, cap))
            if not args.no_qemu and runners.QEMU:
                q_runs.append(run_qemu(run, cap))
        s, q = _median(s_runs), _median(q_runs)
        ratio = (f"{q.cpu / s.cpu:.2f}" if s and q and not s.capped and not q.capped
                 else (f"< {q.cpu / s.cpu:.2f}" if s and q and s.capped and not q.capped else "-"))
        row = (wid, what, fmt(s, cap), s.verdict if s else "-", fmt(q, cap),
               q.verdict if q else "-", ratio)
        rows.append(row)
        print(" | ".join(row), flush=True)
    if args.markdown:
        head = ("workload", "what it does", "svmemu CPU", "svmemu verdict", "QEMU CPU",
                "QEMU verdict", "QEMU/svmemu")
        lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        args.markdown.write_text("\n".join(lines) + "\n")
    return 0


def _median(results: list[Result]) -> Result | None:
    if not results:
        return None
    cpu = statistics.median(r.cpu for r in results)
    best = min(results, key=lambda r: abs(r.cpu - cpu))
    return best


if __name__ == "__main__":
    sys.exit(main())
