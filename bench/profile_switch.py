"""Where a VMRUN/#VMEXIT round trip spends its time (workload 3, world_switch.S).

Two views, both on the same image:
  * a step breakdown: the world-switch steps of svm_ext are wrapped, for this run only, in a
    timer (wrapper overhead calibrated and subtracted); inclusive microseconds per round trip,
    and what is left (Unicorn running L1/L2 code, the hook dispatch, emu_start/stop) as the rest;
  * cProfile's own-time top list, for the functions the breakdown does not name.
Nothing in emu/ or svm_ext/ is changed: the wrappers replace module attributes and are removed.
"""
from __future__ import annotations

import cProfile
import importlib
import io
import pstats
import time
from pathlib import Path
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from emu.loader.multiboot import parse_image
from emu.core.machine import Machine
from svm_ext.extension import SvmExtension

from bench import workloads
from bench.runners import RAM, guarded_run


@dataclass
class Step:
    name: str            # as shown, indented by depth
    depth: int
    calls: int
    seconds: float       # inclusive, wrapper overhead removed


class _Timers:
    def __init__(self) -> None:
        self.calls: dict[str, int] = {}
        self.seconds: dict[str, float] = {}

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        calls, seconds, clock = self.calls, self.seconds, time.perf_counter
        calls[name], seconds[name] = 0, 0.0

        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = clock()
            try:
                return fn(*args, **kwargs)
            finally:
                seconds[name] += clock() - t0
                calls[name] += 1
        return timed


@contextmanager
def _patched(obj: Any, attr: str, timers: _Timers, name: str) -> Iterator[None]:
    own = attr in vars(obj)          # a module global, or an instance's own attribute
    old = getattr(obj, attr)
    setattr(obj, attr, timers.wrap(name, old))
    try:
        yield
    finally:
        if own:
            setattr(obj, attr, old)
        else:
            delattr(obj, attr)       # a bound method shadowed on the instance: unshadow it


# (label, depth, where the function lives, attribute), in the order a round trip runs them.
# "mod:NAME" is a module, patched before the machine is built (the extension binds its VMRUN
# handler when it attaches); "ext", "steps", "pat", "ctx" and "machine" name the run's instances. A step
# whose function does not exist in the tree being measured is left out, so the profile follows
# the code as it changes.
_STEPS: list[tuple[str, int, str, str]] = [
    ("on_exit: L2's exit reaches L0 (router)", 0, "ext", "on_exit"),
    ("intercepts.l1_wants", 1, "mod:svm_ext.intercepts", "l1_wants"),
    ("next_rip (decode for NRIP)", 1, "ext", "next_rip"),
    ("vmexit (#VMEXIT to L1)", 1, "mod:svm_ext.vmexit", "vmexit"),
    ("switch_cache.store_guest", 2, "steps", "store_guest"),
    ("store_guest (full)", 3, "mod:svm_ext.vmexit", "store_guest"),
    ("store_exit_info", 2, "mod:svm_ext.vmexit", "store_exit_info"),
    ("vintr.store", 2, "mod:svm_ext.vintr", "store"),
    ("pat.on_vmexit", 2, "pat", "on_vmexit"),
    ("switch_cache.restore_host", 2, "steps", "restore_host"),
    ("restore_host (full)", 3, "mod:svm_ext.vmexit", "restore_host"),
    ("restore_host_volatile", 3, "mod:svm_ext.vmexit", "restore_host_volatile"),
    ("flush_tlb (#VMEXIT)", 4, "mod:svm_ext.vmexit", "flush_tlb"),
    ("world_changed (observers)", 2, "machine", "world_changed"),
    ("vmrun: L1's VMRUN reaches L0", 0, "mod:svm_ext.vmrun", "vmrun"),
    ("check_instruction", 1, "mod:svm_ext.vmrun", "check_instruction"),
    ("read_vmcb12", 1, "mod:svm_ext.vmrun", "read_vmcb12"),
    ("save_host_state", 1, "mod:svm_ext.vmrun", "save_host_state"),
    ("checks.run_checks", 1, "mod:svm_ext.checks", "run_checks"),
    ("switch_cache.load_guest", 1, "steps", "load_guest"),
    ("load_guest (full)", 2, "mod:svm_ext.vmrun", "load_guest"),
    ("build_vmcb02", 3, "mod:svm_ext.vmrun", "build_vmcb02"),
    ("flush_tlb (VMRUN, full load)", 3, "mod:svm_ext.vmrun", "flush_tlb"),
    ("flush_tlb (VMRUN, replayed load)", 2, "mod:svm_ext.switch_cache", "flush_tlb"),
    ("pat.on_vmrun", 1, "pat", "on_vmrun"),
    ("vintr.on_vmrun", 1, "mod:svm_ext.vintr", "on_vmrun"),
    ("ctx.save = context_update (all callers)", 0, "ctx", "save"),
    ("ctx.restore = context_restore (all callers)", 0, "ctx", "restore"),
]


