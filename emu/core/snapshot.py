"""Snapshots of a whole machine: take/restore in memory, save/load to a file.

A snapshot is everything a guest can observe, so a restored machine continues exactly as the
original would have: guest RAM, the L0-private region (vmcb01, MSRPM, IOPM, trampoline and the
extension's vmcb02), Unicorn's CPU context blob, the MSRs that live in Python, the virtual TSC,
the CPUID table, every device's registers and every extension's section.

What Unicorn's context blob does *not* hold, and how restore makes up for it:
- translated code: RAM is rewritten behind Unicorn's back, so every translation block is flushed
  (a guest that patched its own code after the snapshot would otherwise run the patched code);
- the soft TLB: CR3 is restored by a plain copy, so cached translations of page tables that the
  restore just reverted would survive; the TLB is flushed explicitly;
- CPUState outside CPUX86State (halted, exception_index, interrupt_request): none of them is live
  between runs, because vmcb01 intercepts HLT and the machine delivers every event itself;
- the machine's own run state (`_pending`, `_result`): snapshots are only taken between runs,
  when both are empty; the RIP to resume at is the blob's RIP.

The blob itself (5568 bytes: CPUX86State up to the SVM fields) holds no host pointers: two fresh
instances save byte-identical blobs, so a blob from another process restores safely.

Device and extension sections must be plain data (dict with str keys, list, int, str, bool,
None, float, bytes); bytes are kept as bytes through the file.

In-memory snapshots keep RAM as one `bytes` object: a reset is one memcpy, which is what fuzzing
needs first. (Later: dirty-page tracking so a reset copies only the pages the run wrote.)

File format (little-endian), `FORMAT_VERSION` = 2:

    magic  b"SVMEMUSN"
    u32    format version
    u32    number of sections
    per section: 4-byte tag, u8 encoding (0 raw, 1 zlib), 3 zero bytes,
                 u64 stored length, u64 decoded length, stored bytes
    32-byte SHA-256 of every byte before it

Sections: HEAD (JSON: RAM size, unicorn version, context size), CPU0 (the context blob), L0RG
(the L0-private region, zlib), RAMR (runs of non-zero 4 KiB pages, u32 first page and u32 count
each), RAMD (those pages concatenated, zlib), MACH (JSON: MSRs, TSC, CPUID, devices, extensions).
RAM is stored sparsely because a 128 MiB guest is mostly zeros and zlib alone spends ~0.3 s each
way on them.

A machine with several CPUs (`-smp N`) is written as format version 3: HEAD adds `cpus`, the
sections above hold the boot CPU (CPU0, L0RG) and the machine (RAM, devices), MACH adds `smp`
(the quantum, the scheduler's position -- emu/core/smp.py -- and the boot CPU's SMP state), and
three more sections hold the application processors in CPU order: APCX (their context blobs,
concatenated), APL0 (their L0-private regions, concatenated, zlib) and APST (JSON: per CPU its
MSRs, TSC, local APIC, extensions and SMP state: started or waiting for SIPI, halted, TSC
adjustment). A one-CPU machine is still written as version 2, byte for byte as before.

Version 1 is the same container whose extension sections predate gPAT: the svm extension's
section has no `gpat` fields, and the extension applies its documented legacy rule. The loader
reads both and tells each extension which one it got through the `"format_version"` key of the
state it hands to `load_snapshot_state`.
"""
from __future__ import annotations

import copy
import ctypes
import hashlib
import json
import mmap
import struct
import zlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import unicorn
from unicorn.x86_const import UC_X86_REG_RIP

from emu.core.firmware import MAX_XAPIC_CPUS
from emu.core.firmware.layout import MAX_RAM, check_ram_size, ram_layout
from emu.errors import OptionError, SnapshotError
from emu.core.cpuid import Cpuid
from emu.core.snapshot_check import check_cpu
from emu.engine.hw_switch import OFF_EIP, flush_tlb

if TYPE_CHECKING:
    from emu.core.machine import Machine

MAGIC = b"SVMEMUSN"
FORMAT_VERSION = 2
SMP_FORMAT_VERSION = 3     # a machine with several CPUs
READABLE_VERSIONS = (1, 2, 3)

