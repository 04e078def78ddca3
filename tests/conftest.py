"""Shared test helpers.  QEMU part: run a guest image on qemu-system-x86_64, the reference every
guest is checked against, and read the TAP lines the guest prelude prints."""
from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

import emu  # noqa: F401  (first: chooses the Unicorn engine before any test module imports unicorn)

QEMU = shutil.which("qemu-system-x86_64")
QEMU_MACHINE = ["-accel", "tcg", "-cpu", "qemu64,+svm,+npt", "-m", "128", "-serial", "stdio",
                "-display", "none", "-no-reboot", "-device", "isa-debug-exit,iobase=0xf4,iosize=4"]


@dataclass
class QemuRun:
    status: int          # QEMU's exit status: (v << 1) | 1 after isa-debug-exit, 0 on shutdown
    output: str          # the guest's serial output
    timed_out: bool


@dataclass
class TapLine:
    ok: bool
    number: int
    name: str
    detail: str          # "got 0x.. want 0x.." on failure


_TAP = re.compile(r"^(not )?ok (\d+) - (.*?)(?:: (got .*))?$")


def parse_tap(output: str) -> dict[str, TapLine]:
    """TAP check lines by name (names are unique within a guest)."""
    lines: dict[str, TapLine] = {}
    for raw in output.splitlines():
        m = _TAP.match(raw.rstrip("\r"))
        if m:
            name = m.group(3)
            assert name not in lines, f"duplicate check name {name!r}"
            lines[name] = TapLine(m.group(1) is None, int(m.group(2)), name, m.group(4) or "")
    return lines


def run_qemu(image: Path, append: str | None = None, timeout: float = 10.0,
             kernel_arg: str | None = None, cwd: Path | None = None,
             extra: list[str] | None = None) -> QemuRun:
    """Boot ``image`` with -kernel (``kernel_arg`` is the path as typed, default the full path;
    ``extra``: more QEMU options, e.g. devices a guest needs)."""
    assert QEMU is not None
    cmd = [QEMU, *QEMU_MACHINE, *(extra or []), "-kernel", kernel_arg or str(image)]
    if append is not None:
        cmd += ["-append", append]
    try:
        p = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout,
                           cwd=cwd)
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode("utf-8", "replace") if e.stdout else ""
        return QemuRun(-1, out, True)
    return QemuRun(p.returncode, p.stdout.decode("utf-8", "replace"), False)


@pytest.fixture
def qemu() -> Callable[..., QemuRun]:
    """run_qemu, or a skip when QEMU is not installed."""
    if QEMU is None:
        pytest.skip("qemu-system-x86_64 is not on PATH; QEMU comparisons skipped")
    return run_qemu


@pytest.fixture
def tap() -> Callable[[str], dict[str, TapLine]]:
    return parse_tap