def _module(where: str) -> Any | None:
    try:
        return importlib.import_module(where[4:])
    except ImportError:
        return None


# What each part is, and what would remove its cost (written against the code of 2026-11-25,
# commit 599e08c; RESULTS.md shows them next to the measured shares).
REMEDY = {
    "on_exit: L2's exit reaches L0 (router)":
        "runs for every exit (L1's own VMRUN too, returning at once) and saves the context; "
        "next_rip and vmexit save it again: one save per exit, passed down, drops two copies",
    "intercepts.l1_wants":
        "MSR exits read one MSRPM byte through read_phys; cheap",
    "next_rip (decode for NRIP)":
        "another context save, then the instruction bytes at RIP: without nested paging "
        "Unicorn's debug translation (C), with it memory.read_code walks guest and nested "
        "tables in Python (paging.walk_2d): the largest cost of workload 4. Remove: keep the "
        "last code-page translation per (CR3, nCR3, paging mode) and revalidate it by "
        "re-reading the few entries on its path, or read the bytes only when the exit code's "
        "instruction can carry prefixes",
    "switch_cache.store_guest":
        "a hit builds two keys by joining ~10 memoryview slices (regions_of, _vmcb_bytes) and "
        "writes the volatile fields; comparing the slices in place would avoid the joins",
    "store_exit_info": "four exit fields, NRIP, EVENTINJ: a few pack_into calls",
    "vintr.store": "V_IRQ/V_TPR and the interrupt shadow as two packed words; cheap",
    "switch_cache.restore_host":
        "a hit rebuilds its key from L1's saved blob (regions_of joins 7 slices) every exit; "
        "the key can only change when save_host_state stores a new blob: compute it there",
    "restore_host_volatile":
        "RIP/RAX/RSP into the blob, context_restore, a register batch for RFLAGS/DR7, a TLB "
        "flush: all needed; the flush is the only part Unicorn could make cheaper (no ASID tags)",
    "flush_tlb (#VMEXIT)":
        "needed: Unicorn's softmmu TLB is not tagged by ASID; only a tagged TLB (a Unicorn "
        "change) removes it",
    "flush_tlb (VMRUN, replayed load)": "as for #VMEXIT",
    "flush_tlb (VMRUN, full load)": "as for #VMEXIT",
    "check_instruction": "rAX from the saved context, alignment and range checks; cheap",
    "read_vmcb12": "one Struct unpack of the whole VMCB into a named tuple",
    "save_host_state":
        "bytes() copies the ~6 KiB context blob and a register batch reads RFLAGS; copying "
        "into a preallocated bytearray avoids the allocation",
    "checks.run_checks": "the consistency checks as pure predicates; cheap",
    "switch_cache.load_guest":
        "a hit joins the vmcb12 key (_vmcb_bytes: ~8 slices of guest RAM) and the context "
        "regions, then replays; comparing slices in place would avoid the joins",
    "vintr.on_vmrun":
        "V_IRQ/V_TPR from one word, CR8 ownership, and an interrupt check (which returns at "
        "once when nothing is pending)",
    "pat.on_vmrun": "the PAT model's VMRUN step (architectural: load gPAT); cheap",
    "pat.on_vmexit": "the PAT model's #VMEXIT step (store gPAT to g_pat); cheap",
    "world_changed (observers)": "trace/observer callbacks; cheap when none is registered",
    "ctx.save = context_update (all callers)":
        "~5 per round trip (on_exit, next_rip, vmexit, vmrun, ...), each a 6 KiB memcpy plus a "
        "ctypes call; 2 are needed (one per exit) if the saved Context is passed down",
    "ctx.restore = context_restore (all callers)": "2 per round trip: needed",
}


