"""Run one image on svmemu, on raw Unicorn, or on QEMU TCG, and time it.

Each runner returns a `Run`: the seconds measured, the process-style exit status and the serial
output, so the caller can check the guest completed before trusting the time. What is timed, in
CPU seconds (user + system), because the machines this runs on are shared and wall time there
measures the neighbours as much as us:
  svmemu       Machine.run() in this process (image already loaded);
  raw Unicorn  emu_start() of a bare UC_MODE_32 instance on the same RAM contents;
  QEMU         the whole qemu-system-x86_64 process, all its threads (wait4's rusage).
Boot costs differ between them, which is why run.py subtracts a 1-iteration build of each image.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass

from unicorn import Uc, UC_ARCH_X86, UC_HOOK_INSN, UC_MODE_32
from unicorn.x86_const import UC_X86_INS_IN, UC_X86_INS_OUT, UC_X86_REG_EAX, UC_X86_REG_EBX

from emu.loader.multiboot import MBI_ADDR, build_mbi, parse_image
from emu.core.machine import MULTIBOOT_MAGIC, STATUS_LIMIT, Machine, RunResult
from svm_ext.extension import SvmExtension

RAM = 128 << 20
QEMU = shutil.which("qemu-system-x86_64")
QEMU_ARGS = ["-accel", "tcg", "-cpu", "qemu64,+svm,+npt", "-m", "128", "-display", "none",
             "-no-reboot", "-serial", "stdio", "-device", "isa-debug-exit,iobase=0xf4,iosize=4"]
COM1, COM1_LSR, DEBUG_EXIT_PORT = 0x3F8, 0x3FD, 0xF4
LSR_THRE_TEMT = 0x60


@dataclass
class Run:
    seconds: float       # CPU seconds
    status: int
    output: str


@dataclass
class Child:
    cpu: float           # user + system seconds of the child (all its threads)
    wall: float
    status: int          # -1 if it was killed at the timeout
    output: str          # stdout
    max_rss_kib: int


def child(cmd: list[str], timeout: float = 600.0, cwd: str | None = None) -> Child:
    """Run a process to its end and return what wait4 says about it."""
    with tempfile.TemporaryFile() as out:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out,
                             stderr=subprocess.DEVNULL, cwd=cwd)
        killer = threading.Timer(timeout, p.kill)
        killer.start()
        try:
            _, wstatus, usage = os.wait4(p.pid, 0)
        finally:
            killer.cancel()
        wall = time.perf_counter() - t0
        status = os.waitstatus_to_exitcode(wstatus)
        p.returncode = status          # reaped here: keep Popen from waiting again
        out.seek(0)
        text = out.read().decode("utf-8", "replace")
    if status < 0:
        status, text = -1, text + "\n(killed: timed out or signalled)"
    return Child(usage.ru_utime + usage.ru_stime, wall, status, text, usage.ru_maxrss)


def guarded_run(m: Machine, timeout: float = 600.0) -> RunResult:
    """`m.run()` as `svmemu run` does it by default (no --timeout), with a watchdog thread that
    stops a hung run. Not `run(timeout=...)`: Unicorn implements an emu_start timeout with a
    second thread that polls, which costs the L1 loop ~1.7x in CPU time (measured; see
    RESULTS.md) and would be timed with the guest."""
    dog = threading.Timer(timeout, m.stop, ("timeout", STATUS_LIMIT,
                                            f"bench watchdog: {timeout} s"))
    dog.daemon = True
    dog.start()
    try:
        return m.run()
    finally:
        dog.cancel()


def svmemu(image: bytes, pat_model: str = "architectural", ram: int = RAM,
           timeout: float = 600.0) -> Run:
    m = Machine(ram, stdout=None, extensions=[SvmExtension(pat_model=pat_model)])
    m.load_multiboot(parse_image(image, "bench.bin", ram), "bench.bin ")
    t0 = time.process_time()
    res = guarded_run(m, timeout)
    t = time.process_time() - t0
    return Run(t, res.status, bytes(m.serial.output).decode("utf-8", "replace"))


def raw_unicorn(image: bytes, ram: int = RAM) -> Run:
    """The same bytes on a bare Unicorn: multiboot state (32-bit flat protected mode, EAX/EBX),
    RAM mapped, and only what a guest needs to talk: COM1 (always ready) and isa-debug-exit as
    IN/OUT instruction hooks, which cost nothing on code that does no port I/O. No SVM, no
    intercepts, no exception delivery: fine for code that takes none."""
    boot = parse_image(image, "bench.bin", ram)
    uc = Uc(UC_ARCH_X86, UC_MODE_32)
    uc.mem_map(0, ram)
    for addr, data in boot.segments:
        uc.mem_write(addr, bytes(data))
    uc.mem_write(MBI_ADDR, build_mbi(ram, "bench.bin ", MBI_ADDR))
    uc.reg_write(UC_X86_REG_EAX, MULTIBOOT_MAGIC)
    uc.reg_write(UC_X86_REG_EBX, MBI_ADDR)
    out = bytearray()
    status = [-1]

    def on_in(uc: Uc, port: int, size: int, _data: object) -> int:
        return LSR_THRE_TEMT if port == COM1_LSR else 0xFFFFFFFF >> (32 - 8 * size)

    def on_out(uc: Uc, port: int, size: int, value: int, _data: object) -> None:
        if port == COM1:
            out.append(value & 0xFF)
        elif port == DEBUG_EXIT_PORT:
            status[0] = ((value & 0xFFFFFFFF) << 1) | 1
            uc.emu_stop()

    hooks = [uc.hook_add(UC_HOOK_INSN, on_in, None, 1, 0, UC_X86_INS_IN),
             uc.hook_add(UC_HOOK_INSN, on_out, None, 1, 0, UC_X86_INS_OUT)]
    t0 = time.process_time()
    try:
        uc.emu_start(boot.entry, 0xFFFFFFFF)
    except Exception as e:   # a broken run is reported, not timed
        out += f"\nraw unicorn stopped: {e}\n".encode()
    t = time.process_time() - t0
    for h in hooks:
        uc.hook_del(h)
    return Run(t, status[0], out.decode("utf-8", "replace"))


def qemu(image: bytes, timeout: float = 600.0) -> Run:
    if QEMU is None:
        raise FileNotFoundError("qemu-system-x86_64 is not on PATH")
    fd, path = tempfile.mkstemp(suffix=".bin", prefix="svmemu-bench-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(image)
        c = child([QEMU, *QEMU_ARGS, "-kernel", path], timeout)
        return Run(c.cpu, c.status, c.output)
    finally:
        os.unlink(path)
