"""AFL++ through unicornafl, in persistent mode with our own run loop per input.

`svmemu fuzz` (the parent) runs `afl-fuzz -U ... -- python -m emu.cli fuzz ... --afl-child @@`.
The child prepares the machine up to its reset point, then hands control to unicornafl's
`uc_afl_fuzz_custom`: its fork server forks the prepared process, and in each child calls our
place-input callback (reset + write the input) and our fuzz callback (the machine's whole run
loop: many `emu_start` calls, exception delivery, world switches) once per input, for
`persistent_iters` inputs before forking afresh. unicornafl adds its edge-coverage hooks in C,
A crash is reported by returning a Unicorn error from the fuzz callback (the code itself means
nothing here).

Coverage: unicornafl 2.1.0's own block-coverage hook cannot be used. Its edge index is a 32-bit
hash that is never reduced to AFL's 64 KiB map (measured: block 0x100000 -> index 0x9782a23c), so
the first block segfaults the child and AFL calls every seed a crash; its compare-coverage hooks
XOR that same unreduced value in. So each forked child removes unicornafl's block hook from
Unicorn's hook list (found by our own marker hook: the C library hands out no handle) and records
edges itself, AFL-style, into the same shared map with a block hook of its own
(emu/engine/edge_coverage.py: in C when the extension is built, else one Python call per
executed block). With the block hook gone, the compare hooks index within the map again
and keep splitting multi-byte comparisons for AFL.
"""
from __future__ import annotations

import ctypes
import os
import shutil
import struct
import sys
from typing import TYPE_CHECKING

from emu.engine import binding
from emu.engine.edge_coverage import EdgeCoverage
from emu.errors import OptionError

if TYPE_CHECKING:
    from emu.tools.fuzz.harness import Harness

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


MAP_SIZE = 1 << 16             # AFL++'s default coverage map, the size unicornafl clears
_SHM_ENV = "__AFL_SHM_ID"
_SCAN = 1 << 16                # how much of Unicorn's uc_struct to search for the hook lists


class AflCoverage:
    """AFL's shared map, filled by the engine's edge-coverage block hook (in C when built:
    emu/engine/edge_coverage.py), replacing unicornafl's (see the docstring)."""

    def __init__(self, uc, shm_id: int) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.shmat.restype = ctypes.c_void_p
        libc.shmat.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
        addr = libc.shmat(shm_id, None, 0)
        if addr in (None, ctypes.c_void_p(-1).value):
            raise OptionError(f"cannot attach AFL's coverage map (shm {shm_id})")
        self.uc = uc
        self.edges = EdgeCoverage(uc, addr, MAP_SIZE)
        self._list = _find_hook_list(uc, self.edges.handle)
        self._pid = 0

    def new_input(self) -> None:
        """Per input: a fresh edge chain; once per forked child: drop unicornafl's block hook."""
        self.edges.new_input()
        pid = os.getpid()
        if pid != self._pid:
            self._pid = pid
            _remove_other_hooks(self.uc, self._list, keep=self.edges.handle)


def _reader():
    fd = os.open("/proc/self/mem", os.O_RDONLY)

    def read_u64(addr: int) -> int | None:
        if not 0 < addr < 1 << 63:
            return None
        try:
            data = os.pread(fd, 8, addr)
        except OSError:
            return None
        return struct.unpack("<Q", data)[0] if len(data) == 8 else None
    return fd, read_u64


def _find_hook_list(uc, handle: int) -> int:
    """Address of the {head, tail} list in uc_struct that holds `handle` (our only block hook),
    found by content: list items are {next, hook}, and a handle is its hook's address. Reads
    go through /proc/self/mem, so a stray value is a failed read, never a fault."""
    base = binding.handle_address(uc)
    fd, read_u64 = _reader()
    try:
        blob = os.pread(fd, _SCAN, base)
        for off in range(0, len(blob) - 16, 8):
            head, tail = struct.unpack_from("<QQ", blob, off)
            if head and head == tail and read_u64(head + 8) == handle:
                return base + off
    finally:
        os.close(fd)
    raise OptionError("cannot find Unicorn's block-hook list (unicorn other than 2.1.4?)")


def _remove_other_hooks(uc, list_addr: int, keep: int) -> None:
    fd, read_u64 = _reader()
    try:
        item = read_u64(list_addr)
        others = []
        while item:
            hook = read_u64(item + 8)
            if hook and hook != keep:
                others.append(hook)
            item = read_u64(item)
    finally:
        os.close(fd)
    for hook in others:
        binding.del_hook_raw(uc, hook)


def run_child(harness: "Harness", input_file: str, persistent_iters: int) -> int:
    """The forkserver side: never returns while AFL drives it."""
    ucafl = load_unicornafl()
    verdicts = {"crashes": 0}
    shm = os.environ.get(_SHM_ENV)
    coverage = AflCoverage(harness.machine.uc, int(shm)) if shm else None

    def place(uc, data, persistent_round, _user) -> bool:
        if coverage is not None:
            coverage.new_input()
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