def _machine(image: bytes) -> tuple[Machine, SvmExtension]:
    ext = SvmExtension()
    m = Machine(RAM, stdout=None, extensions=[ext])
    if m.replay is not None:      # profile the Python path: replayed switches never reach it
        m.replay.enabled = False
    m.load_multiboot(parse_image(image, "bench.bin", RAM), "bench.bin ")
    return m, ext


def _calibrate(timers: _Timers) -> float:
    """Seconds one wrapper adds around a call (subtracted from every inclusive time)."""
    def nothing() -> None:
        return None
    probe = _Timers()
    f = probe.wrap("x", nothing)
    n = 50_000
    t0 = time.perf_counter()
    for _ in range(n):
        f()
    wrapped = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(n):
        nothing()
    bare = time.perf_counter() - t0
    return max(0.0, (wrapped - bare) / n)


def breakdown(iters: int, key: str = "switch") -> tuple[float, list[Step], float]:
    """(µs per round trip unwrapped, steps, µs per round trip with wrappers) for workload `key`
    (a round-trip workload, with the architectural PAT model)."""
    w = workloads.by_key(key)
    image = workloads.build(w, iters)
    base = workloads.build(w, 1)
    # Unwrapped cost, for reference.
    t_n = min(_timed_run(image)[0] for _ in range(2))
    t_1 = min(_timed_run(base)[0] for _ in range(2))
    plain = (t_n - t_1) / (iters - 1)
    timers = _Timers()
    present = []
    with ExitStack() as stack:
        for step in _STEPS:
            label, _, where, attr = step
            obj = _module(where) if where.startswith("mod:") else None
            if obj is not None and hasattr(obj, attr):
                stack.enter_context(_patched(obj, attr, timers, label))
                present.append(step)
        m, ext = _machine(image)
        named = {"ext": ext, "steps": ext.steps, "pat": ext.pat, "ctx": m.ctx, "machine": m}
        for step in _STEPS:
            label, _, where, attr = step
            if where in named and hasattr(named[where], attr):
                stack.enter_context(_patched(named[where], attr, timers, label))
                present.append(step)
        t0 = time.perf_counter()
        res = guarded_run(m)
        total = time.perf_counter() - t0
        out = bytes(m.serial.output).decode("utf-8", "replace")
        problem = workloads.completed(res.status, out, w.checks)
        if problem:
            raise RuntimeError(f"profiled run broken: {problem}")
    overhead = _calibrate(timers)
    # Nested wrappers: a step's inclusive time also holds its children's wrapper overhead.
    steps = []
    for label, depth, _, _ in sorted(present, key=_STEPS.index):
        calls = timers.calls[label]
        steps.append(Step(label, depth, calls, max(0.0, timers.seconds[label] - calls * overhead)))
    return plain * 1e6, steps, total / iters * 1e6


def _timed_run(image: bytes) -> tuple[float, str]:
    """CPU seconds of one run (as bench/runners.py measures svmemu)."""
    m, _ = _machine(image)
    t0 = time.process_time()
    guarded_run(m)
    return time.process_time() - t0, bytes(m.serial.output).decode()


def cprofile_top(iters: int, limit: int = 25, key: str = "switch") -> str:
    """cProfile's top functions by own time for `iters` round trips of workload `key` (inflated
    by the profiler; read it for proportions)."""
    image = workloads.build(workloads.by_key(key), iters)
    m, _ = _machine(image)
    prof = cProfile.Profile()
    prof.enable()
    guarded_run(m)
    prof.disable()
    buf = io.StringIO()
    stats = pstats.Stats(prof, stream=buf)
    stats.sort_stats("tottime").print_stats(limit)
    lines = [line for line in buf.getvalue().splitlines() if line.strip()]
    start = next(i for i, line in enumerate(lines) if line.lstrip().startswith("ncalls"))
    text = "\n".join(lines[start:]).replace(str(Path(__file__).resolve().parents[1]) + "/", "")
    return text.replace(str(Path(pstats.__file__).parent) + "/", "").replace(
        str(Path(importlib.import_module("unicorn").__file__).parents[1]) + "/", "")
