"""The benchmark workloads: one assembly source each (bench/guests/), built with a given iteration
count by svmemu's own assembler, so svmemu, raw Unicorn and QEMU run exactly the same bytes.

Every workload image reports through the guest prelude: TAP lines on COM1, then isa-debug-exit
with 0 when all its checks passed. A run counts only if it ended that way with the expected
number of checks (see `completed`); anything else is reported as broken, never timed.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from emu.loader.asm import GUESTS_DIR, assemble_text

BENCH_GUESTS = Path(__file__).resolve().parent / "guests"
MASK64 = (1 << 64) - 1
EXIT_PASS_STATUS = 1         # isa-debug-exit value 0 -> process status (0 << 1) | 1


@dataclass(frozen=True)
class Workload:
    key: str                 # --only name
    title: str               # table row
    source: str              # file in bench/guests/
    full: int                # iterations for the real run
    quick: int               # iterations for --quick
    unit: str                # what one iteration is
    checks: int              # TAP checks the guest prints when it passes
    nested: bool             # uses SVM (raw Unicorn cannot run it without svmemu)
    pat_models: tuple[str, ...] = ("architectural",)


WORKLOADS: tuple[Workload, ...] = (
    Workload("l1", "L1 ALU loop (4 insns/iter)", "l1_loop.S", 100_000_000, 5_000_000,
             "iteration", 2, False),
    Workload("l2", "L2 ALU loop under NPT", "l2_loop.S", 100_000_000, 5_000_000,
             "iteration", 4, True),
    Workload("memloop", "L1 memory loop (1 load + 2 stores/iter)", "mem_loop.S", 50_000_000,
             2_000_000, "iteration", 3, False),
    Workload("switch", "VMRUN/#VMEXIT round trip (VMMCALL)", "world_switch.S", 200_000, 5_000,
             "round trip", 2, True),
    Workload("msr", "round trip, L1-intercepted RDMSR(PAT), NPT", "world_switch_msr.S", 200_000,
             5_000, "round trip", 3, True, ("architectural", "swap", "shared")),
)


def by_key(key: str) -> Workload:
    for w in WORKLOADS:
        if w.key == key:
            return w
    raise KeyError(key)


def _substitutions(iters: int) -> dict[str, int]:
    return {"@ITERS@": iters, "@SUM@": (iters * (iters + 1) // 2) & MASK64, "@X3@": 3 * iters}


@lru_cache(maxsize=None)
def build_source(source: str, **values: int) -> bytes:
    """The multiboot image of bench/guests/`source` with each @NAME@ replaced by values[NAME]."""
    path = BENCH_GUESTS / source
    text = path.read_text()
    for name, value in values.items():
        text = text.replace(f"@{name}@", str(value))
    if "@" in text.replace("\\@", ""):
        raise ValueError(f"{source}: a placeholder was left unsubstituted")
    return assemble_text(text, str(path), [str(BENCH_GUESTS), str(GUESTS_DIR)]).image


def build(w: Workload, iters: int) -> bytes:
    subs = _substitutions(iters)
    return build_source(w.source, **{k.strip("@"): v for k, v in subs.items()})


def build_memtouch(ram_size: int) -> bytes:
    """A guest that writes every page of its RAM above 4 MiB (up to 4 MiB below the top)."""
    top = ram_size - (4 << 20)
    return build_source("memtouch.S", TOP=top, PAGES=(top - (4 << 20)) // 0x1000)


def completed(status: int, output: str, checks: int) -> str | None:
    """None when the run ended as a passing guest does, else why it did not."""
    if f"# pass {checks} fail 0" not in output:
        tail = " | ".join(output.strip().splitlines()[-3:])
        return f"no '# pass {checks} fail 0' line (status {status}; output ends: {tail!r})"
    if status != EXIT_PASS_STATUS:
        return f"exit status {status}, want {EXIT_PASS_STATUS}"
    return None
