"""Snapshots from anywhere: a file that was tampered with, truncated or crafted is refused with one
SnapshotError sentence before anything reaches Unicorn, and a CLI resume ends with status 2.

The cases are built from a real snapshot taken while L2 runs (tests/test_snapshot.py covers honest
round trips); each mutation is re-checksummed, so it is the validation that must catch it."""
from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from emu.core import snapshot
from emu.core.machine import Machine
from emu.engine.hw_switch import OFF_FPSTT, OFF_FPTAGS, OFF_HFLAGS, OFF_HFLAGS2, OFF_SEGS
from emu.errors import SnapshotError, SvmemuError
from emu.loader.asm import assemble_source
from emu.loader.multiboot import parse_image
from svm_ext.extension import SvmExtension

ROOT = Path(__file__).resolve().parent.parent
RAM = 64 << 20
HF_SMM = 1 << 19


def machine() -> tuple[Machine, SvmExtension]:
    ext = SvmExtension()
    return Machine(RAM, stdout=io.BytesIO(), extensions=[ext]), ext


@pytest.fixture(scope="module")
def l2_snap() -> snapshot.Snapshot:
    """The bundled world-switch hypervisor, stopped while its L2 runs."""
    m, ext = machine()
    m.load_multiboot(parse_image(assemble_source(str(ROOT / "guests/svm_world_switch.S")),
                                 "ws", RAM), "ws")
    for _ in range(20000):
        if ext.state.in_l2:
            break
        assert m.run(max_insns=3).reason == "max-insns"
    assert ext.state.in_l2
    return snapshot.take(m)


@pytest.fixture(scope="module")
def reused() -> list[Machine]:
    """One machine restored again and again (restore replaces everything a run changed)."""
    return [machine()[0]]


@pytest.fixture(scope="module")
def l2_file(l2_snap) -> bytes:
    return snapshot.encode(l2_snap)


def with_cpu(snap: snapshot.Snapshot, patch) -> snapshot.Snapshot:
    cpu = bytearray(snap.cpu)
    patch(cpu)
    return snapshot.Snapshot(**{**snap.__dict__, "cpu": bytes(cpu)})


def with_nested(snap: snapshot.Snapshot, **fields) -> snapshot.Snapshot:
    ext = json.loads(json.dumps(snapshot._encode_value(snap.extensions)))
    ext["svm"]["nested"].update(fields)
    return snapshot.Snapshot(**{**snap.__dict__, "extensions": snapshot._decode_value(ext)})


def refused(snap: snapshot.Snapshot) -> str:
    """The restore's one-sentence refusal; the machine it was aimed at is left unrun."""
    m, _ = machine()
    with pytest.raises(SnapshotError) as e:
        snapshot.restore(m, snapshot.decode(snapshot.encode(snap)))
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def xor32(off: int, bits: int):
    def patch(cpu: bytearray) -> None:
        struct.pack_into("<I", cpu, off, struct.unpack_from("<I", cpu, off)[0] ^ bits)
    return patch


def test_honest_snapshot_restores_and_runs(l2_snap) -> None:
    m, ext = machine()
    snapshot.restore(m, snapshot.decode(snapshot.encode(l2_snap)))
    assert ext.state.in_l2
    assert m.run(max_insns=2000).reason in ("max-insns", "exit")


@pytest.mark.parametrize("patch, words", [
    (xor32(OFF_HFLAGS, HF_SMM), "hidden flags"),                 # crashed Unicorn on resume
    (xor32(OFF_HFLAGS, 1 << 17), "hidden flags"),                # vm86
    (xor32(OFF_HFLAGS, 1 << 30), "hidden flags"),
    (xor32(OFF_HFLAGS2, 1 << 5), "hidden flags 2"),              # MPX
    (xor32(OFF_HFLAGS, 1 << 7), "PE flag"),                      # PE vs CR0
    (xor32(OFF_HFLAGS, 3), "CPL"),
    (lambda c: struct.pack_into("<I", c, OFF_FPSTT, 9), "x87 stack top"),   # crashed Unicorn
    (lambda c: struct.pack_into("<I", c, OFF_FPSTT, 1 << 31), "x87 stack top"),
    (lambda c: c.__setitem__(OFF_FPTAGS + 3, 7), "x87 tag"),
    (lambda c: struct.pack_into("<I", c, OFF_SEGS + 24, 0x12345), "selector"),
    (lambda c: struct.pack_into("<Q", c, OFF_SEGS + 24 * 8 + 8, 1 << 50), "not canonical"),
], ids=["smm", "vm86", "hf-bit30", "hf2-mpx", "pe", "cpl", "fpstt9", "fpstt-high", "fptag",
        "selector", "gdtr-base"])
def test_cpu_context_that_contradicts_itself_is_refused(l2_snap, patch, words) -> None:
    assert words in refused(with_cpu(l2_snap, patch))


@pytest.mark.parametrize("off_name, value, words", [
    ("cr0", 1 << 40, "CR0"), ("cr0", (1 << 31) | (1 << 29), "CR0"), ("cr4", 1 << 12, "CR4"),
    ("efer", 1 << 20, "EFER"), ("cr3", 1 << 60, "CR3"), ("rip", 1 << 50, "RIP"),
    # Architectural bits the CPU model lacks (EPYC: no UMIP, no FFXSR), as MOV CR4 and WRMSR
    # EFER would refuse them.
    ("cr4", 1 << 11, "CR4"), ("efer", 1 << 14, "EFER"),
])
def test_illegal_control_register_is_refused(l2_snap, off_name, value, words) -> None:
    from emu.engine.hw_switch import OFF_CR, OFF_EFER, OFF_EIP
    off = {"cr0": OFF_CR, "cr3": OFF_CR + 24, "cr4": OFF_CR + 32, "efer": OFF_EFER,
           "rip": OFF_EIP}[off_name]
    if off_name == "cr0":
        patch = lambda c: struct.pack_into("<Q", c, off, value)   # noqa: E731
    else:
        patch = lambda c: struct.pack_into("<Q", c, off, struct.unpack_from("<Q", c, off)[0]  # noqa: E731
                                           | value)
    assert words in refused(with_cpu(l2_snap, patch))