PAGE = 0x1000
_CHUNK = 1 << 20
CHUNK = _CHUNK          # the granularity of nonzero_chunks
_ZERO_PAGE = bytes(PAGE)
_ZERO_CHUNK = bytes(_CHUNK)
_PREFIX = struct.Struct("<8sII")
_SECTION = struct.Struct("<4sB3xQQ")
_RUN = struct.Struct("<II")
_DIGEST = 32
_MAP_NORESERVE = 0x4000
_MAX_RAM = ram_layout(MAX_RAM).end    # the largest RAM image (bounds what a header may ask for)
_RAW, _ZLIB = 0, 1
# The most each section can decode to: its own size for the fixed ones, RAM for the RAM data,
# and a generous bound for the JSON ones (a real MACH section is a few KiB).
_MAX_JSON = 64 << 20
_MAX_SECTION = {b"HEAD": 1 << 16, b"CPU0": 1 << 16, b"L0RG": 16 << 20, b"RAMR": _MAX_RAM // PAGE * 8,
                b"RAMD": _MAX_RAM, b"MACH": _MAX_JSON,
                b"APCX": 0, b"APL0": 0, b"APST": _MAX_JSON}   # AP bounds: from HEAD's cpus
_AP_SECTIONS = (b"APCX", b"APL0", b"APST")
_BYTES_TAG = "__bytes__"


@dataclass
class CpuSection:
    """An application processor: what the boot CPU's part of `Snapshot` holds for CPU 0."""
    l0: bytes
    cpu: bytes
    msrs: dict[int, int]
    tsc: int
    apic: dict[str, Any]
    extensions: dict[str, dict[str, Any]]
    smp: dict[str, Any]      # started, halted, waiting for SIPI, TSC adjustment (_cpu_smp_state)


@dataclass
class Snapshot:
    """One machine state. `ram` is the whole of guest RAM; the dicts are private copies."""
    ram_size: int
    ram: bytes | bytearray
    l0: bytes
    cpu: bytes
    msrs: dict[int, int]
    tsc: int
    cpuid: list[list[int]]
    devices: list[tuple[str, dict[str, Any]]]
    extensions: dict[str, dict[str, Any]]
    unicorn_version: str = unicorn.__version__
    format_version: int = FORMAT_VERSION
    aps: list[CpuSection] = field(default_factory=list)   # CPUs 1..N-1 (-smp N)
    smp: dict[str, Any] = field(default_factory=dict)     # quantum, position, the boot CPU's state

    @property
    def cpus(self) -> int:
        return 1 + len(self.aps)

    @property
    def rip(self) -> int:
        """Where execution continues after a restore."""
        return struct.unpack_from("<Q", self.cpu, OFF_EIP)[0]


# ---- in memory ------------------------------------------------------------------------------------

def take(machine: "Machine", *, ram: bool = True) -> Snapshot:
    """Capture the machine between runs (never from inside a hook: the run state is not in it).
    `ram=False` leaves RAM out (an empty `ram`) for callers that keep RAM their own way (the
    reverse-execution checkpoints keep only what differs from their first one)."""
    return _capture(machine, copy_ram(machine.ram) if ram else b"")


_BIG_RAM = 1 << 30
_libc = ctypes.CDLL(None)
_libc.memcmp.restype = ctypes.c_int
_libc.memcmp.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
_libc.mincore.restype = ctypes.c_int
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]


def _address(buf: Any) -> int:
    """Host address of a buffer's bytes (the caller keeps the buffer alive)."""
    if isinstance(buf, bytes):
        return ctypes.cast(ctypes.c_char_p(buf), ctypes.c_void_p).value or 0
    return ctypes.addressof(ctypes.c_char.from_buffer(buf))


