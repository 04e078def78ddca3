"""AFL++ through unicornafl, in persistent mode with our own run loop per input.

`svmemu fuzz` (the parent) runs `afl-fuzz -U ... -- python -m emu.cli fuzz ... --afl-child @@`.
The child prepares the machine up to its reset point, then hands control to unicornafl's
`uc_afl_fuzz_custom`: its fork server forks the prepared process, and in each child calls our
place-input callback (reset + write the input) and our fuzz callback (the machine's whole run
loop: many `emu_start` calls, exception delivery, world switches) once per input, for
`persistent_iters` inputs before forking afresh. unicornafl adds its edge-coverage hooks in C,
so coverage costs no Python. A crash is reported by returning a Unicorn error from the fuzz
callback (the code itself means nothing here).
"""
from __future__ import annotations

import os
import shutil
import sys
from typing import TYPE_CHECKING

from ..errors import OptionError

if TYPE_CHECKING:
    from .harness import Harness

UC_ERR_OK = 0
UC_ERR_EXCEPTION = 21          # what the fuzz callback returns for a crash


def load_unicornafl():
    """unicornafl 2.1.0's loader still uses `distutils.sysconfig` without importing it."""
    try:
        import distutils.sysconfig
        import unicornafl
        del distutils.sysconfig
    except ImportError as e:
        raise OptionError(f"fuzzing with AFL++ needs unicornafl (pip install 'svmemu[fuzz]'): {e}")
    return unicornafl


def afl_fuzz_path() -> str | None:
    return shutil.which("afl-fuzz")


def run_child(harness: "Harness", input_file: str, persistent_iters: int) -> int:
    """The forkserver side: never returns while AFL drives it."""
    ucafl = load_unicornafl()
    verdicts = {"crashes": 0}

    def place(uc, data, persistent_round, _user) -> bool:
        harness.prepare_input(bytes(data))
        return True

    def fuzz(uc, _user) -> int:
        try:
            verdict = harness.execute()
        except Exception as e:      # a bug in svmemu: report it as a crash AFL keeps
            print(f"svmemu: internal error during an input: {type(e).__name__}: {e}",
                  file=sys.stderr)
            return UC_ERR_EXCEPTION
        if verdict.crashed:
            verdicts["crashes"] += 1
            return UC_ERR_EXCEPTION
        return UC_ERR_OK

    try:
        ucafl.uc_afl_fuzz_custom(harness.machine.uc, input_file, place, fuzz,
                                 persistent_iters=persistent_iters)
    except ucafl.UcAflError as e:
        if e.errno == ucafl.UC_AFL_RET_NO_AFL:    # run by hand, not under afl-fuzz
            return 1 if verdicts["crashes"] else 0
        raise OptionError(f"unicornafl: {e}")
    return 0


def afl_command(afl: str, seeds: str, out: str, child_argv: list[str], *, duration: int | None,
                timeout_ms: int | None, extra: list[str]) -> list[str]:
    cmd = [afl, "-U", "-i", seeds, "-o", out]
    if duration:
        cmd += ["-V", str(duration)]
    if timeout_ms:
        cmd += ["-t", str(timeout_ms)]
    cmd += extra
    return cmd + ["--", sys.executable, "-m", "emu.cli", *child_argv, "--afl-child", "@@"]


def afl_environment() -> dict[str, str]:
    env = dict(os.environ)
    # Containers rarely let us tune the CPU governor or core_pattern; neither matters here.
    env.setdefault("AFL_SKIP_CPUFREQ", "1")
    env.setdefault("AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES", "1")
    env.setdefault("AFL_NO_AFFINITY", "1")
    # The child is python: no AFL instrumentation to find in its binary.
    env.setdefault("AFL_SKIP_BIN_CHECK", "1")
    return env