@pytest.mark.parametrize("fields, words", [
    ({"l1_host": "00" * 100}, "host context"),
    ({"vmcb12": None}, "no vmcb12"),
    ({"vmcb12_pa": RAM}, "inside RAM"),
    ({"vmcb12_pa": 1 << 40}, "inside RAM"),
    ({"vmcb12_pa": 0x1234}, "inside RAM"),
    ({"hsave_pa": 0x123}, "VM_HSAVE_PA"),
    ({"v_tpr": 99}, "V_TPR"),
    ({"vmcb12": "00" * 7}, "malformed"),
    ({"l1_host": "zz"}, "malformed"),
])
def test_l2_state_that_cannot_be_exited_is_refused(l2_snap, fields, words) -> None:
    assert words in refused(with_nested(l2_snap, **fields))


def test_l1_host_context_is_validated_like_the_cpu(l2_snap) -> None:
    host = bytearray(bytes.fromhex(json.loads(json.dumps(snapshot._encode_value(
        l2_snap.extensions)))["svm"]["nested"]["l1_host"]))
    struct.pack_into("<I", host, OFF_FPSTT, 12)
    assert "L1 host context" in refused(with_nested(l2_snap, l1_host=host.hex()))


def _sections(data: bytes) -> list[tuple[bytes, int, bytes, int]]:
    _m, _v, count = snapshot._PREFIX.unpack_from(data)
    pos, out = snapshot._PREFIX.size, []
    for _ in range(count):
        tag, enc, stored, raw = snapshot._SECTION.unpack_from(data, pos)
        pos += snapshot._SECTION.size
        out.append((tag, enc, data[pos:pos + stored], raw))
        pos += stored
    return out


def _file(sections, version: int = snapshot.FORMAT_VERSION) -> bytes:
    import hashlib
    body = snapshot._PREFIX.pack(snapshot.MAGIC, version, len(sections)) + b"".join(
        snapshot._SECTION.pack(t, e, len(b), r) + b for t, e, b, r in sections)
    return body + hashlib.sha256(body).digest()


@pytest.mark.parametrize("tag", [b"MACH", b"RAMD", b"L0RG", b"HEAD"])
def test_zlib_bomb_is_refused_before_it_is_inflated(l2_snap, tag) -> None:
    """A stream of zeros that would inflate to 8 GiB: refused by its claimed size alone (the
    stream here is small, so a decoder that inflated first would answer 'decodes to ...')."""
    bomb = zlib.compress(bytes(1 << 20), 9)
    secs = [(t, 1, bomb, 8 << 30) if t == tag else (t, e, b, r)
            for t, e, b, r in _sections(snapshot.encode(l2_snap))]
    with pytest.raises(SnapshotError, match="claims"):
        snapshot.decode(_file(secs))


def test_unknown_section_is_refused(l2_snap) -> None:
    secs = _sections(snapshot.encode(l2_snap)) + [(b"XTRA", 0, b"abc", 3)]
    with pytest.raises(SnapshotError, match="not a section"):
        snapshot.decode(_file(secs))


@settings(max_examples=60, derandomize=True, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(flips=st.lists(st.tuples(st.integers(0, 5567), st.integers(0, 7)), min_size=1, max_size=4))
def test_fuzz_cpu_context_mutations_end_cleanly(l2_snap, reused, flips) -> None:
    """Any bit flips in the context: refused, or restored and run without crashing the process."""
    def patch(cpu: bytearray) -> None:
        for off, bit in flips:
            cpu[off % len(cpu)] ^= 1 << bit
    snap = with_cpu(l2_snap, patch)
    m = reused[0]
    try:
        snapshot.restore(m, snap)
    except SnapshotError:
        return
    try:
        m.run(max_insns=500)
    except SvmemuError:
        pass


@settings(max_examples=150, derandomize=True, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzz_file_bytes_end_in_one_snapshot_error(l2_file, data) -> None:
    """The loader itself on any bytes: a damaged file (checksum fixed up) decodes or is refused
    with SnapshotError; nothing else escapes."""
    raw = bytearray(l2_file[:-32])
    for _ in range(data.draw(st.integers(1, 6))):
        pos = data.draw(st.integers(0, len(raw) - 1))
        raw[pos] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(len(raw) // 2, len(raw)))
    import hashlib
    body = bytes(raw[:cut])
    try:
        snapshot.decode(body + hashlib.sha256(body).digest())
    except SnapshotError:
        pass


def test_cli_resume_of_a_bad_snapshot_is_one_line_and_status_2(l2_snap, tmp_path) -> None:
    path = tmp_path / "smm.snap"
    path.write_bytes(snapshot.encode(with_cpu(l2_snap, xor32(OFF_HFLAGS, HF_SMM))))
    p = subprocess.run([sys.executable, "-m", "emu.cli", "resume", str(path)], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, p.stderr
    assert p.stderr.count("\n") == 1 and "hidden flags" in p.stderr
