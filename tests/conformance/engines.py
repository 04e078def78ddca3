"""The two engines' command lines, and running one of them under a time limit."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from . import outcome

QEMU_BINARY = "qemu-system-x86_64"
DEFAULT_CPU = "qemu64"
DEFAULT_MEMORY_MIB = 128          # QEMU's default, and what the harness passes when -m is absent
# svmemu's RAM lies below the 4 GiB hole (README: `-m` up to 3072 MiB); larger requests are capped.
SVMEMU_MAX_MEMORY_MIB = 3072
# The devices kvm-unit-tests' own runner (x86/run) adds to QEMU's pc machine: pc-testdev (its
# ports and the iomem window at 0xFF000000) and the exit port. svmemu's PC has both built in.
QEMU_DEVICES = ("pc-testdev", "isa-debug-exit,iobase=0xf4,iosize=4")
# Extra wall time past svmemu's own --timeout before the process is killed.
KILL_GRACE_S = 10.0


@dataclass(frozen=True)
class Run:
    """One kernel run: a cfg entry, or one test of svm.flat/svm_npt.flat alone."""
    id: str                 # "eventinj", "svm.flat:vmrun"
    kernel: Path
    append: str
    cpu: str | None
    memory: str | None
    timeout: float
    entry: str              # the cfg entry whose options it uses
    args_key: str = ""      # test_args before expansion (the QEMU cache key)
    smp: int = 1            # the entry's CPU count (-smp)

    def memory_mib(self) -> int:
        return memory_mib(self.memory)


def memory_mib(value: str | None) -> int:
    """QEMU's -m syntax: a number in MiB or with a k/M/G/T suffix."""
    if not value:
        return DEFAULT_MEMORY_MIB
    m = re.fullmatch(r"(\d+)([kKmMgGtT]?)[bB]?", value.strip())
    if not m:
        raise ValueError(f"cannot read -m {value!r}")
    n = int(m.group(1))
    scale = {"": 1, "m": 1, "g": 1024, "t": 1024 * 1024, "k": 1 / 1024}[m.group(2).lower()]
    return max(1, int(n * scale))


def svmemu_command(run: Run, svmemu: list[str], cpu: str | None = None) -> list[str]:
    """`cpu`: what svmemu accepts of the entry's -cpu (see svmemu_cpu); -smp is the entry's."""
    mib = min(run.memory_mib(), SVMEMU_MAX_MEMORY_MIB)
    cmd = [*svmemu, "run", str(run.kernel), "-m", f"{mib}M", "--timeout", f"{run.timeout:g}"]
    if run.smp > 1:
        cmd += ["-smp", str(run.smp)]
    if cpu:
        cmd += ["--cpu", cpu]
    if run.append:
        cmd += ["--append", run.append]
    return cmd


SVMEMU_DEFAULT_MODEL = "EPYC"
_CPU_REFUSALS = (
    (re.compile(r"unknown CPU model '([^']+)'"), "model"),
    (re.compile(r"CPU feature '([^']+)' is not implemented"), "feature"),
    (re.compile(r"unknown CPU feature '([^']+)'"), "feature"),
    (re.compile(r"bad CPU feature '([^']+)'"), "token"),
)
_cpu_cache: dict[tuple[str, tuple[str, ...]], tuple[str | None, list[str]]] = {}
_cpu_lock = threading.Lock()


def svmemu_cpu(cpu: str | None, svmemu: list[str], kernel: Path
               ) -> tuple[str | None, list[str]]:
    """The entry's -cpu as svmemu takes it: QEMU's model and features, minus what svmemu refuses
    (asked of svmemu itself, one refusal at a time, so it follows what svmemu implements).
    Returns (the -cpu to pass, the parts dropped)."""
    if not cpu:
        return None, []
    key = (cpu, tuple(svmemu))
    with _cpu_lock:
        if key in _cpu_cache:
            return _cpu_cache[key]
        model, *features = cpu.split(",")
        dropped: list[str] = []
        for _ in range(len(features) + 2):
            text = ",".join([model, *features])
            proc = subprocess.run([*svmemu, "run", str(kernel), "--cpu", text, "--max-insns", "1",
                                   "-q"], capture_output=True, text=True, env=svmemu_env())
            if proc.returncode != outcome.SVMEMU_BAD_INPUT:
                break
            for pattern, kind in _CPU_REFUSALS:
                m = pattern.search(proc.stderr)
                if not m:
                    continue
                name = m.group(1)
                if kind == "model":
                    dropped.append(model)
                    model = SVMEMU_DEFAULT_MODEL
                else:
                    gone = [f for f in features
                            if f == name or f.lstrip("+-").split("=")[0] == name]
                    dropped += gone
                    features = [f for f in features if f not in gone]
                break
            else:
                break            # refused for another reason: let the run itself say so
        result = (",".join([model, *features]), dropped)
        _cpu_cache[key] = result
        return result


def qemu_command(run: Run) -> list[str]:
    cmd = [QEMU_BINARY, "-accel", "tcg", "-cpu", run.cpu or DEFAULT_CPU,
           "-m", str(run.memory_mib()), "-smp", str(run.smp), "-kernel", str(run.kernel),
           *(arg for dev in QEMU_DEVICES for arg in ("-device", dev)), "-display", "none",
           "-serial", "stdio", "-no-reboot", "-nodefaults"]
    if run.append:
        cmd += ["-append", run.append]
    return cmd


@dataclass
class Raw:
    status: int
    stdout: str
    stderr: str
    timed_out: bool
    seconds: float


def svmemu_env() -> dict[str, str]:
    """The environment svmemu runs in: ours, but bytecode caching on.  The runner starts svmemu
    a hundred times; with PYTHONDONTWRITEBYTECODE set each start compiles every module again
    (about 1.3 s of a 3 s svm.flat run), so the children may write their __pycache__."""
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def execute(cmd: list[str], timeout: float, cwd: Path | None = None,
            env: dict[str, str] | None = None) -> Raw:
    """Run in a process group of its own so that a time limit kills everything it started."""
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, start_new_session=True, cwd=cwd, env=env)
    timed_out = False
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        out, err = proc.communicate()
    return Raw(proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"),
               timed_out, time.monotonic() - start)


def run_svmemu(run: Run, svmemu: list[str], with_cpu: bool = True) -> outcome.Outcome:
    cpu, dropped = svmemu_cpu(run.cpu, svmemu, run.kernel) if with_cpu else (None, [])
    raw = execute(svmemu_command(run, svmemu, cpu), run.timeout + KILL_GRACE_S, env=svmemu_env())
    out = outcome.classify_svmemu(raw.status, raw.stdout, raw.stderr, raw.timed_out)
    out.seconds = raw.seconds
    out.cpu_dropped = ",".join(dropped)
    return out


def run_qemu(run: Run) -> outcome.Outcome:
    raw = execute(qemu_command(run), run.timeout)
    out = outcome.classify_qemu(raw.status, raw.stdout, raw.stderr, raw.timed_out)
    out.seconds = raw.seconds
    return out