def nonzero_chunks(buf: Any) -> list[int]:
    """Start offsets of the CHUNK-sized pieces of ``buf`` holding a non-zero byte, compared in
    place (memcmp, no copies).  A big buffer is a private mapping (ram_buffer, the machine's
    RAM): chunks with no resident page (mincore) were never touched and are skipped unread,
    so a 16 GiB image costs what its guest wrote."""
    size, addr, zero = len(buf), _address(buf), _address(_ZERO_CHUNK)
    candidates = range(0, size, _CHUNK)
    if size > _BIG_RAM and addr % PAGE == 0:
        pages = (size + PAGE - 1) // PAGE
        vec = (ctypes.c_ubyte * pages)()
        if _libc.mincore(addr, size, vec) == 0:
            per = _CHUNK // PAGE
            raw = bytes(vec)
            candidates = [base for base in candidates
                          if any(b & 1 for b in raw[base // PAGE:base // PAGE + per])]
    return [base for base in candidates
            if _libc.memcmp(addr + base, zero, min(_CHUNK, size - base))]


def ram_buffer(size: int) -> Any:
    """A zero-filled buffer for a RAM image: a bytearray, or beyond 1 GiB a private
    no-reserve mapping, whose untouched pages cost nothing (a 16 GiB guest's image is mostly
    pages it never wrote)."""
    if size <= _BIG_RAM:
        return bytearray(size)
    return mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | _MAP_NORESERVE)


def copy_ram(ram: Any) -> Any:
    """A copy of a RAM image: one memcpy up to 1 GiB; beyond, only the non-zero chunks are
    written, so the copy's resident size follows what the guest touched, not its RAM size."""
    size = len(ram)
    if size <= _BIG_RAM:
        return bytes(ram)
    out = ram_buffer(size)
    for base in nonzero_chunks(ram):
        out[base:base + _CHUNK] = ram[base:base + _CHUNK]
    return out


def _restore_ram(machine: "Machine", image: Any) -> None:
    """Copy a RAM image into the machine; beyond 1 GiB only the chunks that differ, so pages
    neither side ever touched stay untouched."""
    ram = machine.ram
    size = len(ram)
    if size <= _BIG_RAM:
        ram[:] = image
        return
    here, there = _address(ram), _address(image)
    for base in sorted(set(nonzero_chunks(ram)) | set(nonzero_chunks(image))):
        n = min(_CHUNK, size - base)
        if _libc.memcmp(here + base, there + base, n):
            ram[base:base + n] = image[base:base + n]


def _capture(machine: "Machine", ram: Any) -> Snapshot:
    for cpu in machine.cpu_list:
        cpu.perf.fold()             # running performance counters: their counts to now
    snap = Snapshot(
        ram_size=machine.ram_size,
        ram=ram,
        l0=bytes(machine.hostvm.buf),
        cpu=_context_bytes(machine),
        msrs=dict(machine.msrs.values),
        tsc=machine.tsc,
        cpuid=[[leaf, sub, *regs] for (leaf, sub), regs in sorted(machine.cpuid.table.items())],
        devices=[(dev.name, copy.deepcopy(dev.state())) for dev in machine.devices],
        extensions={ext.name: copy.deepcopy(ext.snapshot_state()) for ext in machine.extensions},
    )
    if machine.cpus > 1:
        snap.format_version = SMP_FORMAT_VERSION
        snap.smp = {"quantum": machine.quantum, "position": machine.smp_position.state(),
                    "boot": _cpu_smp_state(machine)}
        snap.aps = [CpuSection(
            l0=bytes(ap.hostvm.buf), cpu=_context_bytes(ap), msrs=dict(ap.msrs.values),
            tsc=ap.tsc, apic=copy.deepcopy(ap.apic.state()),
            extensions={ext.name: copy.deepcopy(ext.snapshot_state()) for ext in ap.extensions},
            smp=_cpu_smp_state(ap)) for ap in machine.cpu_list[1:]]
    return snap


def _cpu_smp_state(cpu: "Machine") -> dict[str, Any]:
    """What a CPU of several holds outside its context, MSRs, APIC registers and extensions."""
    return {"started": cpu.started, "wait_for_sipi": cpu.apic.wait_for_sipi,
            "halted": cpu.irq.halted, "idle_turn": cpu.idle_turn, "reinit": cpu.reinit,
            "tsc_adjust": cpu.tsc_adjust}


def _load_cpu_smp_state(cpu: "Machine", state: dict[str, Any]) -> None:
    flags = {k: state[k] for k in ("started", "wait_for_sipi", "halted", "idle_turn", "reinit")}
    if any(type(v) is not bool for v in flags.values()) or type(state["tsc_adjust"]) is not int:
        raise TypeError(f"SMP state {state} is not booleans and an integer")
    cpu.started, cpu.idle_turn, cpu.reinit = flags["started"], flags["idle_turn"], flags["reinit"]
    cpu.apic.wait_for_sipi = flags["wait_for_sipi"]
    cpu.irq.halted = flags["halted"]
    cpu.tsc_adjust = state["tsc_adjust"]
    cpu.stale_code = True     # its next turn starts from translated code made afresh


def restore(machine: "Machine", snap: Snapshot, *, restore_ram: bool = True,
            flush_code: bool = True) -> None:
    """Put `machine` in the state `snap` holds; the next `machine.run()` continues from it.

    The fast reset (emu/core/fastreset.py) restores RAM itself (`restore_ram=False`) and flushes
    translated code only when the run rewrote a code page (`flush_code=False` otherwise)."""
    _check_compatible(machine, snap)
    machine.fresh_ram.forget()
    if restore_ram:
        _restore_ram(machine, snap.ram)
    machine.hostvm.buf[:] = snap.l0
    ctx = machine.ctx
    ctx.view[:] = snap.cpu
    ctx.restore()
    uc = machine.uc
    if flush_code:
        uc.ctl_flush_tb()
    flush_tlb(uc)
    values = machine.msrs.values
    values.clear()
    values.update(snap.msrs)
    machine.lbr.restored()          # DebugCtl.LBR's recording hook follows the restored MSRs
    machine.data_breakpoints.sync()  # the data-breakpoint hook follows the restored DR7
    machine.tsc = snap.tsc
    machine.perf.restored()         # enabled counters count on from the restored TSC
    machine.timebase.rebase()
    machine.cpuid.table = _snapshot_cpuid(machine, snap).table
    machine.sync_cpu_features()
    for dev, (name, state) in zip(machine.devices, snap.devices):
        _load_section(f"device {name}", dev.load_state, state, None)
    # Extensions come last: they may read RAM and the CPU state (vmcb12, L1's saved state).
    for ext in machine.extensions:
        _load_section(f"extension {ext.name}", ext.load_snapshot_state,
                      snap.extensions[ext.name], snap.format_version)
    machine.resume_at(uc.reg_read(UC_X86_REG_RIP))
    if machine.cpus > 1:
        _restore_aps(machine, snap)


def _restore_aps(machine: "Machine", snap: Snapshot) -> None:
    """The application processors and the scheduler, after the boot CPU and RAM (their
    extensions read RAM too)."""
    from emu.core.smp import Position
    try:
        machine.quantum = _int(snap.smp["quantum"])
        if machine.quantum <= 0:
            raise ValueError("the quantum must be positive")
        machine.smp_position = Position.from_state(snap.smp["position"], machine.cpus)
    except (KeyError, TypeError, ValueError) as e:
        raise SnapshotError(f"the snapshot's scheduler section is malformed ({e})")
    _load_section("SMP state of CPU 0", lambda st: _load_cpu_smp_state(machine, st),
                  snap.smp["boot"], None)
    for index, (ap, sec) in enumerate(zip(machine.cpu_list[1:], snap.aps), 1):
        ap.hostvm.buf[:] = sec.l0
        ap.ctx.view[:] = sec.cpu
        ap.ctx.restore()
        ap.uc.ctl_flush_tb()
        flush_tlb(ap.uc)
        ap.msrs.values.clear()
        ap.msrs.values.update(sec.msrs)
        ap.tsc = sec.tsc
        ap.perf.restored()
        ap.cpuid.table = dict(machine.cpuid.table)
        ap.sync_cpu_features()
        _load_section(f"local APIC of CPU {index}", ap.apic.load_state, sec.apic, None)
        for ext in ap.extensions:
            _load_section(f"extension {ext.name} of CPU {index}", ext.load_snapshot_state,
                          sec.extensions[ext.name], snap.format_version)
        _load_section(f"SMP state of CPU {index}", lambda st: _load_cpu_smp_state(ap, st),
                      sec.smp, None)
        ap._result = None
        rip = ap.uc.reg_read(UC_X86_REG_RIP)
        ap._start = ap._begin = rip
        ap.io_trap.set_flag()


_IMMUTABLE = (int, str, bool, float, bytes, type(None))


def _private_copy(state: Any) -> Any:
    """copy.deepcopy for the JSON-shaped data sections are, at a quarter of its cost (a fuzzer
    restores every section once an input); anything else still goes through deepcopy."""
    kind = type(state)
    if kind is dict:
        return {k: _private_copy(v) for k, v in state.items()}
    if kind is list:
        return [_private_copy(v) for v in state]
    if kind in _IMMUTABLE:
        return state
    return copy.deepcopy(state)


def _load_section(what: str, load: Callable[[dict[str, Any]], None], state: dict[str, Any],
                  version: int | None) -> None:
    """Hand a section to its owner as a private copy (a snapshot is restored many times), and turn
    a section its owner cannot read into a SnapshotError; the machine is then half-restored."""
    state = _private_copy(state)
    if version is not None:
        state["format_version"] = version
    try:
        load(state)
    except SnapshotError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, OverflowError,
            struct.error) as e:
        raise SnapshotError(f"the snapshot's {what} section is malformed "
                            f"({type(e).__name__}: {e})")


def _context_bytes(machine: "Machine") -> bytes:
    return bytes(machine.ctx.save().view)


def _check_compatible(machine: "Machine", snap: Snapshot) -> None:
    if snap.cpus != machine.cpus:
        raise SnapshotError(f"the snapshot holds {snap.cpus} CPU{'s' if snap.cpus > 1 else ''} "
                            f"but this machine has {machine.cpus} (-smp {machine.cpus}); "
                            f"restore it with -smp {snap.cpus}")
    if snap.ram_size != machine.ram_size:
        raise SnapshotError(f"the snapshot has {_mib(snap.ram_size)} of RAM but this machine has "
                            f"{_mib(machine.ram_size)}")
    if snap.unicorn_version != unicorn.__version__:
        raise SnapshotError(f"the snapshot was taken with unicorn {snap.unicorn_version}, whose CPU "
                            f"state this svmemu (unicorn {unicorn.__version__}) cannot restore")
    if len(snap.cpu) != len(machine.ctx.view):
        raise SnapshotError(f"the snapshot's CPU context is {len(snap.cpu)} bytes, but this "
                            f"unicorn's is {len(machine.ctx.view)}")
    if len(snap.ram) != ram_layout(snap.ram_size).end or len(snap.l0) != len(machine.hostvm.buf):
        raise SnapshotError("the snapshot's memory images do not have the sizes its header states")
    check_cpu(snap.cpu, _snapshot_cpuid(machine, snap))
    for index, sec in enumerate(snap.aps, 1):
        if len(sec.cpu) != len(snap.cpu) or len(sec.l0) != len(snap.l0):
            raise SnapshotError(f"the snapshot's CPU {index} sections do not have the sizes of "
                                "CPU 0's")
        check_cpu(sec.cpu, _snapshot_cpuid(machine, snap), f"CPU {index} context")
        have = sorted(ext.name for ext in machine.extensions)
        if sorted(sec.extensions) != have:
            raise SnapshotError(f"the snapshot's CPU {index} has extensions "
                                f"{', '.join(sorted(sec.extensions)) or 'none'} but this machine "
                                f"has {', '.join(have) or 'none'}")
    have = [dev.name for dev in machine.devices]
    want = [name for name, _ in snap.devices]
    if have != want:
        raise SnapshotError(f"the snapshot has devices {', '.join(want) or 'none'} but this machine "
                            f"has {', '.join(have) or 'none'}")
    have = sorted(ext.name for ext in machine.extensions)
    want = sorted(snap.extensions)
    if have != want:
        raise SnapshotError(f"the snapshot has extensions {', '.join(want) or 'none'} but this "
                            f"machine has {', '.join(have) or 'none'}")


def _snapshot_cpuid(machine: "Machine", snap: Snapshot) -> Cpuid:
    """The CPUID the restored machine will report: the snapshot's table under this model's
    feature mask, which is what decides the CR4 and EFER bits its context may hold."""
    cpuid = Cpuid(machine.cpuid.model)
    cpuid.table = {(row[0], row[1]): tuple(row[2:6]) for row in snap.cpuid}
    return cpuid


def _mib(n: int) -> str:
    return f"{n >> 20} MiB" if n % (1 << 20) == 0 else f"{n:#x} bytes"


# ---- files ----------------------------------------------------------------------------------------

def save(machine: "Machine", path: str) -> None:
    """Write the machine's current state to `path` (see the module docstring for the format)."""
    # Encoding reads RAM once, so it can read the live mapping instead of a 128 MiB copy.
    data = encode(_capture(machine, machine.ram))
    try:
        with open(path, "wb") as f:
            f.write(data)
    except OSError as e:
        raise SnapshotError(f"cannot write snapshot {path}: {e.strerror}")


def load(machine: "Machine", path: str) -> Snapshot:
    """Restore `machine` from the snapshot file at `path`; returns the snapshot read."""
    snap = read(path)
    restore(machine, snap)
    return snap


def read(path: str) -> Snapshot:
    """Read and verify a snapshot file without touching any machine (resume sizes RAM from it)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise SnapshotError(f"cannot read snapshot {path}: {e.strerror}")
    return decode(data, path)


def encode(snap: Snapshot, *, format_version: int | None = None) -> bytes:
    """The file bytes for `snap`, labelled with the version its sections follow (a snapshot read
    from a version-1 file stays version 1). Overriding `format_version` exists for tests of legacy
    loading: the caller then vouches that the sections match that version."""
    if format_version is None:
        format_version = snap.format_version
    runs, pages = _sparse(snap.ram)
    head = {"ram_size": snap.ram_size, "unicorn": snap.unicorn_version, "context_size": len(snap.cpu),
            "l0_size": len(snap.l0)}
    mach = {"msrs": _msrs_out(snap.msrs), "tsc": snap.tsc,
            "cpuid": snap.cpuid, "devices": [[n, s] for n, s in snap.devices],
            "extensions": snap.extensions}
    if snap.aps:
        head["cpus"] = snap.cpus
        mach["smp"] = snap.smp
    sections = [
        (b"HEAD", _RAW, _json(head)),
        (b"CPU0", _RAW, snap.cpu),
        (b"L0RG", _ZLIB, snap.l0),
        (b"RAMR", _RAW, b"".join(_RUN.pack(first, count) for first, count in runs)),
        (b"RAMD", _ZLIB, pages),
        (b"MACH", _ZLIB, _json(mach)),
    ]
    if snap.aps:
        sections += [
            (b"APCX", _RAW, b"".join(ap.cpu for ap in snap.aps)),
            (b"APL0", _ZLIB, b"".join(ap.l0 for ap in snap.aps)),
            (b"APST", _ZLIB, _json([{"msrs": _msrs_out(ap.msrs), "tsc": ap.tsc, "apic": ap.apic,
                                     "extensions": ap.extensions, "smp": ap.smp}
                                    for ap in snap.aps])),
        ]
    out = [_PREFIX.pack(MAGIC, format_version, len(sections))]
    for tag, enc, raw in sections:
        stored = zlib.compress(raw, 1) if enc == _ZLIB else bytes(raw)
        out.append(_SECTION.pack(tag, enc, len(stored), len(raw)))
        out.append(stored)
    body = b"".join(out)
    return body + hashlib.sha256(body).digest()


def _msrs_out(msrs: dict[int, int]) -> dict[str, int]:
    return {f"{k:#x}": v for k, v in sorted(msrs.items())}


def _msrs_in(msrs: Any) -> dict[int, int]:
    return {int(k, 16): _int(v) for k, v in dict(msrs).items()}


def decode(data: bytes, name: str = "snapshot") -> Snapshot:
    """Parse and verify file bytes; every defect becomes one SnapshotError sentence."""
    if len(data) < _PREFIX.size + _DIGEST or data[:8] != MAGIC:
        if data[:8] == MAGIC:
            raise SnapshotError(f"{name} is truncated")
        raise SnapshotError(f"{name} is not an svmemu snapshot (wrong magic)")
    _magic, version, count = _PREFIX.unpack_from(data)
    body, digest = memoryview(data)[:-_DIGEST], data[-_DIGEST:]
    if hashlib.sha256(body).digest() != digest:
        if version not in READABLE_VERSIONS:
            raise SnapshotError(f"{name} has format version {version}, which this svmemu cannot "
                                f"read (it reads {_versions()}), or is corrupt")
        raise SnapshotError(f"{name} is corrupt or truncated (checksum mismatch)")
    if version not in READABLE_VERSIONS:
        raise SnapshotError(f"{name} has format version {version}, which this svmemu cannot read "
                            f"(it reads {_versions()})")
    try:
        return _parse(body, version, count)
    except SnapshotError as e:
        raise SnapshotError(f"{name}: {e}")
    except (ValueError, KeyError, TypeError, IndexError, AttributeError, struct.error, zlib.error,
            OverflowError, RecursionError) as e:
        raise SnapshotError(f"{name} is malformed ({type(e).__name__} while decoding it)")


def _versions() -> str:
    return ", ".join(str(v) for v in READABLE_VERSIONS)


def _parse(body: memoryview, version: int, count: int) -> Snapshot:
    table: dict[bytes, tuple[int, memoryview, int]] = {}
    pos = _PREFIX.size
    for _ in range(count):
        if pos + _SECTION.size > len(body):
            raise SnapshotError(f"it ends inside the table of its {count} sections")
        tag, enc, stored, raw_len = _SECTION.unpack_from(body, pos)
        pos += _SECTION.size
        if pos + stored > len(body):
            raise SnapshotError(f"section {tag!r} runs past the end of the file")
        if tag in table:
            raise SnapshotError(f"section {tag!r} appears twice")
        if tag not in _MAX_SECTION:
            raise SnapshotError(f"section {tag!r} is not a section of format {version}")
        table[tag] = (enc, body[pos:pos + stored], raw_len)
        pos += stored
    if pos != len(body):
        raise SnapshotError("there are stray bytes after the last section")
    # Sizes are checked before anything is inflated (a small zlib stream can claim gigabytes):
    # the fixed sections against fixed bounds, the RAM ones against the RAM size HEAD states.
    bounds = dict(_MAX_SECTION)
    if b"HEAD" in table:
        early = _unjson(_inflate(b"HEAD", *table[b"HEAD"], bounds[b"HEAD"]))
        head_ram = early.get("ram_size")
        if type(head_ram) is int and 0 < head_ram <= _MAX_RAM:
            bounds[b"RAMD"] = head_ram
            bounds[b"RAMR"] = head_ram // PAGE * _RUN.size
        aps = early.get("cpus", 1) - 1 if type(early.get("cpus", 1)) is int else 0
        if version >= SMP_FORMAT_VERSION and 0 < aps < MAX_XAPIC_CPUS:
            bounds[b"APCX"] = aps * bounds[b"CPU0"]
            bounds[b"APL0"] = aps * bounds[b"L0RG"]
    sections = {tag: _inflate(tag, enc, chunk, raw_len, bounds.get(tag, 0))
                for tag, (enc, chunk, raw_len) in table.items()}
    for tag in (b"HEAD", b"CPU0", b"L0RG", b"RAMR", b"RAMD", b"MACH"):
        if tag not in sections:
            raise SnapshotError(f"section {tag.decode()} is missing")
    head = _unjson(sections[b"HEAD"])
    ram_size = _int(head["ram_size"])
    try:
        check_ram_size(ram_size)
    except OptionError as e:
        raise SnapshotError(f"the snapshot's RAM size: {e}") from None
    cpu = sections[b"CPU0"]
    if len(cpu) != _int(head["context_size"]) or len(sections[b"L0RG"]) != _int(head["l0_size"]):
        raise SnapshotError("the CPU or L0 section size disagrees with the header")
    ram = _unsparse(ram_layout(ram_size).end, sections[b"RAMR"], sections[b"RAMD"])
    mach = _unjson(sections[b"MACH"])
    devices = [(str(n), dict(s)) for n, s in mach["devices"]]
    extensions = {str(k): dict(v) for k, v in dict(mach["extensions"]).items()}
    cpuid = [[_int(x) for x in row] for row in mach["cpuid"]]
    if any(len(row) != 6 for row in cpuid):
        raise SnapshotError("a CPUID row does not have six values")
    snap = Snapshot(ram_size=ram_size, ram=ram, l0=sections[b"L0RG"], cpu=cpu,
                    msrs=_msrs_in(mach["msrs"]),
                    tsc=_int(mach["tsc"]), cpuid=cpuid, devices=devices, extensions=extensions,
                    unicorn_version=str(head["unicorn"]), format_version=version)
    _parse_aps(snap, head, mach, sections)
    return snap


def _parse_aps(snap: Snapshot, head: dict[str, Any], mach: dict[str, Any],
               sections: dict[bytes, bytes]) -> None:
    """The application processors of a version-3 snapshot (none before)."""
    present = [tag for tag in _AP_SECTIONS if tag in sections]
    if snap.format_version < SMP_FORMAT_VERSION:
        if present or "cpus" in head:
            raise SnapshotError(f"a format {snap.format_version} snapshot holds one CPU, but this "
                                "one has sections of several")
        return
    cpus = _int(head["cpus"])
    if not 2 <= cpus <= MAX_XAPIC_CPUS:
        raise SnapshotError(f"the snapshot claims {cpus} CPUs (a machine has 2 to "
                            f"{MAX_XAPIC_CPUS} when it has several)")
    for tag in _AP_SECTIONS:
        if tag not in sections:
            raise SnapshotError(f"section {tag.decode()} is missing")
    n, csize, lsize = cpus - 1, len(snap.cpu), len(snap.l0)
    contexts, l0s = sections[b"APCX"], sections[b"APL0"]
    states = _unjson(sections[b"APST"])
    if len(contexts) != n * csize or len(l0s) != n * lsize or type(states) is not list \
            or len(states) != n:
        raise SnapshotError(f"the sections of CPUs 1 to {n} do not hold {n} CPUs")
    smp = mach["smp"]
    if type(smp) is not dict or type(smp.get("position")) is not dict:
        raise SnapshotError("the scheduler section is missing or malformed")
    snap.smp = dict(smp)
    snap.aps = [CpuSection(l0=l0s[i * lsize:(i + 1) * lsize], cpu=contexts[i * csize:(i + 1) * csize],
                           msrs=_msrs_in(st["msrs"]), tsc=_int(st["tsc"]), apic=dict(st["apic"]),
                           extensions={str(k): dict(v) for k, v in dict(st["extensions"]).items()},
                           smp=dict(st["smp"]))
                for i, st in enumerate(states)]


def _inflate(tag: bytes, enc: int, chunk: memoryview, raw_len: int, bound: int) -> bytes:
    """A section's bytes, refusing one that claims more than `bound` before inflating it."""
    if raw_len > bound:
        raise SnapshotError(f"section {tag!r} claims {raw_len} bytes, more than a snapshot of "
                            f"this machine can hold ({bound})")
    if enc == _RAW:
        raw = bytes(chunk)
    elif enc == _ZLIB:
        d = zlib.decompressobj()
        raw = d.decompress(chunk, raw_len + 1)
        if not d.eof or d.unused_data:
            raise SnapshotError(f"section {tag!r} is not one complete zlib stream")
    else:
        raise SnapshotError(f"section {tag!r} has unknown encoding {enc}")
    if len(raw) != raw_len:
        raise SnapshotError(f"section {tag!r} decodes to {len(raw)} bytes, not {raw_len}")
    return raw


def _int(v: Any) -> int:
    if type(v) is not int:
        raise SnapshotError(f"expected an integer, found {type(v).__name__}")
    return v


def _sparse(ram: bytes | bytearray) -> tuple[list[tuple[int, int]], bytes]:
    """Runs of non-zero pages and their bytes: zero chunks are skipped by one memcmp each."""
    mv = memoryview(ram)
    runs: list[tuple[int, int]] = []
    parts: list[bytes] = []
    size = len(ram)
    for base in nonzero_chunks(ram):
        end = min(base + _CHUNK, size)
        for addr in range(base, end, PAGE):
            if ram[addr:addr + PAGE] == _ZERO_PAGE:
                continue
            page = addr // PAGE
            if runs and runs[-1][0] + runs[-1][1] == page:
                runs[-1] = (runs[-1][0], runs[-1][1] + 1)
            else:
                runs.append((page, 1))
    for first, count in runs:
        parts.append(mv[first * PAGE:(first + count) * PAGE])
    return runs, b"".join(parts)


def _unsparse(ram_size: int, runs_raw: bytes, pages: bytes) -> bytearray:
    if len(runs_raw) % _RUN.size:
        raise SnapshotError("the RAM page table has a partial entry")
    ram = ram_buffer(ram_size)
    pos = 0
    limit = ram_size // PAGE
    for first, count in _RUN.iter_unpack(runs_raw):
        if count == 0 or first + count > limit:
            raise SnapshotError(f"RAM pages {first:#x}+{count:#x} lie outside the RAM size")
        n = count * PAGE
        if pos + n > len(pages):
            raise SnapshotError("the RAM data is shorter than its page table says")
        ram[first * PAGE:first * PAGE + n] = pages[pos:pos + n]
        pos += n
    if pos != len(pages):
        raise SnapshotError("the RAM data is longer than its page table says")
    return ram  # a bytearray: restore copies from it, and converting would cost another copy


# ---- JSON with bytes ------------------------------------------------------------------------------
# Extension sections are plain data; bytes (cached VMCB areas and the like) are tagged so they come
# back as bytes rather than as a string the extension would have to recognise.

def _encode_value(v: Any) -> Any:
    if isinstance(v, (bytes, bytearray, memoryview)):
        return {_BYTES_TAG: bytes(v).hex()}
    if isinstance(v, dict):
        return {str(k): _encode_value(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_encode_value(x) for x in v]
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    raise TypeError(f"snapshot state holds a {type(v).__name__}, which is not plain data")


def _decode_value(v: Any) -> Any:
    if isinstance(v, dict):
        if len(v) == 1 and _BYTES_TAG in v:
            return bytes.fromhex(v[_BYTES_TAG])
        return {k: _decode_value(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_decode_value(x) for x in v]
    return v


def _json(obj: Any) -> bytes:
    return json.dumps(_encode_value(obj), sort_keys=True, separators=(",", ":")).encode()


def _unjson(raw: bytes) -> Any:
    return _decode_value(json.loads(raw.decode("utf-8")))
